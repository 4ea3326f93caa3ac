"""The schedule runner with a fake clock: once per tick, the latest missed tick only, no
second firing after a restart or from a second replica; and bad schedules at deploy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import cloudpickle
import pytest

import apothic
from apothic._client import get_client
from apothic._proto.v1 import app_service_pb2 as app_pb
from apothic._proto.v1 import types_pb2 as pb
from apothic._sync import run_sync
from apothic.exceptions import InvalidArgumentError
from apothic.runtime import LocalRuntime
from apothic.server.models import DeploymentRecord
from apothic.server.schedules import ScheduleRunner, latest_tick
from apothic.testing import unique_name


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.time = start

    def __call__(self) -> datetime:
        return self.time


@pytest.fixture(scope="module")
def runtime() -> Iterator[LocalRuntime]:
    """A runtime of its own, without workers (runs stay queued), whose own schedule
    runner is stopped: the tests drive runners by hand."""
    rt = LocalRuntime(db_url="mem://", workers=0).start()
    assert rt.plane is not None
    rt.run_coroutine(rt.plane.schedules.stop())
    try:
        yield rt
    finally:
        rt.stop()


def _deploy(runtime: LocalRuntime, schedule: apothic.Cron | apothic.Period) -> tuple[apothic.App, DeploymentRecord]:
    app = apothic.App(unique_name("sched"), client=runtime.config)

    @app.function(schedule=schedule)
    def tick() -> str:
        return "tick"

    app.deploy()
    assert runtime.plane is not None
    (dep,) = [d for d in runtime.plane.deployments.live() if d.deployment_id == app.deployment_id]
    return app, dep


def _runner(runtime: LocalRuntime, clock: FakeClock) -> ScheduleRunner:
    plane = runtime.plane
    assert plane is not None
    return ScheduleRunner(plane.deployments, plane.jobs, plane.store, now=clock)


def _runs(runtime: LocalRuntime, dep: DeploymentRecord) -> list[tuple[datetime, str]]:
    assert runtime.plane is not None
    return runtime.run_coroutine(runtime.plane.store.schedule_runs(dep.account, dep.deployment_id, "tick"))


def _jobs(runtime: LocalRuntime, app: apothic.App) -> list[apothic.JobInfo]:
    async def call() -> list[apothic.JobInfo]:
        return await get_client(runtime.config).list_jobs(app_name=app.name, limit=100)

    return run_sync(call(), "list jobs")


def test_period_fires_once_per_tick_and_only_the_latest_missed_tick(runtime: LocalRuntime) -> None:
    app, dep = _deploy(runtime, apothic.Period(seconds=60))
    start = dep.created_at
    clock = FakeClock(start + timedelta(seconds=59))
    runner = _runner(runtime, clock)
    runtime.run_coroutine(runner.run_once())
    assert _runs(runtime, dep) == [], "nothing fires before the first tick"

    clock.time = start + timedelta(seconds=60)
    runtime.run_coroutine(runner.run_once())
    runtime.run_coroutine(runner.run_once())
    assert [t for t, _ in _runs(runtime, dep)] == [start + timedelta(seconds=60)]

    # Ten minutes of missed ticks: only the latest fires, once.
    clock.time = start + timedelta(seconds=630)
    runtime.run_coroutine(runner.run_once())
    runs = _runs(runtime, dep)
    assert [t for t, _ in runs] == [start + timedelta(seconds=60), start + timedelta(seconds=600)]

    # Each run is an ordinary job of the app, called with no arguments.
    jobs = _jobs(runtime, app)
    assert sorted(j.job_id for j in jobs) == sorted(job for _, job in runs)
    assert {j.function_name for j in jobs} == {"tick"}
    assert runtime.plane is not None
    live = runtime.plane.jobs.live(runs[0][1])
    assert live is not None and cloudpickle.loads(live.record.args) == ((), {})
    app.stop()


def test_a_restarted_runner_does_not_fire_a_tick_again(runtime: LocalRuntime) -> None:
    app, dep = _deploy(runtime, apothic.Period(seconds=60))
    start = dep.created_at
    clock = FakeClock(start + timedelta(seconds=61))
    runtime.run_coroutine(_runner(runtime, clock).run_once())
    assert len(_runs(runtime, dep)) == 1

    # A fresh runner knows only the store, as after a control-plane restart within the tick.
    clock.time = start + timedelta(seconds=119)
    restarted = _runner(runtime, clock)
    runtime.run_coroutine(restarted.run_once())
    assert len(_runs(runtime, dep)) == 1
    clock.time = start + timedelta(seconds=120)
    runtime.run_coroutine(restarted.run_once())
    assert [t for t, _ in _runs(runtime, dep)] == [start + timedelta(seconds=60), start + timedelta(seconds=120)]
    assert len(_jobs(runtime, app)) == 2
    app.stop()


def test_two_replicas_fire_each_tick_once(runtime: LocalRuntime) -> None:
    app, dep = _deploy(runtime, apothic.Period(seconds=60))
    clock = FakeClock(dep.created_at + timedelta(seconds=30))
    first, second = _runner(runtime, clock), _runner(runtime, clock)
    runtime.run_coroutine(first.run_once())
    runtime.run_coroutine(second.run_once())  # both now know the deployment and its state
    for minutes in (1, 2, 3):
        clock.time = dep.created_at + timedelta(seconds=60 * minutes)
        # The second replica fires first on even minutes; the loser's write fails on the
        # database condition and creates nothing.
        order = (second, first) if minutes % 2 == 0 else (first, second)
        for runner in order:
            runtime.run_coroutine(runner.run_once())
    runs = _runs(runtime, dep)
    assert [t for t, _ in runs] == [dep.created_at + timedelta(seconds=60 * m) for m in (1, 2, 3)]
    assert len(_jobs(runtime, app)) == 3
    app.stop()


def test_cron_fires_at_its_wall_clock_times(runtime: LocalRuntime) -> None:
    app, dep = _deploy(runtime, apothic.Cron("0 9 * * *", timezone="Asia/Tokyo"))
    nine_jst = datetime.combine(dep.created_at.date() + timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    clock = FakeClock(nine_jst - timedelta(seconds=1))
    runner = _runner(runtime, clock)
    runtime.run_coroutine(runner.run_once())  # the tick one day earlier fires, as the latest missed one
    clock.time = nine_jst
    runtime.run_coroutine(runner.run_once())
    runtime.run_coroutine(runner.run_once())
    assert [t for t, _ in _runs(runtime, dep)] == [nine_jst - timedelta(days=1), nine_jst]
    app.stop()


def test_a_stopped_deployment_never_fires(runtime: LocalRuntime) -> None:
    app, dep = _deploy(runtime, apothic.Period(seconds=60))
    app.stop()
    runner = _runner(runtime, FakeClock(dep.created_at + timedelta(hours=1)))
    runtime.run_coroutine(runner.run_once())
    assert _runs(runtime, dep) == []
    assert _jobs(runtime, app) == []


def test_latest_tick_after_a_long_downtime_is_quick() -> None:
    every_minute = apothic.Cron("* * * * *")
    after = datetime(2020, 1, 1, tzinfo=UTC)
    now = datetime(2024, 6, 1, 12, 0, 30, tzinfo=UTC)
    assert latest_tick(every_minute, after, now, after) == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert latest_tick(every_minute, now, now, after) is None
    yearly = apothic.Cron("@yearly")
    assert latest_tick(yearly, after, now, after) == datetime(2024, 1, 1, tzinfo=UTC)
    assert latest_tick(yearly, datetime(2024, 1, 1, tzinfo=UTC), now, after) is None


def test_a_bad_schedule_from_another_client_is_refused_at_deploy(runtime: LocalRuntime) -> None:
    def spec(schedule: pb.Schedule) -> pb.FunctionSpec:
        return pb.FunctionSpec(name="tick", module="m", qualname="tick", timeout_s=10, schedule=schedule)

    async def deploy(schedule: pb.Schedule) -> None:
        client = get_client(runtime.config)
        request = app_pb.DeployAppRequest(app_name=unique_name("bad"), functions=[spec(schedule)])
        await client._unary(client._app.DeployApp, request)

    with pytest.raises(InvalidArgumentError, match="function 'tick': Cron expression '61 \\* \\* \\* \\*'"):
        run_sync(deploy(pb.Schedule(cron=pb.CronSchedule(expression="61 * * * *"))), "deploy")
    with pytest.raises(InvalidArgumentError, match="not a known IANA time zone"):
        run_sync(deploy(pb.Schedule(cron=pb.CronSchedule(expression="* * * * *", timezone="Nowhere/City"))), "deploy")
    with pytest.raises(InvalidArgumentError, match="Period must be longer than zero"):
        run_sync(deploy(pb.Schedule(period=pb.PeriodSchedule(seconds=0))), "deploy")
