"""@batched methods of @app.cls classes on the real runtime: concurrent calls of one
instance's batched method share batches, each caller gets its own element, a wrong-length
result or an exception fails the whole batch, and the class's other methods keep their
own concurrency limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name


@pytest.fixture(scope="module")
def batched_app(apothic_runtime: LocalRuntime) -> Iterator[tuple[apothic.Cls, apothic.Cls]]:
    app = apothic.App(unique_name("clsbatch"), client=apothic_runtime.config)

    @app.cls(timeout_s=60, scaledown_window_s=60)
    class Embedder:
        def __init__(self, scale: int = 1) -> None:
            self.scale = scale
            self.batches: list[int] = []
            self.active = self.peak = 0

        @apothic.batched(max_batch_size=8, wait_ms=300)
        def embed(self, xs: list[int]) -> list[tuple[int, int]]:
            self.batches.append(len(xs))
            return [(x * self.scale, len(xs)) for x in xs]

        @apothic.method()
        @apothic.batched(max_batch_size=4, wait_ms=300)
        def add(self, a: list[int], b: list[int]) -> list[int]:
            return [x + y for x, y in zip(a, b, strict=True)]

        @apothic.batched(max_batch_size=4, wait_ms=300)
        def short(self, xs: list[int]) -> list[int]:
            return xs[:-1]

        @apothic.batched(max_batch_size=4, wait_ms=300)
        def boom(self, xs: list[int]) -> list[int]:
            raise ValueError(f"a batch of {len(xs)} failed")

        @apothic.method()
        def sizes(self) -> list[int]:
            return list(self.batches)

        @apothic.method()
        def work(self, seconds: float) -> int:
            self.active += 1
            self.peak = max(self.peak, self.active)
            time.sleep(seconds)
            self.active -= 1
            return self.peak

    @app.cls(timeout_s=60, scaledown_window_s=60)
    @apothic.concurrent(max_inputs=4)
    class Doubler:
        def __init__(self) -> None:
            self.batches: list[int] = []
            self.active = self.peak = 0

        @apothic.enter()
        async def open(self) -> None:  # awaited on the container's loop, like the methods
            await asyncio.sleep(0.01)
            self.factor = 2

        @apothic.batched(max_batch_size=16, wait_ms=300)
        async def double(self, xs: list[int]) -> list[int]:
            await asyncio.sleep(0.01)
            self.batches.append(len(xs))
            return [self.factor * x for x in xs]

        @apothic.method()
        async def slow(self, seconds: float) -> int:
            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(seconds)
            self.active -= 1
            return self.peak

        @apothic.method()
        async def sizes(self) -> list[int]:
            return list(self.batches)

    app.deploy()
    try:
        yield Embedder, Doubler
    finally:
        app.stop()


def test_map_calls_share_batches(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    embedder, _ = batched_app
    inst = embedder(3)
    results = list(inst.embed.map(range(20)))
    assert [value for value, _ in results] == [3 * i for i in range(20)], "each caller gets its own element"
    sizes = inst.sizes.remote()
    assert sum(sizes) == 20
    assert max(sizes) > 1, f"calls were grouped: {sizes}"
    assert max(sizes) <= 8, "never more than max_batch_size"
    assert sorted({size for _, size in results}) == sorted(set(sizes))


def test_remote_and_spawn_calls_share_batches(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    embedder, _ = batched_app
    inst = embedder.named(unique_name("shared"), 2)
    with ThreadPoolExecutor(6) as pool:
        values = list(pool.map(inst.embed.remote, range(6)))
    assert [v for v, _ in values] == [0, 2, 4, 6, 8, 10]
    assert max(size for _, size in values) > 1
    jobs = [inst.embed.spawn(i) for i in range(5)]
    assert [job.wait(timeout=30)[0] for job in jobs] == [0, 2, 4, 6, 8]
    assert sum(inst.sizes.remote()) == 11


def test_positional_and_keyword_callers_share_a_batch(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    embedder, _ = batched_app
    inst = embedder()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(inst.add.remote, 1, 2), pool.submit(inst.add.remote, a=3, b=4)]
        futures += [pool.submit(inst.add.remote, 5, b=6)]
        assert [f.result() for f in futures] == [3, 7, 11]
    assert list(inst.add.map([1, 2], [10, 20])) == [11, 22]


def test_a_wrong_length_or_an_exception_fails_every_caller(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    embedder, _ = batched_app
    inst = embedder()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(inst.short.remote, i) for i in range(3)]
        for future in futures:
            with pytest.raises(ValueError, match=r"Embedder.short returned \d+ results for a batch of \d+"):
                future.result()
        futures = [pool.submit(inst.boom.remote, i) for i in range(3)]
        for future in futures:
            with pytest.raises(ValueError, match=r"a batch of \d+ failed"):
                future.result()
    outcomes = list(inst.boom.map(range(3), return_exceptions=True))
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert inst.embed.remote(4) == (4, 1), "the instance still serves calls"


def test_other_methods_keep_working_one_at_a_time(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    embedder, _ = batched_app
    inst = embedder(5)
    with ThreadPoolExecutor(2) as pool:
        mapped = pool.submit(lambda: list(inst.embed.map(range(16))))
        peaks = list(inst.work.map([0.05] * 6))
        assert [v for v, _ in mapped.result()] == [5 * i for i in range(16)]
    assert max(peaks) == 1, "a class without @concurrent runs one method body at a time"
    assert inst.sizes.remote(), "the batched calls ran on the same instance"


def test_concurrent_class_with_an_async_batched_method(batched_app: tuple[apothic.Cls, apothic.Cls]) -> None:
    _, doubler = batched_app
    inst = doubler()
    assert list(inst.double.map(range(32))) == [2 * i for i in range(32)]
    sizes = inst.sizes.remote()
    assert sum(sizes) == 32
    assert max(sizes) > 4, f"the container takes a whole batch, beyond @concurrent's 4: {sizes}"
    peaks = list(inst.slow.map([0.2] * 8))
    assert 1 < max(peaks) <= 4, "other methods keep @concurrent(max_inputs=4)"


@pytest.mark.asyncio
async def test_async_forms_and_lookup_by_name(
    batched_app: tuple[apothic.Cls, apothic.Cls], apothic_runtime: LocalRuntime
) -> None:
    embedder, _ = batched_app
    name = unique_name("byname")
    values = await asyncio.gather(*(embedder.named(name).embed.aio.remote(i) for i in range(4)))
    assert [v for v, _ in values] == [0, 1, 2, 3]
    remote = apothic.Cls.from_name(embedder.app_name, "Embedder", client=apothic_runtime.config)
    assert await remote.named(name).embed.aio.remote(7) == (7, 1)
    assert [v async for v in remote.named(name).add.aio.map([1, 2], [3, 4])] == [4, 6]
