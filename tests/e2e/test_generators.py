"""Generator functions on the real runtime: items stream back while the generator runs."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest

import apothic
from apothic._client import get_client
from apothic._sync import run_sync
from apothic.exceptions import BlockingInAsyncContextError, InvalidArgumentError
from apothic.testing import wait_for
from tests.e2e.apps.calls import CallError


def _jobs(config: apothic.ClientConfig, function_name: str) -> list[apothic.JobInfo]:
    async def call() -> list[apothic.JobInfo]:
        return await get_client(config).list_jobs(app_name="e2e-calls", limit=1000)

    return [j for j in run_sync(call(), "list jobs") if j.function_name == function_name]


def test_remote_gen_yields_every_item(calls_app: ModuleType) -> None:
    assert list(calls_app.count_up.remote_gen(5)) == [0, 1, 2, 3, 4]
    assert list(calls_app.count_up.remote_gen(0)) == []
    many = list(calls_app.count_up.remote_gen(2000))
    assert many == list(range(2000))


def test_items_arrive_while_the_generator_still_runs(calls_app: ModuleType, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    items = calls_app.gated.remote_gen(str(gate))
    # The generator cannot go past its first item until the gate exists, so the first
    # item must have been streamed before the generator finished.
    assert next(items) == "first"
    assert not gate.exists()
    gate.touch()
    assert list(items) == ["second", "third"]


def test_async_generator(calls_app: ModuleType, tmp_path: Path) -> None:
    assert list(calls_app.async_count_up.remote_gen(4, 0.01)) == [0, 1, 2, 3]
    gate = tmp_path / "gate"
    items = calls_app.async_gated.remote_gen(str(gate))
    assert next(items) == "first"
    gate.touch()
    assert list(items) == ["second"]


def test_the_first_item_arrives_well_before_the_end(calls_app: ModuleType) -> None:
    started = time.monotonic()
    items = calls_app.async_count_up.remote_gen(5, 0.3)
    assert next(items) == 0
    first_at = time.monotonic() - started
    assert list(items) == [1, 2, 3, 4]
    ended_at = time.monotonic() - started
    assert ended_at - first_at >= 1.1  # four more items, 0.3 s apart


@pytest.mark.parametrize("function", ["breaks_after", "async_breaks_after"])
def test_a_generator_that_raises_midway_yields_its_items_then_raises(calls_app: ModuleType, function: str) -> None:
    seen = []
    with pytest.raises(CallError, match="broke after 3 items") as err:
        for item in getattr(calls_app, function).remote_gen(3):
            seen.append(item)
    assert seen == [0, 1, 2]
    assert getattr(err.value, "remote_traceback", None)
    jobs = wait_for(lambda: [j for j in _jobs(calls_app.app._client, function) if j.status.is_final])
    assert jobs[0].status is apothic.JobStatus.FAILED


async def test_aio_remote_gen(calls_app: ModuleType, tmp_path: Path) -> None:
    assert [i async for i in calls_app.count_up.aio.remote_gen(3)] == [0, 1, 2]
    assert [i async for i in calls_app.async_count_up.aio.remote_gen(3, 0.0)] == [0, 1, 2]

    gate = tmp_path / "gate"
    items = calls_app.gated.aio.remote_gen(str(gate))
    assert await anext(items) == "first"
    gate.touch()
    assert [i async for i in items] == ["second", "third"]

    seen = []
    with pytest.raises(CallError, match="async broke after 2 items"):
        async for item in calls_app.async_breaks_after.aio.remote_gen(2):
            seen.append(item)
    assert seen == [0, 1]


def test_leaving_a_remote_gen_early_cancels_its_job(calls_app: ModuleType, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    before = {j.job_id for j in _jobs(calls_app.app._client, "gated")}
    items = calls_app.gated.remote_gen(str(gate))
    assert next(items) == "first"
    items.close()
    job = wait_for(
        lambda: [j for j in _jobs(calls_app.app._client, "gated") if j.job_id not in before and j.status.is_final],
        what="the abandoned generator's job to end",
    )[0]
    assert job.status is apothic.JobStatus.CANCELLED
    assert "went away" in job.reason
    assert list(calls_app.count_up.remote_gen(2)) == [0, 1]


def test_a_generator_failing_before_its_first_item_is_retried(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    assert list(calls_app.gen_fails_before_yielding.remote_gen(str(counter))) == [2, 20]


def test_a_generator_failing_after_an_item_is_not_retried(calls_app: ModuleType, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    seen = []
    with pytest.raises(CallError, match="failed after yielding") as err:
        for item in calls_app.gen_fails_after_yielding.remote_gen(str(counter)):
            seen.append(item)
    assert seen == [1]
    assert len(counter.read_text().splitlines()) == 1
    assert not any("attempts" in note for note in getattr(err.value, "__notes__", []))


def test_remote_gen_of_a_plain_function_is_a_clear_error(calls_app: ModuleType) -> None:
    with pytest.raises(InvalidArgumentError, match="'square' is not a generator.*remote()"):
        list(calls_app.square.remote_gen(3))
    assert calls_app.square.remote(3) == 9


async def test_blocking_iteration_inside_an_event_loop_names_the_async_form(calls_app: ModuleType) -> None:
    with pytest.raises(BlockingInAsyncContextError, match=r"async for \.\.\. in count_up\.aio\.remote_gen"):
        list(calls_app.count_up.remote_gen(1))
    with pytest.raises(BlockingInAsyncContextError, match=r"async for \.\.\. in square\.aio\.map"):
        list(calls_app.square.map([1]))
