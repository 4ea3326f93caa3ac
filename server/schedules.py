"""Schedules: runs each scheduled function of every live deployment once per tick.

Each run is an ordinary job with no arguments, created through ``JobManager.spawn``, so it
is listed, watched, retried and recovered like any other.

**At most once per tick.** A tick fires only inside the transaction that creates its
job: that transaction also advances the function's ``schedule`` row past the tick, and it
fails when the row already stands at or past it (``Store.schedule_fire_statements``).
So:

- a crash before the commit leaves nothing behind: the tick is still due after a restart;
- a crash after the commit leaves a durable job (re-queued by job recovery) and a row
  that says the tick fired: the restarted runner never fires it again;
- two control-plane replicas that both see the tick race on the same row: one commit
  wins, the other fails on the condition (or on the write conflict) and creates nothing.

**Missed ticks are not replayed.** After downtime (or a stalled loop) only the latest
missed tick fires, once; earlier missed ticks are skipped. A schedule whose deployment is
not live does not fire at all.

A :class:`~apothic.Period`'s ticks count from its deployment's creation time; a
:class:`~apothic.Cron`'s come from its expression and time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from apothic import _serialization as ser
from apothic.exceptions import InvalidConfigError
from apothic.schedules import Cron, Period
from apothic.server.deployments import validate_name
from apothic.server.errors import NotFound
from apothic.server.models import DEPLOYMENT_LIVE, DeploymentRecord, FunctionSpecRecord, utcnow
from apothic.server.store import Store

if TYPE_CHECKING:
    from apothic.server.deployments import DeploymentManager
    from apothic.server.jobs import JobManager, LiveJob

log = logging.getLogger("apothic.server.schedules")

#: What a scheduled run is called with: no arguments.
NO_ARGS = ser.dumps_args((), {})
#: Longest the runner sleeps before looking for new deployments again.
POLL_INTERVAL_S = 1.0
#: Seconds before a tick whose job could not be created is tried again.
RETRY_AFTER_S = 1.0
#: Windows searched, smallest first, for the latest cron tick before now.
_CRON_REACH = tuple(timedelta(days=d) for d in (2 / 1440, 2 / 24, 2, 62, 2 * 366, 10 * 366))


def latest_tick(schedule: Cron | Period, after: datetime, now: datetime, anchor: datetime) -> datetime | None:
    """The latest tick in ``(after, now]``, or None when there is none.

    Args:
        schedule: the schedule.
        after: the last tick that fired (or the deployment's creation time).
        now: the current time.
        anchor: where a Period's ticks count from.
    """
    if isinstance(schedule, Period):
        tick = schedule.latest_at_or_before(now, anchor=anchor)
        return tick if tick is not None and tick > after else None
    for reach in _CRON_REACH:
        # Search a small window first so a long downtime does not walk every tick.
        start = max(after, now - reach)
        tick = schedule.next_after(start)
        if tick <= now:
            while (later := schedule.next_after(tick)) <= now:
                tick = later
            return tick
        if start == after:
            return None
    return None


def next_tick(schedule: Cron | Period, after: datetime, anchor: datetime) -> datetime:
    """The first tick strictly after ``after``."""
    if isinstance(schedule, Period):
        return schedule.next_after(after, anchor=anchor)
    return schedule.next_after(after)


def _schedule_of(dep: DeploymentRecord, spec: FunctionSpecRecord) -> Cron | Period | None:
    """A spec's schedule; one that no longer parses (a time zone gone from this host) is
    logged and treated as none."""
    try:
        return spec.schedule()
    except InvalidConfigError as exc:
        log.error(
            "the schedule of %s.%s (%s) is invalid and never fires: %s", dep.app_name, spec.name, dep.deployment_id, exc
        )
        return None


@dataclass
class _Slot:
    """One scheduled function of one live deployment, as the runner tracks it."""

    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    schedule: Cron | Period
    #: The last tick that fired, or the deployment's creation time before the first.
    last_tick: datetime
    last_job: str
    #: When the runner next looks at this slot.
    due: datetime


@dataclass(frozen=True)
class ScheduleView:
    """A scheduled function as ``ListSchedules`` shows it."""

    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    schedule: Cron | Period
    next_run_at: datetime
    last_run_at: datetime | None
    last_job_id: str


class ScheduleRunner:
    """Fires scheduled functions; owned by the control plane (``start``/``stop``).

    Args:
        deployments: where live deployments come from.
        jobs: creates each run's job.
        store: the durable record of fired ticks.
        now: the clock. Tests pass a fake one and call :meth:`run_once` themselves; the
            loop started by :meth:`start` sleeps in real time.
    """

    def __init__(
        self,
        deployments: DeploymentManager,
        jobs: JobManager,
        store: Store,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.deployments = deployments
        self.jobs = jobs
        self.store = store
        self.now = now
        #: Longest sleep between passes; new deployments are noticed within it.
        self.poll_interval_s = POLL_INTERVAL_S
        #: Seconds before a tick whose job could not be created is tried again.
        self.retry_after_s = RETRY_AFTER_S
        self._slots: dict[tuple[str, str], _Slot] = {}
        #: Live deployments already looked at (with or without schedules).
        self._known: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the loop."""
        self._task = asyncio.create_task(self._run(), name="apothic-schedules")

    async def stop(self) -> None:
        """Stops the loop; a tick being fired finishes or rolls back as a whole."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(await self.run_once())
        except asyncio.CancelledError:
            log.debug("schedule runner stopped")
            raise
        except Exception:  # pragma: no cover - a bug here must be loud
            log.exception("schedule runner died; scheduled functions no longer fire")
            raise

    # -- one pass ----------------------------------------------------------------------

    async def run_once(self) -> float:
        """Fires every due tick; returns the seconds until the next pass is needed."""
        now = self.now()
        await self._sync(now)
        for slot in list(self._slots.values()):
            if slot.due <= now and not self.jobs.closing:
                await self._fire(slot, now)
        if not self._slots:
            return self.poll_interval_s
        soonest = min(slot.due for slot in self._slots.values())
        return min(self.poll_interval_s, max(0.005, (soonest - self.now()).total_seconds()))

    async def _sync(self, now: datetime) -> None:
        """Tracks newly live deployments' scheduled functions and forgets ended ones."""
        live = {dep.deployment_id: dep for dep in self.deployments.live() if dep.status == DEPLOYMENT_LIVE}
        for key in [k for k in self._slots if k[0] not in live]:
            del self._slots[key]
        self._known.intersection_update(live)
        for dep_id, dep in live.items():
            if dep_id in self._known:
                continue
            scheduled = [(spec, _schedule_of(dep, spec)) for spec in dep.functions]
            if any(schedule is not None for _, schedule in scheduled):
                try:
                    states = await self.store.schedule_states(dep.account, dep_id)
                except Exception as exc:
                    log.warning("could not read the schedules of deployment %s (will retry): %s", dep_id, exc)
                    continue
                for spec, schedule in scheduled:
                    if schedule is None:
                        continue
                    last_tick, last_job = states.get(spec.name, (dep.created_at, ""))
                    slot = _Slot(dep, spec, schedule, last_tick, last_job, due=now)
                    slot.due = self._due(slot, now)
                    self._slots[(dep_id, spec.name)] = slot
                    log.info(
                        "scheduled %s.%s (%s): next run at %s",
                        dep.app_name,
                        spec.name,
                        schedule.describe(),
                        slot.due.isoformat(),
                    )
            self._known.add(dep_id)

    def _due(self, slot: _Slot, now: datetime) -> datetime:
        """When the slot next needs a look: now when a tick is overdue, else its next tick."""
        if latest_tick(slot.schedule, slot.last_tick, now, slot.deployment.created_at) is not None:
            return now
        return next_tick(slot.schedule, max(slot.last_tick, now), slot.deployment.created_at)

    async def _fire(self, slot: _Slot, now: datetime) -> None:
        dep, spec = slot.deployment, slot.spec
        if dep.status != DEPLOYMENT_LIVE:  # stopped since this pass began
            return
        tick = latest_tick(slot.schedule, slot.last_tick, now, dep.created_at)
        if tick is None:
            slot.due = self._due(slot, now)
            return

        def mark_fired(jobs: list[LiveJob]) -> list[Any]:
            return self.store.schedule_fire_statements(
                dep.account, dep.deployment_id, spec.name, tick, jobs[0].job_id, now
            )

        try:
            job = await self.jobs.spawn(
                dep.account, dep, spec, ser.CLOUDPICKLE, NO_ARGS, ser.CLOUDPICKLE, also=mark_fired
            )
        except Exception as exc:
            if not Store.is_tick_taken(exc):
                log.warning(
                    "scheduled run of %s.%s for %s could not start (retrying in %gs): %s",
                    dep.app_name,
                    spec.name,
                    tick.isoformat(),
                    self.retry_after_s,
                    exc,
                )
                slot.due = now + timedelta(seconds=self.retry_after_s)
                return
            # Another replica, or an earlier attempt whose answer was lost, fired it.
            log.info("tick %s of %s.%s had already fired", tick.isoformat(), dep.app_name, spec.name)
            with contextlib.suppress(Exception):
                stored = await self.store.schedule_states(dep.account, dep.deployment_id)
                slot.last_tick, slot.last_job = stored.get(spec.name, (tick, slot.last_job))
            slot.last_tick = max(slot.last_tick, tick)
        else:
            log.debug("fired %s.%s for %s as %s", dep.app_name, spec.name, tick.isoformat(), job.job_id)
            slot.last_tick, slot.last_job = tick, job.job_id
        slot.due = self._due(slot, now)

    # -- queries -----------------------------------------------------------------------

    async def list_schedules(self, account: str, app_name: str = "") -> list[ScheduleView]:
        """The scheduled functions of this account's live deployments (one app's when named).

        Raises:
            InvalidArgument: ``app_name`` is malformed.
            NotFound: no app of that name exists.
        """
        if app_name:
            validate_name("app", app_name)
            if not any(app.name == app_name for app, _ in await self.deployments.list_apps(account)):
                raise NotFound(f"app {app_name!r} not found")
        now = self.now()
        views = []
        for dep in self.deployments.live():
            if dep.account != account or (app_name and dep.app_name != app_name):
                continue
            for spec in dep.functions:
                schedule = _schedule_of(dep, spec)
                if schedule is None:
                    continue
                slot = self._slots.get((dep.deployment_id, spec.name))
                last_tick = slot.last_tick if slot is not None else dep.created_at
                last_job = slot.last_job if slot is not None else ""
                views.append(
                    ScheduleView(
                        deployment=dep,
                        spec=spec,
                        schedule=schedule,
                        next_run_at=next_tick(schedule, max(last_tick, now), dep.created_at),
                        last_run_at=last_tick if last_job else None,
                        last_job_id=last_job,
                    )
                )
        views.sort(key=lambda v: (v.deployment.app_name, v.spec.name))
        return views
