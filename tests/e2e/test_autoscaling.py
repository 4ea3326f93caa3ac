"""Autoscaling on the real runtime: containers start on demand, are reused while warm, stop
after their idle window, stay up per ``min_containers``, and queues are bounded."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import apothic
from apothic.exceptions import InvalidConfigError, ResourceExhaustedError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


@contextlib.contextmanager
def _deployed(app: apothic.App) -> Iterator[apothic.App]:
    app.deploy()
    try:
        yield app
    finally:
        app.stop()


def _containers(runtime: LocalRuntime, app: apothic.App, function: str) -> list[tuple[str, str]]:
    """``(container id, state)`` of the function's containers, read on the runtime's loop."""

    async def snapshot() -> list[tuple[str, str]]:
        assert runtime.plane is not None
        pool = runtime.plane.scheduler.pools.get((app.deployment_id or "", function))
        return sorted((c.container_id, c.state) for c in pool.containers) if pool is not None else []

    return runtime.run_coroutine(snapshot())  # type: ignore[no-any-return]


def _container_of(job: apothic.Job) -> str:
    running = [e for e in job.watch(snapshot=False) if isinstance(e, apothic.JobRunningEvent)]
    return running[-1].container_id


def test_max_containers_one_serializes_calls(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("serial"), client=apothic_runtime.config)

    @app.function(timeout_s=30, max_containers=1)
    def nap(delay_s: float) -> int:
        time.sleep(delay_s)
        return os.getpid()

    with _deployed(app):
        pid = nap.remote(0)
        started = time.monotonic()
        jobs = [nap.spawn(0.3) for _ in range(4)]
        assert [job.wait(timeout=30) for job in jobs] == [pid] * 4
        assert time.monotonic() - started >= 4 * 0.3
        assert len(_containers(apothic_runtime, app, "nap")) == 1


def test_containers_start_on_demand_are_reused_and_scale_down_when_idle(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("scale"), client=apothic_runtime.config)

    @app.function(timeout_s=30, scaledown_window_s=1)
    def pid() -> int:
        return os.getpid()

    with _deployed(app):
        assert _containers(apothic_runtime, app, "pid") == []  # nothing runs before the first call
        first = pid.spawn()
        first_pid = first.wait(timeout=30)
        [(container, state)] = _containers(apothic_runtime, app, "pid")
        assert state == "ready" and _container_of(first) == container
        warm = pid.spawn()
        assert warm.wait(timeout=30) == first_pid  # warm: the same container again
        assert _container_of(warm) == container

        wait_for(lambda: not _containers(apothic_runtime, app, "pid"), timeout=10, what="the idle container to stop")
        again = pid.spawn()
        assert again.wait(timeout=30) != first_pid  # from zero again: a new container
        assert _container_of(again) != container


def test_sequential_calls_keep_one_spare_container_not_one_per_call(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("sequential"), client=apothic_runtime.config)

    @app.function(timeout_s=30)
    def pid() -> int:
        return os.getpid()

    with _deployed(app):
        for _ in range(5):
            pid.remote()
            # Let any container started for the call become ready before the next call.
            containers = wait_for(
                lambda: (c := _containers(apothic_runtime, app, "pid")) and all(s == "ready" for _, s in c) and c,
                what="the pool to settle",
            )
            assert len(containers) <= 2, containers


def test_a_burst_scales_up_then_back_down(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("burst"), client=apothic_runtime.config)

    @app.function(timeout_s=30, max_containers=3, scaledown_window_s=1)
    def nap(delay_s: float) -> int:
        time.sleep(delay_s)
        return os.getpid()

    with _deployed(app):
        pids = [job.wait(timeout=30) for job in [nap.spawn(0.5) for _ in range(6)]]
        assert 1 < len(set(pids)) <= 3
        wait_for(lambda: not _containers(apothic_runtime, app, "nap"), timeout=10, what="the burst to scale down")


def test_min_containers_starts_one_before_the_first_call_and_keeps_it(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("warm"), client=apothic_runtime.config)

    @app.function(timeout_s=30, min_containers=1, scaledown_window_s=1)
    def pid() -> int:
        return os.getpid()

    with _deployed(app):
        [(container, _)] = wait_for(
            lambda: [c for c in _containers(apothic_runtime, app, "pid") if c[1] == "ready"],
            timeout=15,
            what="the min_containers container",
        )
        job = pid.spawn()
        job.wait(timeout=30)
        assert _container_of(job) == container
        # Idle past the scale-down window (two reaper passes), the pool keeps a container
        # (the spare the call started may be the one kept).
        with pytest.raises(TimeoutError):
            wait_for(lambda: not _containers(apothic_runtime, app, "pid"), timeout=2.2)
        assert len(_containers(apothic_runtime, app, "pid")) == 1
    wait_for(lambda: not _containers(apothic_runtime, app, "pid"), what="the stopped app's container to go")


def test_spawn_beyond_max_pending_tasks_fails_fast(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    app = apothic.App(unique_name("bounded"), client=apothic_runtime.config)
    gate = tmp_path / "gate"

    @app.function(timeout_s=30, max_containers=1, max_pending_tasks=2)
    def held(gate: str) -> str:
        while not os.path.exists(gate):
            time.sleep(0.01)
        return "done"

    with _deployed(app):
        held.remote(str(tmp_path))  # warm: the next spawn runs at once instead of waiting
        accepted = [held.spawn(str(gate)) for _ in range(3)]  # one running, two waiting
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError) as err:
            held.spawn(str(gate))
        assert time.monotonic() - started < 1
        message = str(err.value)
        assert "max_pending_tasks is 2" in message and "'held'" in message and app.name in message
        with pytest.raises(ResourceExhaustedError, match="max_pending_tasks"):
            held.remote(str(gate))
        with pytest.raises(ResourceExhaustedError, match="max_pending_tasks"):
            held.spawn_map([str(gate)])
        gate.touch()
        assert [job.wait(timeout=30) for job in accepted] == ["done"] * 3
        # Once the queue drained, calls are accepted again.
        assert held.remote(str(gate)) == "done"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout_s": 0}, "timeout_s must be greater than zero"),
        ({"timeout_s": -1}, "timeout_s must be greater than zero"),
        ({"timeout_s": float("nan")}, "timeout_s must be finite"),
        ({"max_containers": 0}, "max_containers"),
        ({"min_containers": -1}, "min_containers"),
        ({"min_containers": 3, "max_containers": 2}, "min_containers"),
        ({"max_pending_tasks": 0}, "max_pending_tasks"),
        ({"scaledown_window_s": 0}, "scaledown_window_s"),
        ({"concurrent_requests": 0}, "concurrent_requests"),
    ],
)
def test_bad_scaling_options_fail_at_decoration(options: dict[str, object], match: str) -> None:
    app = apothic.App(unique_name("bad"))
    with pytest.raises(InvalidConfigError, match=match):

        @app.function(**options)
        def f() -> None: ...
