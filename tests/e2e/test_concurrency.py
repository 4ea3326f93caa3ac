"""Concurrency and batching on the real runtime: ``@concurrent`` (tasks or threads in one
container), ``concurrent_requests``, and ``@batched`` (single calls grouped into lists)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import apothic
from apothic.exceptions import InvalidConfigError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


def _spawn_and_wait(fn: apothic.Function, args: list[tuple[object, ...]]) -> tuple[list[object], float]:
    """Spawns one job per args tuple at once; returns their values in order and the seconds
    from the first spawn to the last result."""
    started = time.monotonic()
    jobs = [fn.spawn(*a) for a in args]
    values = [job.wait(timeout=30) for job in jobs]
    return values, time.monotonic() - started


# -- @concurrent ---------------------------------------------------------------------------


def test_concurrent_async_inputs_share_one_container(calls_app: ModuleType) -> None:
    calls_app.async_nap.remote(0)  # a warm container, so the timing below is the inputs'
    pids, elapsed = _spawn_and_wait(calls_app.async_nap, [(0.5,)] * 8)
    assert len(set(pids)) == 1
    assert elapsed < 2.5, f"8 concurrent 0.5 s inputs took {elapsed:.2f}s (one at a time: 4 s)"


def _check_threads_overlap(results: list[tuple[int, int, float, float]], count: int) -> None:
    assert len({pid for pid, _, _, _ in results}) == 1, "not one container"
    assert len({thread for _, thread, _, _ in results}) == count, "not one thread per input"
    assert max(start for _, _, start, _ in results) < min(end for _, _, _, end in results), "did not overlap"


def test_concurrent_sync_inputs_run_in_threads_of_one_container(calls_app: ModuleType) -> None:
    calls_app.thread_nap.remote(0)
    results, elapsed = _spawn_and_wait(calls_app.thread_nap, [(0.5,)] * 4)
    _check_threads_overlap(results, 4)  # type: ignore[arg-type]
    assert elapsed < 1.9, f"4 concurrent 0.5 s inputs took {elapsed:.2f}s (one at a time: 2 s)"


def test_concurrent_requests_option(calls_app: ModuleType) -> None:
    calls_app.requests_nap.remote(0)
    results, _ = _spawn_and_wait(calls_app.requests_nap, [(0.5,)] * 3)
    _check_threads_overlap(results, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("function", "count"), [("async_chatter", 6), ("thread_chatter", 4)])
def test_output_of_concurrent_inputs_goes_to_their_own_jobs(
    calls_app: ModuleType, tmp_path: Path, function: str, count: int
) -> None:
    gate = tmp_path / "gate"
    fn = getattr(calls_app, function)
    markers = [f"<{function}-{i}>" for i in range(count)]
    jobs = [fn.spawn(marker, str(gate)) for marker in markers]
    # All of them are running at once before any goes on.
    for job, marker in zip(jobs, markers, strict=True):
        wait_for(lambda j=job, m=marker: f"{m} begins" in j.logs(), what=f"{marker} to start")
    gate.touch()
    assert [job.wait(timeout=30) for job in jobs] == markers
    pids = {e.container_id for job in jobs for e in job.watch(snapshot=False) if isinstance(e, apothic.JobRunningEvent)}
    assert len(pids) == 1, "the inputs did not share a container"
    for job, marker in zip(jobs, markers, strict=True):
        logs = job.logs()
        assert logs.splitlines() == [f"{marker} begins", *(f"{marker} line {i}" for i in range(3))]


# -- @batched ------------------------------------------------------------------------------


def test_batched_calls_are_grouped_and_fan_back_to_their_callers(calls_app: ModuleType) -> None:
    xs = list(range(1, 9))
    results, _ = _spawn_and_wait(calls_app.batch_sizes, [(x,) for x in xs])
    assert [value for value, _ in results] == [x * 10 for x in xs]  # type: ignore[misc]
    sizes = [size for _, size in results]  # type: ignore[misc]
    assert max(sizes) > 1, f"no calls were grouped: {sizes}"
    assert max(sizes) <= 4
    # A batch of k inputs answers k callers, each of whom saw size k.
    assert all(n % size == 0 for size, n in collections.Counter(sizes).items()), sizes


def test_batched_async_function_with_two_parameters(calls_app: ModuleType) -> None:
    results, _ = _spawn_and_wait(calls_app.async_batch_sizes, [(x, 100 * x) for x in range(6)])
    assert [value for value, _ in results] == [101 * x for x in range(6)]  # type: ignore[misc]
    assert calls_app.async_batch_sizes.remote(2, ys=3)[0] == 5


def test_batched_callers_may_pass_arguments_positionally_or_by_keyword(calls_app: ModuleType) -> None:
    fn = calls_app.async_batch_sizes
    fn.remote(0, 0)  # warm, so the three calls below land in one batch
    jobs = [fn.spawn(1, 2), fn.spawn(3, ys=4), fn.spawn(xs=5, ys=6)]
    results = [job.wait(timeout=30) for job in jobs]
    assert [value for value, _ in results] == [3, 7, 11]
    with pytest.raises(TypeError, match="missing a required argument: 'ys'"):
        fn.remote(1)


def test_batched_map(calls_app: ModuleType) -> None:
    results = list(calls_app.batch_sizes.map(range(40)))
    assert [value for value, _ in results] == [x * 10 for x in range(40)]
    assert max(size for _, size in results) > 1


def test_a_batch_of_the_wrong_length_fails_every_caller_clearly(calls_app: ModuleType) -> None:
    jobs = [calls_app.batch_drops_one.spawn(x) for x in range(3)]
    for job in jobs:
        with pytest.raises(ValueError, match=r"batch_drops_one returned \d+ results for a batch of \d+ inputs"):
            job.wait(timeout=30)
        assert job.status() is apothic.JobStatus.FAILED
    with pytest.raises(ValueError, match="one result per input"):
        calls_app.batch_drops_one.remote(1)
    # The container survives its bad batches.
    assert calls_app.batch_sizes.remote(3) == (30, 1)


# -- bad configuration ---------------------------------------------------------------------


def test_concurrent_and_batched_together_are_rejected() -> None:
    with pytest.raises(InvalidConfigError, match="both @concurrent and @batched"):

        @apothic.concurrent(max_inputs=2)
        @apothic.batched(max_batch_size=2, wait_ms=1)
        def f(xs: list[int]) -> list[int]:
            return xs

    with pytest.raises(InvalidConfigError, match="both @concurrent and @batched"):

        @apothic.batched(max_batch_size=2, wait_ms=1)
        @apothic.concurrent(max_inputs=2)
        def g(xs: list[int]) -> list[int]:
            return xs


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: apothic.concurrent(max_inputs=0), "max_inputs"),
        (lambda: apothic.concurrent(max_inputs=1001), "max_inputs"),
        (lambda: apothic.concurrent(max_inputs=2, target_inputs=3), "target_inputs"),
        (lambda: apothic.concurrent(max_inputs=2, target_inputs=0), "target_inputs"),
        (lambda: apothic.batched(max_batch_size=0, wait_ms=1), "max_batch_size"),
        (lambda: apothic.batched(max_batch_size=2, wait_ms=-1), "wait_ms"),
        (lambda: apothic.batched(max_batch_size=2, wait_ms="10"), "wait_ms"),
    ],
)
def test_out_of_range_limits_are_rejected(make: object, match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        make()  # type: ignore[operator]


def test_concurrent_requests_and_concurrent_together_are_rejected(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("both"), client=apothic_runtime.config)

    @app.function(concurrent_requests=2)
    @apothic.concurrent(max_inputs=4)
    async def f() -> None: ...

    with pytest.raises(InvalidConfigError, match="concurrent_requests= or @concurrent"):
        app.deploy()


def test_a_batched_generator_is_rejected(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("batched-gen"), client=apothic_runtime.config)

    @app.function()
    @apothic.batched(max_batch_size=2, wait_ms=1)
    def f(xs: list[int]) -> Iterator[int]:
        yield from xs

    with pytest.raises(InvalidConfigError, match="generator function cannot be @batched"):
        app.deploy()


def test_a_concurrent_async_input_times_out_alone(calls_app: ModuleType) -> None:
    fn = calls_app.async_nap_or_overrun
    pid = fn.remote(0)
    slow = fn.spawn(30)
    quick = [fn.spawn(0.3) for _ in range(2)]
    assert [job.wait(timeout=30) for job in quick] == [pid, pid]
    with pytest.raises(apothic.exceptions.FunctionTimeoutError, match="timeout of 1s"):
        slow.wait(timeout=30)
    assert fn.remote(0) == pid  # cancelled in place: the container lives on


def test_cancelling_a_concurrent_async_input_leaves_the_others_running(calls_app: ModuleType) -> None:
    fn = calls_app.async_nap
    pid = fn.remote(0)
    doomed = fn.spawn(20)
    others = [fn.spawn(0.5) for _ in range(3)]
    wait_for(lambda: doomed.status() is apothic.JobStatus.RUNNING, what="the doomed input to run")
    assert doomed.cancel() is apothic.JobStatus.CANCELLED
    assert [job.wait(timeout=30) for job in others] == [pid] * 3
    with pytest.raises(apothic.exceptions.JobCancelledError):
        doomed.wait(timeout=5)
    assert fn.remote(0) == pid
