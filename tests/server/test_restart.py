"""Durability across a control-plane restart, on the embedded ``surrealkv://`` store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import apothic
from apothic.exceptions import NotFoundError
from apothic.runtime import LocalRuntime
from apothic.server.server import StateDirLocked
from apothic.testing import unique_name, wait_for


def _durable_runtime(state_dir: Path, *, workers: int, api_key: str | None = None) -> LocalRuntime:
    return LocalRuntime(db_url="", state_dir=state_dir, workers=workers, api_key=api_key).start()


def test_acknowledged_job_and_deployments_survive_a_restart(tmp_path: Path) -> None:
    # No worker yet: the job can only be queued, so all that keeps it is its durable record.
    first = _durable_runtime(tmp_path, workers=0)
    try:
        app = apothic.App(unique_name("durable"), client=first.config)

        @app.function()
        def double(x: int) -> int:
            print(f"doubling {x}")
            return 2 * x

        @app.function()
        def noop() -> None:
            return None

        app.deploy()
        stopped = apothic.App(unique_name("stopped"), client=first.config)

        @stopped.function()
        def never() -> None:
            return None

        stopped.deploy()
        stopped.stop()
        job = double.spawn(21)
        assert job.status() is apothic.JobStatus.QUEUED
    finally:
        first.stop()

    second = _durable_runtime(tmp_path, workers=1, api_key=first.api_key)
    try:
        assert second.api_key == first.api_key, "the key issued before the restart must stay valid"
        config = second.config
        again = apothic.Job.from_id(job.job_id, client=config)
        assert again.wait(timeout=60) == 42
        assert again.status() is apothic.JobStatus.SUCCEEDED
        assert "doubling 21" in again.logs()
        events = list(again.watch(snapshot=False))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        kinds = [e.kind for e in events]
        assert kinds[0] == "job.queued" and kinds[-2:] == ["job.result", "job.end"]
        assert kinds.count("job.queued") == 1 and kinds.count("job.end") == 1

        # The live deployment answers calls by name; the stopped one stays stopped.
        assert apothic.RemoteFunction.from_name(app.name, "double", client=config).remote(5) == 10
        assert apothic.RemoteFunction.from_name(app.name, "noop", client=config).remote() is None
        with pytest.raises(NotFoundError, match=stopped.name):
            apothic.RemoteFunction.from_name(stopped.name, "never", client=config).remote()
    finally:
        second.stop()


def test_running_job_is_requeued_after_a_restart(tmp_path: Path) -> None:
    first = _durable_runtime(tmp_path, workers=1)
    try:
        app = apothic.App(unique_name("inflight"), client=first.config)

        @app.function(timeout_s=60)
        def slow(x: int) -> int:
            print(f"attempt for {x}", flush=True)
            time.sleep(1.0)  # still running when the runtime stops
            return x + 1

        app.deploy()
        finished = slow.spawn(0)
        assert finished.wait(timeout=30) == 1
        called = list(slow.remote_events(10))  # an invoke-style job, recorded behind its result
        job = slow.spawn(1)
        wait_for(lambda: "attempt for 1" in job.logs(), timeout=30, what="the attempt to start")
    finally:
        first.stop()

    second = _durable_runtime(tmp_path, workers=1, api_key=first.api_key)
    try:
        again = apothic.Job.from_id(job.job_id, client=second.config)
        assert again.wait(timeout=60) == 2
        info = again.info()
        assert info.status is apothic.JobStatus.SUCCEEDED
        assert info.attempt == 2
        events = list(again.watch(snapshot=False))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        kinds = [e.kind for e in events]
        assert kinds.count("job.end") == 1 and kinds.count("job.running") == 2
        logs = again.logs()
        assert logs.count("attempt for 1") == 2, "output of the lost attempt is kept"
        assert "control plane restarted" in logs

        # Jobs that ended before the restart are read back from the store, whole.
        for ended_id, value in ((finished.job_id, 1), (called[0].job_id, 11)):
            ended = apothic.Job.from_id(ended_id, client=second.config)
            assert ended.wait(timeout=5) == value
            replay = list(ended.watch(snapshot=False))
            assert [e.seq for e in replay] == list(range(1, len(replay) + 1))
            assert [e.kind for e in replay][-2:] == ["job.result", "job.end"]
            assert "attempt for" in ended.logs()
    finally:
        second.stop()


def test_second_control_plane_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first = _durable_runtime(tmp_path, workers=0)
    try:
        with pytest.raises(StateDirLocked, match=str(tmp_path)):
            LocalRuntime(db_url="", state_dir=tmp_path, workers=0).start()
        # The refused one did not disturb the running one.
        app = apothic.App(unique_name("locked"), client=first.config)

        @app.function()
        def noop() -> None:
            return None

        assert app.deploy().startswith("deployments:")
    finally:
        first.stop()
    # Once the first is gone, the directory is free again.
    _durable_runtime(tmp_path, workers=0).stop()
