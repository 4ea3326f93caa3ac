"""Watch markers on job, app and deployment watches: the end of the snapshot, progress while
idle, and a reset (then a fresh snapshot) for a watcher that fell behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

import apothic
from apothic._client import get_client
from apothic.cli.main import app as cli
from apothic.models import DeploymentEvent
from apothic.runtime import LOCAL_ACCOUNT, LocalRuntime
from apothic.server import watch as server_watch
from apothic.server.models import Event, JobRecord
from apothic.server.watch import Change, SnapshotChunk, WatchSettings
from apothic.testing import unique_name, wait_for
from apothic.watch import Progress, Reset, SnapshotEnd

PROGRESS_S = 0.3


@pytest.fixture
def quick_progress(apothic_runtime: LocalRuntime) -> Iterator[WatchSettings]:
    """Job, app and deployment watches of the session runtime report progress every 0.3 s."""
    plane = apothic_runtime.plane
    assert plane is not None
    before = plane.jobs.watch_settings, plane.deployments.watch_settings
    settings = WatchSettings(progress_s=PROGRESS_S)
    plane.jobs.configure_watch(settings)
    plane.deployments.configure_watch(settings)
    try:
        yield settings
    finally:
        plane.jobs.configure_watch(before[0])
        plane.deployments.configure_watch(before[1])


async def _until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _check_progress(items: list[Any]) -> None:
    """Every progress marker names the last seq sent before it."""
    last = 0
    for item in items:
        if isinstance(item, apothic.JobEvent | DeploymentEvent):
            last = item.seq
        elif isinstance(item, Progress):
            assert item.rev == last, items


def test_job_watch_snapshot_end_and_progress(basic_app: ModuleType, quick_progress: WatchSettings) -> None:
    job = basic_app.slow_chatty.spawn(7, 1.5)  # quiet for 1.5 s between its two lines
    items = list(job.watch(snapshot=True, markers=True))
    snapshot, end = items[0], items[1]
    assert isinstance(snapshot, apothic.JobSnapshotEvent) and snapshot.job is not None
    assert not snapshot.job.status.is_final, "the job ended before the watch began"
    assert end == SnapshotEnd(snapshot.seq)
    events = [i for i in items[2:] if isinstance(i, apothic.JobEvent)]
    assert [e.seq for e in events] == list(range(snapshot.seq + 1, snapshot.seq + 1 + len(events)))
    assert isinstance(events[-1], apothic.JobEndEvent) and items[-1] is events[-1]
    assert any(isinstance(i, Progress) for i in items), "the job was quiet for 1.5 s: progress was sent"
    assert not any(isinstance(i, SnapshotEnd | Reset) for i in items[2:])
    _check_progress(items)

    # Markers stay out of the default form; a replay of an ended job ends its snapshot too.
    assert all(isinstance(e, apothic.JobEvent) for e in job.watch(snapshot=True))
    replay = list(job.watch(snapshot=True, markers=True))
    assert isinstance(replay[0], apothic.JobSnapshotEvent) and replay[1:] == [SnapshotEnd(events[-1].seq)]


def test_job_watch_rejects_a_seq_after_the_last_event(basic_app: ModuleType) -> None:
    job = basic_app.square.spawn(3)
    assert job.wait(timeout=30) == 9
    last = list(job.watch(snapshot=False))[-1].seq
    assert list(job.watch(snapshot=False, after_seq=last)) == []
    with pytest.raises(apothic.exceptions.InvalidArgumentError, match=f"after seq {last + 1}"):
        list(job.watch(snapshot=False, after_seq=last + 1))


def test_cli_job_watch_marks_where_the_snapshot_ends(basic_app: ModuleType) -> None:
    job = basic_app.square.spawn(4)
    assert job.wait(timeout=30) == 16
    last = list(job.watch(snapshot=False))[-1].seq
    result = CliRunner().invoke(cli, ["job", "watch", job.job_id, "--snapshot"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("snapshot succeeded") and lines[1:] == [f"snapshot as of seq {last}; live events follow"]
    # --json prints events only.
    result = CliRunner().invoke(cli, ["job", "watch", job.job_id, "--json"], catch_exceptions=False)
    assert [json.loads(line)["seq"] for line in result.output.splitlines()] == list(range(1, last + 1))


async def test_app_watch_snapshot_progress_and_live_events(
    basic_app: ModuleType, quick_progress: WatchSettings
) -> None:
    running = await basic_app.slow_chatty.aio.spawn(8, 1.0)
    client = get_client(basic_app.app._client)
    subscribed = asyncio.Event()
    items: list[Any] = []

    async def collect() -> None:
        async for item in client.watch_app("e2e-basic", subscribed, snapshot=True):
            items.append(item)

    task = asyncio.create_task(collect())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        await _until(lambda: any(isinstance(i, SnapshotEnd) for i in items), "the snapshot")
        later = await basic_app.square.aio.spawn(5)
        assert await later.aio.wait(timeout=30) == 25
        assert await running.aio.wait(timeout=30) == 8

        def ended(job_id: str) -> bool:
            return any(isinstance(i, apothic.JobEndEvent) and i.job_id == job_id for i in items)

        await _until(lambda: ended(running.job_id) and ended(later.job_id), "both jobs to end")
        await _until(lambda: isinstance(items[-1], Progress), "a progress marker once the app is quiet")
    finally:
        task.cancel()
    end = next(i for i, item in enumerate(items) if isinstance(item, SnapshotEnd))
    snapshots = {e.job_id: e for e in items[:end]}
    assert all(isinstance(e, apothic.JobSnapshotEvent) for e in snapshots.values())
    assert running.job_id in snapshots and later.job_id not in snapshots
    assert not any(isinstance(i, Reset | SnapshotEnd) for i in items[end + 1 :])
    for job_id, first in ((running.job_id, snapshots[running.job_id].seq + 1), (later.job_id, 1)):
        seqs = [e.seq for e in items[end + 1 :] if isinstance(e, apothic.JobEvent) and e.job_id == job_id]
        assert seqs == list(range(first, first + len(seqs))), (job_id, seqs)
    revs = [i.rev for i in items if isinstance(i, SnapshotEnd | Progress)]
    assert revs == sorted(revs) and revs[-1] > revs[0]


async def test_deployment_watch_snapshot_progress_and_end(
    apothic_runtime: LocalRuntime, quick_progress: WatchSettings
) -> None:
    app = apothic.App(unique_name("watched"), client=apothic_runtime.config)

    @app.function(serialized=True)
    def noop() -> None:
        return None

    deployment_id = await app.aio.deploy()
    client = get_client(apothic_runtime.config)
    items: list[Any] = []

    async def collect() -> None:
        async for item in client.watch_deployment(deployment_id, snapshot=True):
            items.append(item)

    task = asyncio.create_task(collect())
    await _until(lambda: any(isinstance(i, Progress) for i in items), "a progress marker")
    await client.stop_deployment(deployment_id)
    await _until(lambda: any(getattr(i, "kind", "") == "deployment.stopped" for i in items), "the stop")
    await client.delete_deployment(deployment_id)
    await asyncio.wait_for(task, 10)  # the stream ends after the deletion

    events = [i for i in items if isinstance(i, DeploymentEvent)]
    assert [(e.kind, e.seq) for e in events] == [
        ("deployment.snapshot", 1),
        ("deployment.stopped", 2),
        ("deployment.deleted", 3),
    ]
    assert items[1] == SnapshotEnd(1)
    _check_progress(items)


def _pull(runtime: LocalRuntime, stream: Any, until: type) -> list[Any]:
    """Reads a server-side watch stream (items of :mod:`apothic.server.watch`), on the
    runtime's loop, up to an item of type ``until``."""

    async def pull() -> list[Any]:
        out = []
        async with asyncio.timeout(30):
            while not out or not isinstance(out[-1], until):
                out.append(await anext(stream))
        return out

    return list(runtime.run_coroutine(pull()))


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "no-snapshot"])
def test_app_watcher_that_falls_behind_gets_a_reset(apothic_runtime: LocalRuntime, snapshot: bool) -> None:
    plane = apothic_runtime.plane
    assert plane is not None
    app = apothic.App(unique_name("behind"), client=apothic_runtime.config)

    @app.function(serialized=True)
    def slow(pause: float) -> str:
        time.sleep(pause)
        return "slow"

    @app.function(serialized=True)
    def quick(x: int) -> int:
        return x

    app.deploy()

    def committed(*jobs: apothic.Job) -> bool:
        """Every event of these jobs committed (and reached the app's watchers)."""
        live = [plane.jobs.live(job.job_id) for job in jobs]
        return all(j is not None and j.durable_seq == j.record.last_seq for j in live)

    pending = slow.spawn(5.0)  # still running, and quiet, while the watcher falls behind
    wait_for(lambda: pending.status() is apothic.JobStatus.RUNNING and committed(pending), timeout=30)
    account = apothic_runtime.run_coroutine(plane.accounts.ensure_account(LOCAL_ACCOUNT))
    before = plane.jobs.watch_settings
    plane.jobs.configure_watch(WatchSettings(retention=3, progress_s=30))

    async def subscribe() -> Any:
        watch = plane.jobs.watch_app(account, app.name, snapshot=snapshot)
        return watch, watch.__enter__()

    watch, stream = apothic_runtime.run_coroutine(subscribe())
    try:
        plane.jobs.configure_watch(before)
        if snapshot:
            assert _pull(apothic_runtime, stream, server_watch.SnapshotEnd)[-1] == server_watch.SnapshotEnd(0)
        # The watcher reads nothing while the app's jobs make far more than 3 changes.
        quick_jobs = [quick.spawn(i) for i in range(5)]
        assert [job.wait(timeout=30) for job in quick_jobs] == list(range(5))
        wait_for(lambda: committed(*quick_jobs), timeout=30, what="the quick jobs' events to commit")
        items = _pull(apothic_runtime, stream, server_watch.Reset)
        assert len(items) == 1, "the watcher fell behind at once: nothing but the reset"
        reset = items[0]
        assert reset.after_rev == 0 and reset.oldest_rev == reset.rev - 2, "3 changes retained"
        if snapshot:
            # A fresh snapshot of the unfinished jobs as of the reset's rev, then what follows.
            fresh = _pull(apothic_runtime, stream, server_watch.SnapshotEnd)
            assert fresh[-1] == server_watch.SnapshotEnd(reset.rev)
            records = [r for chunk in fresh[:-1] if isinstance(chunk, SnapshotChunk) for r in chunk.entries]
            assert [r.job_id for r in records] == [pending.job_id]
            after = records[0].last_seq
            # Its later events follow the fresh snapshot with no gap.
            assert pending.wait(timeout=30) == "slow"
            seen: list[tuple[Event, JobRecord]] = []
            while not any(e.kind == "job.end" for e, _ in seen):
                seen += [pair for change in _pull(apothic_runtime, stream, Change) for pair in change.events]
            assert [e.seq for e, _ in seen] == list(range(after + 1, after + 1 + len(seen)))
            assert {e.object_id for e, _ in seen} == {pending.job_id}
        else:
            # The retained changes come next, oldest first.
            retained = [_pull(apothic_runtime, stream, Change) for _ in range(3)]
            assert [c.rev for [c] in retained] == [reset.oldest_rev, reset.oldest_rev + 1, reset.rev]
    finally:
        apothic_runtime.run_coroutine(_exit(watch))
        plane.jobs.configure_watch(before)
        pending.cancel()
        app.stop()


async def _exit(watch: Any) -> None:
    watch.__exit__(None, None, None)
