"""Scheduled functions on the real runtime: they fire while deployed, their runs are
ordinary jobs, they stop with the deployment, and a restart never fires a tick twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import apothic
from apothic._client import get_client
from apothic._sync import run_sync
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


def _jobs(config: apothic.ClientConfig, app_name: str) -> list[apothic.JobInfo]:
    async def call() -> list[apothic.JobInfo]:
        return await get_client(config).list_jobs(app_name=app_name, limit=500)

    return run_sync(call(), "list jobs")


def _runs(runtime: LocalRuntime, deployment_id: str, function: str) -> list[tuple[datetime, str]]:
    assert runtime.plane is not None
    account = next(d.account for d in runtime.plane.deployments.live() if d.deployment_id == deployment_id)
    return runtime.run_coroutine(runtime.plane.store.schedule_runs(account, deployment_id, function))


def test_period_fires_while_deployed_and_stops_with_the_deployment(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    app = apothic.App(unique_name("every-second"), client=config)

    @app.function(schedule=apothic.Period(seconds=1))
    def beat() -> str:
        print("beat")
        return "beat"

    @app.function(schedule=apothic.Cron("0 0 1 1 *", timezone="Europe/Paris"))
    def new_year() -> None:
        return None

    @app.function()
    def unscheduled() -> None:
        return None

    app.deploy()
    try:
        schedules = {s.function_name: s for s in app.schedules()}
        assert set(schedules) == {"beat", "new_year"}
        beat_info, year_info = schedules["beat"], schedules["new_year"]
        assert beat_info.schedule == "every 1s" and beat_info.period_s == 1.0 and beat_info.cron == ""
        assert beat_info.deployment_id == app.deployment_id
        now = datetime.now(UTC)
        assert beat_info.next_run_at is not None and now - timedelta(seconds=1) < beat_info.next_run_at
        assert beat_info.next_run_at <= now + timedelta(seconds=1)
        assert year_info.cron == "0 0 1 1 *" and year_info.timezone == "Europe/Paris"
        assert year_info.next_run_at is not None and year_info.next_run_at.astimezone().year >= now.year
        assert year_info.last_job_id == "" and year_info.last_run_at is None

        jobs = wait_for(lambda: (j := _jobs(config, app.name)) and len(j) >= 3 and j, timeout=15, what="3 runs")
        assert {j.function_name for j in jobs} == {"beat"}
        for job in jobs:
            assert apothic.Job(job.job_id, client=config).wait(timeout=30) == "beat"
        last = wait_for(lambda: (s := app.schedules()[0]).last_job_id and s, timeout=5, what="a last run")
        assert last.last_job_id in {j.job_id for j in _jobs(config, app.name)}
        assert last.last_run_at is not None
    finally:
        app.stop()

    assert app.schedules() == []
    stopped_with = len(_jobs(config, app.name))
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(_jobs(config, app.name)) > stopped_with, timeout=2.5, what="a run after stop")


def test_a_restart_never_fires_a_tick_twice(tmp_path: Path) -> None:
    first = LocalRuntime(db_url="", state_dir=tmp_path, workers=1).start()
    try:
        app = apothic.App(unique_name("durable-schedule"), client=first.config)

        @app.function(schedule=apothic.Period(seconds=1))
        def beat() -> str:
            return "beat"

        deployment_id = app.deploy()
        wait_for(lambda: len(_runs(first, deployment_id, "beat")) >= 2, timeout=15, what="2 runs")
        assert first.plane is not None
        created = next(d.created_at for d in first.plane.deployments.live() if d.deployment_id == deployment_id)
    finally:
        first.stop()
    stopped_at = datetime.now(UTC)

    second = LocalRuntime(db_url="", state_dir=tmp_path, workers=1, api_key=first.api_key).start()
    try:
        before = len(_runs(second, deployment_id, "beat"))
        wait_for(lambda: len(_runs(second, deployment_id, "beat")) >= before + 2, timeout=15, what="2 more runs")
        runs = _runs(second, deployment_id, "beat")
        ticks = [tick for tick, _ in runs]
        # Every tick fired once, on the deployment's one-second grid, each with its own job.
        assert ticks == sorted(set(ticks))
        assert all((tick - created) % timedelta(seconds=1) == timedelta(0) for tick in ticks)
        job_ids = [job for _, job in runs]
        assert len(set(job_ids)) == len(job_ids)
        listed = _jobs(second.config, app.name)
        assert sorted(j.job_id for j in listed) == sorted(job_ids), "every run is a job, and every job a run"
        # Ticks missed while down were not replayed: at most the latest one fired.
        assert len([tick for tick in ticks[before:] if tick <= stopped_at]) <= 1
        for job_id in job_ids:
            assert apothic.Job(job_id, client=second.config).wait(timeout=30) == "beat"
    finally:
        second.stop()
