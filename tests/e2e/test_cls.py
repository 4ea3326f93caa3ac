"""Stateful classes on the real runtime: @enter once per instance, state kept between calls,
named instances shared, handles that reattach from another process, @exit when the
container stops, and the misuse cases."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import apothic
from apothic._cls_runtime import InstanceTerminatedError
from apothic.exceptions import InvalidConfigError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


@pytest.fixture
def counter_app(apothic_runtime: LocalRuntime) -> Iterator[tuple[apothic.App, apothic.Cls, str]]:
    app = apothic.App(unique_name("cls"), client=apothic_runtime.config)
    events = unique_name("clsq")

    @app.cls(timeout_s=60, scaledown_window_s=60)
    class Counter:
        def __init__(self, start: int = 0) -> None:
            self.start = start
            self.entered = 0

        @apothic.enter()
        def open(self) -> None:
            self.entered += 1
            self.count = self.start

        @apothic.method()
        def add(self, n: int = 1) -> int:
            self.count += n
            return self.count

        @apothic.method()
        def state(self) -> tuple[int, int]:
            return self.count, self.entered

        @apothic.method()
        async def slow_double(self, x: int) -> int:
            return 2 * x

        def helper(self) -> int:
            return 1

        @apothic.exit()
        def close(self) -> None:
            apothic.Queue.from_name(events).put(f"exit {self.count}")

    app.deploy()
    try:
        yield app, Counter, events
    finally:
        app.stop()


def test_state_lives_in_the_instance(counter_app: tuple[apothic.App, apothic.Cls, str]) -> None:
    _, counter, _ = counter_app
    a, b = counter(10), counter(100)
    assert [a.add.remote(), a.add.remote(5), b.add.remote()] == [11, 16, 101]
    assert a.state.remote() == (16, 1), "@enter ran once for the instance"
    assert a.slow_double.remote(21) == 42
    assert list(a.add.map([1, 1, 1])) == [17, 18, 19]
    assert a.add.spawn(1).wait(timeout=30) == 20
    shared = counter.named("hits")
    assert counter.named("hits").add.remote(2) == 2
    assert shared.add.remote(3) == 5, "the same name reaches the same live instance"


@pytest.mark.asyncio
async def test_async_forms(counter_app: tuple[apothic.App, apothic.Cls, str]) -> None:
    _, counter, _ = counter_app
    c = counter(1)
    assert await c.add.aio.remote(1) == 2
    assert [v async for v in c.add.aio.map([1, 2])] == [3, 5]


def test_handles_reattach_from_another_process(
    counter_app: tuple[apothic.App, apothic.Cls, str], apothic_runtime: LocalRuntime
) -> None:
    app, counter, _ = counter_app
    inst = counter.named("shared-ref", 7)
    assert inst.add.remote(1) == 8
    assert pickle.loads(pickle.dumps(inst)).add.remote(1) == 9
    ref = inst.to_ref()
    code = (
        "import sys, apothic\n"
        "config = apothic.ClientConfig(base_url=sys.argv[2], api_key=sys.argv[3])\n"
        "inst = apothic.Cls.from_ref(sys.argv[1], client=config)\n"
        "print(inst.add.remote(1))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ref, apothic_runtime.address, apothic_runtime.api_key],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"
    remote = apothic.Cls.from_name(app.name, "Counter", client=apothic_runtime.config)
    assert remote.named("shared-ref").add.remote(1) == 11


def test_misuse_is_refused(counter_app: tuple[apothic.App, apothic.Cls, str]) -> None:
    app, counter, _ = counter_app
    inst = counter(0)
    with pytest.raises(AttributeError, match="not a remote method"):
        inst.helper.remote()
    with pytest.raises(TypeError, match="Counter.add"):
        inst.add.remote(1, 2, 3)
    remote = apothic.Cls.from_name(app.name, "Counter", client=app._client)
    with pytest.raises(AttributeError, match="not a remote method"):
        remote.named("x").helper.remote()
    with pytest.raises(InvalidConfigError, match="no @apothic.method"):
        app.cls(type("Empty", (), {}))
    with pytest.raises(InvalidConfigError, match="generator method cannot be @batched"):

        @apothic.method()
        @apothic.batched(max_batch_size=2, wait_ms=1)
        def gen(self):  # type: ignore[no-untyped-def]
            yield 1

    with pytest.raises(InvalidConfigError, match="not on an @enter"):

        @apothic.enter()
        @apothic.batched(max_batch_size=2, wait_ms=1)
        def hook(self) -> None: ...

    with pytest.raises(InvalidConfigError, match="goes on the class"):

        @apothic.method()
        @apothic.concurrent(max_inputs=2)
        def many(self) -> None: ...

    with pytest.raises(InvalidConfigError, match="not on the class"):

        @app.cls
        @apothic.batched(max_batch_size=2, wait_ms=1)
        class Whole:
            @apothic.method()
            def f(self) -> None: ...


def test_a_terminated_instance_refuses_calls(counter_app: tuple[apothic.App, apothic.Cls, str]) -> None:
    _, counter, events = counter_app
    inst = counter.named("doomed", 3)
    assert inst.add.remote(1) == 4
    inst.terminate()
    assert apothic.Queue.from_name(events, client=counter.app._client).get(timeout=10) == "exit 4"
    with pytest.raises(InstanceTerminatedError, match="was terminated"):
        inst.add.remote(1)
    remote = apothic.Cls.from_name(counter.app_name, "Counter", client=counter.app._client)
    remote.named("doomed-by-name").terminate()  # a class without generator methods: one function
    with pytest.raises(InstanceTerminatedError, match="was terminated"):
        counter.named("doomed-by-name").add.remote(1)


def test_enter_that_raises_leaves_no_half_alive_instance(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("clsbad"), client=apothic_runtime.config)
    flag = unique_name("flag")

    @app.cls(timeout_s=60)
    class Flaky:
        @apothic.enter()
        def open(self) -> None:
            d = apothic.Dict.from_name(flag)
            tries = d.get("tries", 0) + 1
            d.put("tries", tries)
            if tries == 1:
                raise RuntimeError("enter failed the first time")
            self.ready = True

        @apothic.method()
        def ping(self) -> bool:
            return self.ready

    app.deploy()
    try:
        inst = Flaky()
        with pytest.raises(RuntimeError, match="enter failed the first time"):
            inst.ping.remote()
        assert inst.ping.remote() is True, "the next call constructs the instance afresh"
    finally:
        app.stop()


def test_exit_runs_when_the_container_stops(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("clsexit"), client=apothic_runtime.config)
    events = unique_name("exitq")

    @app.cls(timeout_s=60)
    class Tracker:
        @apothic.method()
        def touch(self, n: int) -> int:
            self.n = n
            return n

        @apothic.exit()
        def close(self) -> None:
            apothic.Queue.from_name(events).put(f"closed {self.n}")

    app.deploy()
    Tracker.named("t").touch.remote(5)
    app.stop()
    q = apothic.Queue.from_name(events, client=apothic_runtime.config)
    assert wait_for(lambda: q.get(timeout=1), timeout=20, what="the @exit method") == "closed 5"


def test_generator_methods_stream_their_items(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    app = apothic.App(unique_name("clsgen"), client=apothic_runtime.config)

    @app.cls(timeout_s=60, scaledown_window_s=60)
    class Tokens:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix
            self.served = 0

        @apothic.method()
        def words(self, n: int) -> Iterator[tuple[str, int]]:
            for i in range(n):
                self.served += 1
                yield f"{self.prefix}{i}", self.served

        @apothic.method()
        async def gated(self, gate: str) -> AsyncIterator[str]:
            yield "first"
            while not os.path.exists(gate):
                await asyncio.sleep(0.01)
            yield "second"

        @apothic.method()
        def runs_dry(self, n: int) -> Iterator[int]:
            yield from range(n)
            raise ValueError("ran dry")

        @apothic.method()
        def plain(self, x: int) -> int:
            return x + 1

    app.deploy()
    try:
        inst = Tokens("a")
        assert list(inst.words.remote_gen(3)) == [("a0", 1), ("a1", 2), ("a2", 3)]
        assert list(inst.words.remote_gen(1)) == [("a0", 4)], "the instance keeps its state between calls"
        assert inst.plain.remote(1) == 2, "plain methods of the class work beside generator ones"
        gate = tmp_path / "gate"
        items = inst.gated.remote_gen(str(gate))
        assert next(items) == "first", "items arrive while the method still runs"
        gate.touch()
        assert list(items) == ["second"]
        seen = []
        with pytest.raises(ValueError, match="ran dry"):
            for item in inst.runs_dry.remote_gen(2):
                seen.append(item)
        assert seen == [0, 1]

        with pytest.raises(TypeError, match="remote_gen"):
            inst.words.remote(1)
        with pytest.raises(TypeError, match="remote_gen"):
            inst.words.map([1])
        with pytest.raises(TypeError, match="not a generator method"):
            inst.plain.remote_gen(1)

        named = Tokens.named("shared", "n")
        remote = apothic.Cls.from_name(app.name, "Tokens", client=apothic_runtime.config)
        assert list(named.words.remote_gen(2)) == [("n0", 1), ("n1", 2)]
        assert list(remote.named("shared").words.remote_gen(1)) == [("n0", 3)]
        with pytest.raises(TypeError, match="remote_gen"):
            remote.named("shared").words.remote(1)
        with pytest.raises(TypeError, match="not a generator method"):
            list(remote.named("shared").plain.remote_gen(1))
        remote.named("shared").terminate()
        with pytest.raises(InstanceTerminatedError):
            list(named.words.remote_gen(1))
        with pytest.raises(InstanceTerminatedError):
            named.plain.remote(1)
    finally:
        app.stop()


@pytest.mark.asyncio
async def test_generator_methods_async_form(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("clsgenaio"), client=apothic_runtime.config)

    @app.cls(timeout_s=60)
    class Ticker:
        @apothic.enter()
        async def open(self) -> None:
            await asyncio.sleep(0)
            self.start = 10

        @apothic.method()
        async def ticks(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                await asyncio.sleep(0)
                yield self.start + i

    await app.aio.deploy()
    try:
        assert [i async for i in Ticker().ticks.aio.remote_gen(3)] == [10, 11, 12]
        await asyncio.to_thread(Ticker.named("t").terminate)  # only generator methods: still terminates
    finally:
        await app.aio.stop()
