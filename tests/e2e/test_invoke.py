"""Deploy and call functions end to end: real control plane, real worker, real gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import ModuleType
from typing import Any

import pytest

import apothic
from apothic.exceptions import FailedPreconditionError, JobCancelledError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


class _SlowDatabase:
    """Wraps the control plane's real SurrealDB connection and delays every call."""

    def __init__(self, db: Any, delay_s: float) -> None:
        self._db = db
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if not callable(attr):
            return attr

        async def delayed(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(self._delay_s)
            return await attr(*args, **kwargs)

        return delayed


def _check_gap_free(events: list[apothic.JobEvent], first_seq: int) -> None:
    """Seqs run first_seq, first_seq+1, … and the log ends with exactly one job.end."""
    assert [e.seq for e in events] == list(range(first_seq, first_seq + len(events)))
    ends = [e for e in events if isinstance(e, apothic.JobEndEvent)]
    assert len(ends) == 1
    assert events[-1] is ends[0]


def test_remote_returns_the_value(basic_app: ModuleType) -> None:
    assert basic_app.square.remote(7) == 49
    assert basic_app.square.remote(x=3) == 9


def test_functions_are_registered_by_name(basic_app: ModuleType) -> None:
    assert basic_app.app.functions["square"] is basic_app.square
    assert basic_app.square.function_name == "square"
    assert basic_app.square(5) == 25  # calling the handle runs it locally


def test_spawn_returns_a_durable_job_and_wait_returns_its_value(basic_app: ModuleType) -> None:
    job = basic_app.square.spawn(6)
    assert job.job_id.startswith("jobs:")
    assert job.wait(timeout=30) == 36
    assert job.status() is apothic.JobStatus.SUCCEEDED
    info = job.info()
    assert (info.app_name, info.function_name, info.attempt) == ("e2e-basic", "square", 1)
    assert info.deployment_id == basic_app.app.deployment_id
    assert info.created_at is not None and info.started_at is not None and info.ended_at is not None
    assert info.created_at <= info.started_at <= info.ended_at
    # A handle made from the id alone sees the same job.
    assert apothic.Job.from_id(job.job_id, client=basic_app.app._client).wait() == 36


def test_logs_capture_stdout_and_stderr(basic_app: ModuleType) -> None:
    job = basic_app.chatty.spawn(5)
    assert job.wait(timeout=30) == 6
    logs = job.logs()
    assert "to stdout 5\n" in logs
    assert "to stderr 5\n" in logs
    streams = {
        e.stream: e.data for e in job.watch(snapshot=False) if isinstance(e, apothic.JobLogEvent) and e.data.strip()
    }
    assert "to stdout 5" in streams["stdout"]
    assert "to stderr 5" in streams["stderr"]


def test_output_written_to_the_file_descriptors_is_captured(basic_app: ModuleType) -> None:
    for n in range(5):  # the writes race the end of the input; repeat to catch a lost tail
        job = basic_app.fd_output.spawn(n)
        assert job.wait(timeout=30) == n
        logs = job.logs()
        assert "\ufffd" not in logs
        # The two streams interleave freely (a line of one may be split by a chunk of the
        # other in job.logs()); within each stream the writes stay whole and in order.
        events = [e for e in job.watch(snapshot=False) if isinstance(e, apothic.JobLogEvent)]
        stdout = "".join(e.data for e in events if e.stream == "stdout")
        stderr = "".join(e.data for e in events if e.stream == "stderr")
        assert f"from a subprocess {n}\n" in stdout
        assert f"raw stderr {n}\n" in stderr
        assert "€" * 30_000 in stdout


def test_watch_with_snapshot_then_live_events_without_gaps(basic_app: ModuleType) -> None:
    job = basic_app.slow_chatty.spawn(3, 1.0)
    events = list(job.watch(snapshot=True))
    snapshot = events[0]
    assert isinstance(snapshot, apothic.JobSnapshotEvent)
    assert snapshot.job is not None and snapshot.job.job_id == job.job_id
    assert not snapshot.job.status.is_final, "the job ended before the watch subscribed; no live events to check"
    live = events[1:]
    assert not any(isinstance(e, apothic.JobSnapshotEvent) for e in live)
    _check_gap_free(live, snapshot.seq + 1)
    end = live[-1]
    assert isinstance(end, apothic.JobEndEvent)
    assert end.status is apothic.JobStatus.SUCCEEDED
    assert {e.job_id for e in events} == {job.job_id}
    assert {(e.app_name, e.function_name) for e in live} == {("e2e-basic", "slow_chatty")}

    # The whole log, replayed from the start, has every kind in order.
    full = list(job.watch(snapshot=False))
    _check_gap_free(full, 1)
    kinds = [e.kind for e in full]
    assert kinds[0] == "job.queued"
    assert kinds[1] == "job.running"
    assert kinds[-2:] == ["job.result", "job.end"]
    assert set(kinds[2:-2]) == {"job.log"}
    running = full[1]
    assert isinstance(running, apothic.JobRunningEvent)
    assert running.attempt == 1 and running.worker_id and running.container_id
    result = full[-2]
    assert isinstance(result, apothic.JobResultEvent)
    assert result.ok and result.value() == 3
    logs = "".join(e.data for e in full if isinstance(e, apothic.JobLogEvent))
    assert "before 3" in logs and "after 3" in logs

    # Resuming after a seq yields exactly the rest.
    resumed = list(job.watch(snapshot=False, after_seq=2))
    assert [e.seq for e in resumed] == [e.seq for e in full[2:]]


def test_remote_events_streams_the_whole_job(basic_app: ModuleType) -> None:
    events = list(basic_app.chatty.remote_events(3))
    _check_gap_free(events, 1)
    assert events[0].kind == "job.queued"
    assert {"job.running", "job.log", "job.result"} <= {e.kind for e in events}
    result = next(e for e in events if isinstance(e, apothic.JobResultEvent))
    assert result.value() == 4
    assert events[-1].status is apothic.JobStatus.SUCCEEDED  # type: ignore[attr-defined]


async def test_aio_forms(basic_app: ModuleType) -> None:
    assert await basic_app.square.aio.remote(4) == 16
    assert await basic_app.async_double.aio.remote(21) == 42  # an async user function
    job = await basic_app.chatty.aio.spawn(8)
    assert await job.aio.wait(timeout=30) == 9
    assert await job.aio.status() is apothic.JobStatus.SUCCEEDED
    assert "to stdout 8" in await job.aio.logs()
    watched = [e async for e in job.aio.watch(snapshot=True)]
    assert isinstance(watched[0], apothic.JobSnapshotEvent)
    assert watched[0].job is not None and watched[0].job.status is apothic.JobStatus.SUCCEEDED
    events = [e async for e in basic_app.chatty.aio.remote_events(2)]
    _check_gap_free(events, 1)
    remote = apothic.RemoteFunction.from_name("e2e-basic", "square", client=basic_app.app._client)
    assert await remote.aio.remote(12) == 144


async def test_aio_deploy(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("aio"), client=apothic_runtime.config)

    @app.function()
    def triple(x: int) -> int:
        return 3 * x

    deployment_id = await app.aio.deploy()
    assert deployment_id.startswith("deployments:") and deployment_id == app.deployment_id
    assert await triple.aio.remote(5) == 15
    await app.aio.stop()


def test_remote_function_from_name(basic_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    fn = apothic.RemoteFunction.from_name("e2e-basic", "square", client=apothic_runtime.config)
    assert fn.remote(9) == 81
    assert fn.spawn(10).wait(timeout=30) == 100
    by_url = apothic.RemoteFunction.from_name(
        "e2e-basic", "square", base_url=apothic_runtime.address, api_key=apothic_runtime.api_key
    )
    assert by_url.remote(11) == 121
    # With nothing given it uses the environment the fixture exported.
    assert apothic.RemoteFunction.from_name("e2e-basic", "square").remote(2) == 4


def test_function_defined_in_a_test_ships_by_value(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("byvalue"), client=apothic_runtime.config)
    offset = 1000

    @app.function()
    def add_offset(x: int) -> dict[str, int]:
        return {"value": x + offset, "pid": os.getpid()}

    app.deploy()
    try:
        out = add_offset.remote(5)
        assert out["value"] == 1005
        assert out["pid"] != os.getpid()
    finally:
        app.stop()


def test_warm_container_serves_consecutive_calls(basic_app: ModuleType) -> None:
    first = basic_app.container_pid.remote()
    second = basic_app.container_pid.remote()
    third = basic_app.container_pid.spawn().wait(timeout=30)
    assert first == second == third
    assert first != os.getpid()


def test_idle_container_that_dies_is_replaced(basic_app: ModuleType) -> None:
    pid = basic_app.container_pid.remote()
    os.kill(pid, signal.SIGKILL)

    def reaped() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(reaped, timeout=30, what=f"container process {pid} to be reaped")
    replacement = basic_app.container_pid.remote()
    assert replacement != pid
    assert basic_app.container_pid.remote() == replacement


def test_warm_remote_does_not_wait_for_the_database_but_spawn_does(
    basic_app: ModuleType, apothic_runtime: LocalRuntime
) -> None:
    assert basic_app.square.remote(2) == 4  # warm a container
    plane = apothic_runtime.plane
    assert plane is not None and plane.store._committer is not None
    store, committer = plane.store, plane.store._committer
    real = store._db
    slow = _SlowDatabase(real, 0.5)
    store._db = committer._db = slow
    try:
        started = time.monotonic()
        assert basic_app.square.remote(3) == 9
        warm_s = time.monotonic() - started
        started = time.monotonic()
        job = basic_app.square.spawn(4)
        spawn_s = time.monotonic() - started
    finally:
        store._db = committer._db = real
    assert warm_s < 0.4, f"a warm remote() took {warm_s:.3f}s: it waited for the database"
    assert spawn_s >= 0.5, f"spawn() answered in {spawn_s:.3f}s, before its job could have committed"
    assert job.wait(timeout=30) == 16


def test_redeploy_makes_the_new_version_live(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("redeploy")
    by_name = apothic.RemoteFunction.from_name(name, "version", client=config)

    v1 = apothic.App(name, client=config)

    @v1.function(name="version")
    def version_one() -> int:
        return 1

    first_id = v1.deploy()
    assert by_name.remote() == 1

    v2 = apothic.App(name, client=config)

    @v2.function(name="version")
    def version_two() -> int:
        return 2

    second_id = v2.deploy()
    assert second_id != first_id
    assert by_name.remote() == 2
    assert version_two.remote() == 2
    v2.stop()


def test_stopped_deployment_refuses_calls(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("stopme")
    app = apothic.App(name, client=config)

    @app.function()
    def ping() -> str:
        return "pong"

    app.deploy()
    assert ping.remote() == "pong"
    app.stop()
    with pytest.raises((FailedPreconditionError, NotFoundError)) as by_handle:
        ping.remote()
    assert name in str(by_handle.value) or (app.deployment_id or "") in str(by_handle.value)
    with pytest.raises((FailedPreconditionError, NotFoundError)) as by_name:
        apothic.RemoteFunction.from_name(name, "ping", client=config).remote()
    assert name in str(by_name.value)
    with pytest.raises((FailedPreconditionError, NotFoundError)):
        ping.spawn()


async def test_concurrent_calls_all_complete(basic_app: ModuleType) -> None:
    results = await asyncio.gather(*(basic_app.square.aio.remote(i) for i in range(24)))
    assert results == [i * i for i in range(24)]
    jobs = await asyncio.gather(*(basic_app.square.aio.spawn(i) for i in range(8)))
    assert len({job.job_id for job in jobs}) == 8
    assert await asyncio.gather(*(job.aio.wait(timeout=30) for job in jobs)) == [i * i for i in range(8)]


async def test_max_containers_queues_calls_for_one_container(basic_app: ModuleType) -> None:
    pids = await asyncio.gather(*(basic_app.serial.aio.remote(0.05) for _ in range(5)))
    assert len(set(pids)) == 1


def test_cancel_a_queued_job(basic_app: ModuleType) -> None:
    running = basic_app.serial.spawn(1.5)
    wait_for(lambda: running.status() is apothic.JobStatus.RUNNING, timeout=30, what="the first job to run")
    queued = basic_app.serial.spawn(0)
    assert queued.status() is apothic.JobStatus.QUEUED
    assert queued.cancel() is apothic.JobStatus.CANCELLED
    with pytest.raises(JobCancelledError):
        queued.wait(timeout=30)
    assert isinstance(running.wait(timeout=30), int)
    assert queued.info().attempt == 0
    assert [e.kind for e in queued.watch(snapshot=False)] == ["job.queued", "job.end"]


def test_wait_with_a_timeout_leaves_the_job_running(basic_app: ModuleType) -> None:
    job = basic_app.slow_chatty.spawn(1, 1.0)
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.2)
    assert not job.status().is_final
    assert job.wait(timeout=30) == 1


def test_call_pinned_to_a_superseded_deployment_does_not_hang(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("supersede")
    v1 = apothic.App(name, client=config)

    @v1.function(name="work")
    def work_one(delay_s: float) -> int:
        time.sleep(delay_s)
        return 1

    v1.deploy()
    busy = work_one.spawn(1.0)
    wait_for(lambda: busy.status() is apothic.JobStatus.RUNNING, timeout=30, what="v1 to be busy")
    v2 = apothic.App(name, client=config)

    @v2.function(name="work")
    def work_two(delay_s: float) -> int:
        return 2

    v2.deploy()
    # v1's container is still busy while v1 retires; a call pinned to v1 must still end.
    pinned = work_one.spawn(0)
    assert busy.wait(timeout=30) == 1
    assert pinned.wait(timeout=30) == 1
    assert apothic.RemoteFunction.from_name(name, "work", client=config).remote(0) == 2
    v2.stop()
