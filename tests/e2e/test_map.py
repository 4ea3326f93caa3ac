"""The map family on the real runtime: map, starmap, for_each, spawn_map, their ``.aio``
forms, and every way a map can go wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import apothic
from apothic._client import get_client
from apothic._sync import run_sync
from apothic.exceptions import InvalidArgumentError, SerializationError
from apothic.runtime import LocalRuntime
from apothic.testing import wait_for
from tests.e2e.apps.calls import CallError


def _jobs(config: apothic.ClientConfig, function_name: str) -> list[apothic.JobInfo]:
    async def call() -> list[apothic.JobInfo]:
        return await get_client(config).list_jobs(app_name="e2e-calls", limit=1000)

    return [j for j in run_sync(call(), "list jobs") if j.function_name == function_name]


# -- results ---------------------------------------------------------------------------------


def test_map_yields_results_in_input_order(calls_app: ModuleType) -> None:
    xs = list(range(40))
    assert list(calls_app.square.map(xs)) == [x * x for x in xs]


def test_unordered_map_yields_the_same_results(calls_app: ModuleType) -> None:
    xs = list(range(40))
    assert sorted(calls_app.square.map(xs, order_outputs=False)) == sorted(x * x for x in xs)


def test_map_zips_several_iterables_and_stops_at_the_shortest(calls_app: ModuleType) -> None:
    assert list(calls_app.add.map([1, 2, 3, 4], [10, 20, 30])) == [11, 22, 33]


def test_map_passes_the_same_kwargs_to_every_call(calls_app: ModuleType) -> None:
    assert list(calls_app.scaled.map([1, 2, 3], kwargs={"factor": 10, "offset": 1})) == [11, 21, 31]


def test_starmap_unpacks_each_item(calls_app: ModuleType) -> None:
    assert list(calls_app.add.starmap([(1, 2), (3, 4), [5, 6]])) == [3, 7, 11]
    assert list(calls_app.scaled.starmap([(1, 2), (3, 4)], kwargs={"offset": 100})) == [102, 112]


def test_map_of_nothing_yields_nothing(calls_app: ModuleType) -> None:
    assert list(calls_app.square.map([])) == []
    assert calls_app.square.spawn_map([]) == []


def test_for_each_runs_every_input(calls_app: ModuleType, tmp_path: Path) -> None:
    names = [f"f{i}" for i in range(12)]
    assert calls_app.touch.for_each([str(tmp_path)] * len(names), names) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_for_each_raises_the_first_failure_unless_ignored(calls_app: ModuleType) -> None:
    with pytest.raises(CallError, match="input 3 is bad"):
        calls_app.fail_on.for_each(range(6), [3] * 6)
    assert calls_app.fail_on.for_each(range(6), [3] * 6, ignore_exceptions=True) is None


def test_spawn_map_returns_durable_jobs(calls_app: ModuleType) -> None:
    jobs = calls_app.square.spawn_map(range(10))
    assert len(jobs) == 10
    assert len({job.job_id for job in jobs}) == 10
    assert all(job.job_id.startswith("jobs:") for job in jobs)
    assert [job.wait(timeout=30) for job in jobs] == [x * x for x in range(10)]
    assert {job.status() for job in jobs} == {apothic.JobStatus.SUCCEEDED}
    # Each is a job of its own, found by id alone.
    again = apothic.Job.from_id(jobs[4].job_id, client=calls_app.app._client)
    assert again.info().function_name == "square" and again.wait() == 16


def test_spawn_map_from_a_generator_with_kwargs(calls_app: ModuleType) -> None:
    jobs = calls_app.scaled.spawn_map((x for x in range(3)), kwargs={"factor": 3})
    assert [job.wait(timeout=30) for job in jobs] == [0, 3, 6]


def test_map_over_a_generator_input(calls_app: ModuleType) -> None:
    def numbers() -> Iterator[int]:
        for x in range(30):
            if x % 10 == 0:
                time.sleep(0.05)  # a slow producer: inputs go out as they come
            yield x

    assert list(calls_app.square.map(numbers())) == [x * x for x in range(30)]
    assert list(calls_app.add.map(iter([1, 2]), (y for y in [5, 6, 7]))) == [6, 8]


def test_a_large_map_completes(calls_app: ModuleType) -> None:
    n = 3000
    results = list(calls_app.square.map(range(n)))
    assert results == [x * x for x in range(n)]


def test_map_shows_up_as_one_job_with_a_summary(calls_app: ModuleType) -> None:
    config = calls_app.app._client
    before = {j.job_id for j in _jobs(config, "listed")}
    results = list(calls_app.listed.map([1, -1, 2, -2, 3], return_exceptions=True))
    assert results[::2] == [1, 2, 3]
    assert all(isinstance(r, CallError) for r in results[1::2])
    new = wait_for(lambda: [j for j in _jobs(config, "listed") if j.job_id not in before], what="the map's job")
    assert len(new) == 1
    job = new[0]
    assert job.status is apothic.JobStatus.FAILED
    assert job.reason == "5 inputs: 3 succeeded, 2 failed"
    assert job.function_name == "listed" and job.deployment_id == calls_app.app.deployment_id

    list(calls_app.listed.map([4, 5]))
    ok = wait_for(
        lambda: [j for j in _jobs(config, "listed") if j.job_id not in before and j.job_id != job.job_id],
        what="the second map's job",
    )
    assert [(j.status, j.reason) for j in ok] == [(apothic.JobStatus.SUCCEEDED, "2 inputs: 2 succeeded, 0 failed")]


# -- .aio ------------------------------------------------------------------------------------


async def test_aio_map_is_an_async_iterator(calls_app: ModuleType) -> None:
    results = [value async for value in calls_app.square.aio.map(range(20))]
    assert results == [x * x for x in range(20)]
    unordered = [value async for value in calls_app.square.aio.map(range(20), order_outputs=False)]
    assert sorted(unordered) == results


async def test_aio_map_over_an_async_iterable(calls_app: ModuleType) -> None:
    import asyncio

    async def numbers() -> AsyncIterator[int]:
        for x in range(15):
            await asyncio.sleep(0.001)
            yield x

    assert [v async for v in calls_app.square.aio.map(numbers())] == [x * x for x in range(15)]

    async def pairs() -> AsyncIterator[tuple[int, int]]:
        for x in range(3):
            yield x, 10 * x

    assert [v async for v in calls_app.add.aio.starmap(pairs())] == [0, 11, 22]


async def test_aio_starmap_for_each_and_spawn_map(calls_app: ModuleType, tmp_path: Path) -> None:
    assert [v async for v in calls_app.add.aio.starmap([(1, 1), (2, 2)])] == [2, 4]
    assert await calls_app.touch.aio.for_each([str(tmp_path)] * 3, ["a", "b", "c"]) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    jobs = await calls_app.square.aio.spawn_map([5, 6])
    assert [await job.aio.wait(timeout=30) for job in jobs] == [25, 36]


async def test_aio_map_raises_what_its_async_iterable_raised(calls_app: ModuleType) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise CallError("the async source broke")

    seen = []
    with pytest.raises(CallError, match="the async source broke"):
        async for value in calls_app.square.aio.map(broken()):
            seen.append(value)
    assert seen == [1, 4]


# -- failures --------------------------------------------------------------------------------


def test_a_failed_input_raises_its_own_error_noting_its_index(calls_app: ModuleType) -> None:
    seen = []
    with pytest.raises(CallError, match="input 3 is bad") as err:
        for value in calls_app.fail_on.map(range(6), [3] * 6):
            seen.append(value)
    assert seen == [0, 1, 2]
    assert "(raised by map input 3)" in err.value.__notes__
    assert getattr(err.value, "remote_traceback", None)


def test_return_exceptions_yields_errors_in_place(calls_app: ModuleType) -> None:
    results = list(calls_app.fail_on.map(range(5), [1] * 5, return_exceptions=True))
    assert [r for i, r in enumerate(results) if i != 1] == [0, 2, 3, 4]
    assert isinstance(results[1], CallError)
    assert "(raised by map input 1)" in results[1].__notes__


def test_an_input_that_kills_its_container_fails_alone(calls_app: ModuleType) -> None:
    """The inputs queued behind it on the same container never started: they run elsewhere."""
    results = list(calls_app.crash_on.map(range(8), [2] * 8, return_exceptions=True))
    assert isinstance(results[2], apothic.exceptions.JobFailedError)
    assert "exited" in str(results[2]) and "(raised by map input 2)" in results[2].__notes__
    assert results[:2] + results[3:] == [0, 1, 3, 4, 5, 6, 7]


def test_a_map_that_cannot_finish_in_time_raises_timeout_error(calls_app: ModuleType) -> None:
    before = {j.job_id for j in _jobs(calls_app.app._client, "nap")}
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="map did not finish within 1") as err:
        list(calls_app.nap.map([1, 2, 3], [10.0] * 3, timeout_s=1))
    assert not isinstance(err.value, apothic.exceptions.FunctionTimeoutError)
    assert time.monotonic() - started < 5
    # The map was cancelled, so the function is free for the next call.
    job = wait_for(
        lambda: [j for j in _jobs(calls_app.app._client, "nap") if j.job_id not in before and j.status.is_final],
        what="the map's job ending",
    )[0]
    assert job.status is apothic.JobStatus.CANCELLED
    started = time.monotonic()
    assert calls_app.nap.remote(7, 0.0) == 7
    assert time.monotonic() - started < 5


def test_map_inputs_queued_on_one_container_are_each_timed_alone(calls_app: ModuleType) -> None:
    # Two 0.6 s inputs on one container: together they run past the 1 s timeout, each
    # alone does not, and each finished input's result leaves at once.
    assert list(calls_app.nap_within_timeout.map([0.6, 0.6, 0.6])) == [0.6, 0.6, 0.6]


def test_leaving_a_map_early_cancels_the_rest(calls_app: ModuleType) -> None:
    before = {j.job_id for j in _jobs(calls_app.app._client, "nap")}
    started = time.monotonic()
    for value in calls_app.nap.map([1, 2, 3, 4], [0.0, 10.0, 10.0, 10.0]):
        assert value == 1
        break
    job = wait_for(
        lambda: [j for j in _jobs(calls_app.app._client, "nap") if j.job_id not in before and j.status.is_final],
        what="the abandoned map's job to end",
    )[0]
    assert job.status is apothic.JobStatus.CANCELLED and "went away" in job.reason
    assert calls_app.nap.remote(5, 0.0) == 5  # the container is free again (or replaced)
    assert time.monotonic() - started < 8


def test_cancelling_a_maps_job_ends_the_callers_map(calls_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    assert apothic_runtime.plane is not None
    live = apothic_runtime.plane.jobs

    async def running_map() -> str:
        ids = [j.job_id for j in list(live._live.values()) if j.map_call is not None and not j.final]
        return ids[0] if len(ids) == 1 else ""

    seen: list[object] = []
    results = calls_app.nap.map([1, 2, 3], [0.0, 10.0, 10.0], timeout_s=20)
    seen.append(next(results))
    job_id = wait_for(lambda: apothic_runtime.run_coroutine(running_map()), what="the running map's job")
    started = time.monotonic()
    assert apothic.Job(job_id, client=calls_app.app._client).cancel() is apothic.JobStatus.CANCELLED
    with pytest.raises(apothic.exceptions.JobCancelledError, match="cancelled by the user") as err:
        seen.extend(results)
    assert "(raised by map input 1)" in err.value.__notes__
    assert seen == [1]
    assert time.monotonic() - started < 5, "the map's caller waited on after its job was cancelled"


def test_map_rejects_a_non_positive_timeout(calls_app: ModuleType) -> None:
    with pytest.raises(apothic.exceptions.InvalidConfigError, match="timeout_s"):
        list(calls_app.square.map([1], timeout_s=0))


def test_a_generator_input_that_raises_midway_raises_to_the_caller(calls_app: ModuleType) -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        yield 3
        raise CallError("the source broke")

    seen = []
    with pytest.raises(CallError, match="the source broke"):
        for value in calls_app.square.map(numbers()):
            seen.append(value)
    assert seen == [1, 4, 9]

    # Unordered, and with spawn_map: the same exception, nothing left hanging.
    with pytest.raises(CallError, match="the source broke"):
        list(calls_app.square.map(numbers(), order_outputs=False))
    with pytest.raises(CallError, match="the source broke"):
        calls_app.square.spawn_map(numbers())
    assert calls_app.square.remote(3) == 9


def test_a_slow_generator_input_that_raises_later_raises_to_the_caller(calls_app: ModuleType) -> None:
    gate = threading.Event()

    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        gate.wait(10)  # until the caller saw both results
        raise CallError("the source broke late")

    seen = []
    with pytest.raises(CallError, match="the source broke late"):
        for value in calls_app.square.map(numbers()):
            seen.append(value)
            if len(seen) == 2:
                gate.set()
    assert seen == [1, 4]


def test_an_unpicklable_input_names_its_index(calls_app: ModuleType) -> None:
    with pytest.raises(SerializationError, match="map input 2") as err:
        list(calls_app.square.map([1, 2, threading.Lock(), 4]))
    assert "lock" in str(err.value).lower()
    with pytest.raises(SerializationError, match="map input 1"):
        list(calls_app.square.map(iter([1, threading.Lock()])))
    with pytest.raises(SerializationError, match="input 0"):
        calls_app.square.spawn_map([threading.Lock()])


def test_mapping_a_generator_function_is_a_clear_error(calls_app: ModuleType) -> None:
    with pytest.raises(InvalidArgumentError, match="count_up.*generator.*remote_gen"):
        list(calls_app.count_up.map([1, 2]))
    assert list(calls_app.count_up.remote_gen(2)) == [0, 1]
