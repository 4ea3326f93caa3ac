"""Jobs: the state machine, the gap-free event log, waits and watches.

A job lives in memory while it is active (and a while after) and in the store as its
durable record. ``spawn`` answers only after the job committed; ``invoke`` (a warm
``remote()``) answers with the result itself and writes the record behind it.

Events are numbered as they happen and written behind, coalesced; waiting callers get
results before they are durable. Watchers (WatchJob, WatchApp) see an event only once it
committed: after a crash the log continues from the last committed seq, so a seq a watcher
saw always names the same event and a watch resumes after it with no gap or repeat. While a
job or its app is watched its changes are written at once (still batched per turn of the
event loop), so watchers trail the job by one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from apothic._container.request_trail import is_request_job_id
from apothic.server import ids
from apothic.server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from apothic.server.hub import Signal, Topics
from apothic.server.maps import MapCall
from apothic.server.models import (
    FINAL_JOB_STATUSES,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_TIMED_OUT,
    DeploymentRecord,
    Event,
    FunctionSpecRecord,
    JobRecord,
    utcnow,
)
from apothic.server.watch import ChangeLog, Progress, SnapshotEnd, WatchItem, WatchSettings, watch

if TYPE_CHECKING:
    from apothic.server.scheduler import Scheduler
    from apothic.server.store import Store

log = logging.getLogger("apothic.server.jobs")

#: Output kept per job; beyond it a notice is logged and the rest dropped.
LOG_LIMIT_BYTES = 1024 * 1024
#: Unpersisted events that make an active job flush its event log early.
FLUSH_EVERY_EVENTS = 64
#: Seconds an ended job stays in memory for fast waits and watches.
RETAIN_ENDED_S = 30.0
#: The same for the job of a web service's request (the store has it soon after it ends).
RETAIN_ENDED_REQUEST_S = 5.0
#: How long a lookup of a web request's job waits for the worker's report of it (the
#: container and the worker each hold it back up to 50 ms to batch it).
REQUEST_ARRIVAL_S = 1.0
#: How far a worker's clock may be from ours before its request times are ignored.
MAX_CLOCK_SKEW_S = 60.0
#: Ended request jobs are written together at most this long after they end, so a busy
#: service costs one write per batch of requests rather than one per request.
REQUEST_WRITE_DELAY_S = 0.1
#: Longest request id a spawn may carry.
MAX_REQUEST_ID_CHARS = 128
#: Longest a WaitJob call may wait.
MAX_WAIT_S = 300.0

#: What a job watch yields: ``(None, record)`` for the snapshot, ``(event, record)`` for an
#: event, and the markers.
JobWatchItem: TypeAlias = tuple[Event | None, JobRecord] | SnapshotEnd | Progress


@dataclass(eq=False)
class LiveJob:
    """A job the control plane is working on."""

    record: JobRecord
    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    durable: bool
    events: list[Event] = field(default_factory=list)
    persisted: int = 0
    record_dirty: bool = True
    #: The store has the whole record (arguments included); later writes update it.
    record_stored: bool = False
    log_bytes: int = 0
    log_truncated: bool = False
    #: Every event up to this seq has committed; watchers see only those.
    durable_seq: int = 0
    #: A copy of the record as of some committed seq (see :meth:`JobManager._durable_view`).
    durable_record: JobRecord | None = None
    #: Open WatchJob streams; while there are any, every change is written at once.
    watchers: int = 0
    #: Fires when more events committed.
    changed: Signal = field(default_factory=Signal)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    container_id: str = ""
    handler: JobManager | None = None
    #: Receives a generator's items as they come, while a caller streams them.
    item_sink: Callable[[str, bytes], None] | None = None
    yielded_items: int = 0
    #: Set for the job of a map: its items run instead of the job itself.
    map_call: MapCall | None = None
    prefetchable: bool = False
    #: The job of an HTTP request a web service answered: it runs on no input slot, is
    #: never retried, and ends with the response (see :meth:`JobManager.service_request`).
    service_request: bool = False

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def input_id(self) -> str:
        return self.record.job_id

    @property
    def args_format(self) -> str:
        return self.record.args_format

    @property
    def args(self) -> bytes:
        return self.record.args

    @property
    def result_format(self) -> str:
        return self.record.result_format

    @property
    def final(self) -> bool:
        return self.record.status in FINAL_JOB_STATUSES


class JobManager:
    """Owns every active job. The scheduler reports progress through the WorkHandler methods
    (``started``, ``log``, ``yielded``, ``ended``); retries are decided here."""

    def __init__(self, store: Store, *, watch: WatchSettings | None = None) -> None:
        self.store = store
        self.scheduler: Scheduler | None = None
        self._live: dict[str, LiveJob] = {}
        self.watch_settings = watch or WatchSettings()
        #: Committed ``(event, job record)`` pairs per ``account/app``, for WatchApp.
        self.app_topics: Topics[tuple[Event, JobRecord]] = Topics(self.watch_settings)
        self._evictions: dict[str, asyncio.TimerHandle] = {}
        #: Jobs with changes to write at the end of this turn of the event loop.
        self._dirty: dict[str, LiveJob] = {}
        #: Ended request jobs to write within REQUEST_WRITE_DELAY_S, and its timer.
        self._ended_requests: dict[str, LiveJob] = {}
        self._requests_timer: asyncio.TimerHandle | None = None
        #: Set once the control plane is shutting down (see :meth:`close`).
        self.closing = False

    def configure_watch(self, settings: WatchSettings) -> None:
        """Sets how job and app watches report progress and how many events an app watch
        retains for a slow watcher (watches opened later use it)."""
        self.watch_settings = settings
        self.app_topics.settings = settings

    # -- creation --------------------------------------------------------------------

    def _new(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args: bytes,
        result_format: str,
        *,
        durable: bool,
        job_id: str = "",
        queued: bool = True,
    ) -> LiveJob:
        now = utcnow()
        record = JobRecord(
            job_id=job_id or ids.new_id("jobs"),
            account=account,
            app_name=dep.app_name,
            function_name=spec.name,
            deployment_id=dep.deployment_id,
            status=JOB_QUEUED,
            attempt=0,
            reason="",
            args_format=args_format,
            args=args,
            result_format=result_format,
            result=None,
            created_at=now,
        )
        job = LiveJob(record=record, deployment=dep, spec=spec, durable=durable, handler=self)
        self._live[record.job_id] = job
        if queued:
            self._append(job, "job.queued", {})
        return job

    async def invoke(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args: bytes,
        result_format: str,
    ) -> LiveJob:
        """Runs a job and waits for it; its record is written behind."""
        assert self.scheduler is not None
        self.scheduler.check_capacity(dep, spec, 1)
        job = self._new(account, dep, spec, args_format, args, result_format, durable=False)
        self.scheduler.submit(job)
        try:
            await job.done.wait()
        except asyncio.CancelledError:
            if not job.final:
                self.cancel(job, "the caller went away before the call finished")
            raise
        return job

    def service_request(
        self,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        job_id: str,
        request: dict[str, str],
        worker_id: str,
        container_id: str,
        started_at: float,
    ) -> LiveJob:
        """Records an HTTP request a web service container is answering as a running job of
        its function (arguments: ``request`` as JSON; it was never queued, so its first
        event is ``job.running``), created and started at ``started_at``
        (the worker's clock, seconds since the epoch; now when it is off by over a minute);
        written behind like a warm call's."""
        args = json.dumps(request).encode()
        job = self._new(dep.account, dep, spec, "json", args, "json", durable=False, job_id=job_id, queued=False)
        job.service_request = True
        self.started(job, worker_id, container_id)
        began = datetime.fromtimestamp(started_at, UTC)
        if abs((job.record.created_at - began).total_seconds()) <= MAX_CLOCK_SKEW_S:
            job.record.created_at = job.record.started_at = began
        return job

    async def spawn(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args: bytes,
        result_format: str,
        *,
        also: Callable[[list[LiveJob]], list[Any]] | None = None,
    ) -> LiveJob:
        """Creates a job, commits it, then queues it; returns once it is durable.

        ``also`` builds more statements from the new job, committed in the same
        transaction (a schedule's tick fires only if its job is created).
        """
        return (await self.spawn_many(account, dep, spec, args_format, [args], result_format, also=also))[0]

    async def spawn_many(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args_list: list[bytes],
        result_format: str,
        *,
        also: Callable[[list[LiveJob]], list[Any]] | None = None,
        job_ids: list[str] | None = None,
    ) -> list[LiveJob]:
        """Creates one job per input, commits them together, then queues them.

        Raises:
            ResourceExhausted: the inputs would exceed the function's max_pending_tasks
                (nothing is created).
        """
        assert self.scheduler is not None
        self.scheduler.check_capacity(dep, spec, len(args_list))
        jobs = [
            self._new(
                account, dep, spec, args_format, args, result_format, durable=True, job_id=job_ids[i] if job_ids else ""
            )
            for i, args in enumerate(args_list)
        ]
        try:
            extra = also(jobs) if also is not None else []
            stmts = self._flush_statements(jobs)
            covered = self._covered(jobs)
            await self.store.commit(stmts + extra)
        except BaseException:
            for job in jobs:
                self._live.pop(job.job_id, None)
                job.changed.fire()  # a retry waiting on this attempt tries again
            raise
        self._committed(covered)
        for job in jobs:
            self.scheduler.submit(job)
        return jobs

    async def spawn_once(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args_list: list[bytes],
        result_format: str,
        request_id: str,
    ) -> list[str]:
        """:meth:`spawn_many` for a request with an id: the jobs' ids derive from it, so a
        retry (after a lost answer or a control-plane restart) answers the jobs the first
        attempt created and creates none.

        Returns:
            The jobs' ids, in input order.
        """
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument(f"a request id is at most {MAX_REQUEST_ID_CHARS} characters")
        job_ids = [ids.derived_id("jobs", f"{account}/{request_id}/{i}") for i in range(len(args_list))]
        first = job_ids[0]
        while (job := self._live.get(first)) is not None:
            if job.durable_seq > 0:
                return job_ids  # committed (the attempt's jobs commit together)
            waiter = job.changed.waiter()  # the first attempt is still committing
            await waiter.wait()
        if await self.store.get_job(first) is not None:
            return job_ids
        jobs = await self.spawn_many(account, dep, spec, args_format, args_list, result_format, job_ids=job_ids)
        return [job.job_id for job in jobs]

    def open_map(
        self, account: str, dep: DeploymentRecord, spec: FunctionSpecRecord, args_format: str, result_format: str
    ) -> MapCall:
        """Starts a map: one job whose inputs arrive later as items."""
        assert self.scheduler is not None
        job = self._new(account, dep, spec, args_format, b"", result_format, durable=False)
        call = MapCall(
            jobs=self, scheduler=self.scheduler, job=job, args_format=args_format, result_format=result_format
        )
        job.map_call = call
        return call

    async def invoke_stream(
        self,
        account: str,
        dep: DeploymentRecord,
        spec: FunctionSpecRecord,
        args_format: str,
        args: bytes,
        result_format: str,
    ) -> AsyncIterator[tuple[str, bytes] | LiveJob]:
        """Runs a generator job, yielding ``(format, data)`` items as they come, then the
        ended job itself."""
        assert self.scheduler is not None
        self.scheduler.check_capacity(dep, spec, 1)
        job = self._new(account, dep, spec, args_format, args, result_format, durable=False)
        items: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        job.item_sink = lambda fmt, data: items.put_nowait((fmt, data))
        self.scheduler.submit(job)
        done = asyncio.ensure_future(job.done.wait())
        getter: asyncio.Future[tuple[str, bytes]] | None = None
        try:
            while True:
                while not items.empty():
                    yield items.get_nowait()
                if done.done():
                    break
                getter = asyncio.ensure_future(items.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not items.empty():
                yield items.get_nowait()
            yield job
        finally:
            done.cancel()
            if getter is not None:
                getter.cancel()  # the caller went away mid-wait: no task left pending on the queue
            job.item_sink = None
            if not job.final:
                self.cancel(job, "the caller went away before the generator finished")

    def adopt(self, record: JobRecord, dep: DeploymentRecord, spec: FunctionSpecRecord, events: list[Event]) -> LiveJob:
        """Takes back an unfinished job found in the store after a restart and re-queues it."""
        job = LiveJob(
            record=record,
            deployment=dep,
            spec=spec,
            durable=True,
            events=events,
            persisted=len(events),
            handler=self,
            record_stored=True,
        )
        record.last_seq = max([record.last_seq, *(e.seq for e in events)])
        # What the store holds is what watchers may see; the log goes on from there.
        job.durable_seq = record.last_seq
        self._live[record.job_id] = job
        if record.status == JOB_RUNNING:
            self._append(
                job,
                "job.log",
                {"stream": "system", "data": f"attempt {record.attempt} was lost: the control plane restarted\n"},
            )
        record.status = JOB_QUEUED
        job.record_dirty = True
        self._flush(job)
        assert self.scheduler is not None
        self.scheduler.submit(job)
        return job

    # -- events ----------------------------------------------------------------------

    def _append(self, job: LiveJob, kind: str, data: dict[str, Any]) -> Event:
        rec = job.record
        rec.last_seq += 1
        event = Event(rec.job_id, rec.last_seq, utcnow(), kind, data)
        job.events.append(event)
        if job.watchers or self.app_topics.watched(f"{rec.account}/{rec.app_name}"):
            self._flush(job)  # watchers see it once it committed: write it now
        return event

    def _flush_statements(self, jobs: list[LiveJob]) -> list[Any]:
        """Statements that store what changed in these jobs since they were last written:
        new records, progress of stored ones, and new events, one statement each."""
        new: list[JobRecord] = []
        progress: list[JobRecord] = []
        events: list[tuple[str, Event]] = []
        for job in jobs:
            if job.record_dirty:
                (progress if job.record_stored else new).append(job.record)
                job.record_stored = True
                job.record_dirty = False
            if job.persisted < len(job.events):
                account = job.record.account
                events += [(account, e) for e in job.events[job.persisted :]]
                job.persisted = len(job.events)
        return (
            self.store.insert_jobs_statements(new)
            + self.store.job_progress_statements(progress)
            + self.store.job_event_statements(events)
        )

    def _flush(self, job: LiveJob) -> None:
        """Writes the job's changes behind, together with every other job changed in this
        turn of the event loop."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        self._dirty[job.job_id] = job

    def _flush_request(self, job: LiveJob) -> None:
        """Writes an ended request's job with the others that end within
        REQUEST_WRITE_DELAY_S (a watched one is written at once all the same)."""
        self._ended_requests[job.job_id] = job
        if self._requests_timer is None:
            self._requests_timer = asyncio.get_running_loop().call_later(REQUEST_WRITE_DELAY_S, self._flush_requests)

    def _flush_requests(self) -> None:
        self._requests_timer = None
        for job in self._ended_requests.values():
            self._flush(job)
        self._ended_requests.clear()

    def _flush_pending(self, job: LiveJob) -> None:
        """Writes the job's changes now when some are not written yet."""
        if job.record_dirty or job.persisted < len(job.events):
            self._flush(job)

    def _flush_dirty(self) -> None:
        jobs = list(self._dirty.values())
        self._dirty.clear()
        stmts = self._flush_statements(jobs)
        if stmts:
            done = self.store.write_jobs_behind(stmts)
            done.add_done_callback(functools.partial(self._written, self._covered(jobs)))

    @staticmethod
    def _covered(jobs: list[LiveJob]) -> list[tuple[LiveJob, int, JobRecord | None]]:
        """What a write of these jobs' statements covers: each job's last seq, and a copy of
        its record as of that seq when a watcher may need it for a snapshot."""
        return [(job, job.record.last_seq, copy.copy(job.record) if job.watchers else None) for job in jobs]

    def _written(self, covered: list[tuple[LiveJob, int, JobRecord | None]], done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            # Nothing retries a failed write; holding the events back would stall their
            # watchers for good, so they are shown anyway (and the failure is loud).
            log.error(
                "job events up to %s did not commit: %s", [(j.job_id, s) for j, s, _ in covered], done.exception()
            )
        self._committed(covered)

    def _committed(self, covered: list[tuple[LiveJob, int, JobRecord | None]]) -> None:
        """Shows newly committed events to the jobs' watchers and their apps' watchers."""
        for job, seq, record in covered:
            if self._live.get(job.job_id) is not job:
                continue  # its spawn did not commit after all (or it was evicted long ago)
            if record is not None:
                job.durable_record = record  # a snapshot may be waiting for it
            elif seq <= job.durable_seq:
                continue
            if seq > job.durable_seq:
                before, job.durable_seq = job.durable_seq, seq
                rec = job.record
                topic = f"{rec.account}/{rec.app_name}"
                if self.app_topics.watched(topic):
                    events = _between(job, before, seq)
                    if events:
                        self.app_topics.publish(topic, [(event, rec) for event in events])
            job.changed.fire()

    # -- the scheduler's reports (WorkHandler) -----------------------------------------

    def started(self, job: LiveJob, worker_id: str, container_id: str) -> int:
        """Starts a new attempt; returns its number."""
        rec = job.record
        rec.attempt += 1
        rec.status = JOB_RUNNING
        rec.started_at = utcnow()
        job.record_dirty = True
        job.container_id = container_id
        self._append(job, "job.running", {"attempt": rec.attempt, "worker_id": worker_id, "container_id": container_id})
        if job.durable:
            self._flush(job)
        return rec.attempt

    def log(self, job: LiveJob, attempt: int, stream: str, data: str) -> None:
        """Appends output, up to the per-job limit."""
        if job.final or attempt != job.record.attempt or job.log_truncated:
            return
        size = len(data.encode("utf-8", "replace"))
        if job.log_bytes + size > LOG_LIMIT_BYTES:
            room = LOG_LIMIT_BYTES - job.log_bytes
            if room > 0:
                self._append(job, "job.log", {"stream": stream, "data": data[:room]})
            job.log_truncated = True
            self._append(
                job,
                "job.log",
                {
                    "stream": "system",
                    "data": f"\n[output truncated: this job printed more than {LOG_LIMIT_BYTES:,} bytes]\n",
                },
            )
        else:
            job.log_bytes += size
            self._append(job, "job.log", {"stream": stream, "data": data})
        if len(job.events) - job.persisted >= FLUSH_EVERY_EVENTS:
            self._flush(job)

    def yielded(self, job: LiveJob, attempt: int, seq: int, value_format: str, data: bytes) -> None:
        """Hands a generator's item to the caller streaming them (items are not stored)."""
        if job.final or attempt != job.record.attempt:
            return
        job.yielded_items += 1
        if job.item_sink is not None:
            job.item_sink(value_format, data)

    def ended(self, job: LiveJob, attempt: int, status: str, result: dict[str, Any] | None, reason: str) -> None:
        """An attempt ended: retry it when the policy allows, else end the job.

        ``attempt`` is -1 when the attempt was lost with its container or worker.
        """
        if job.final or (attempt != -1 and attempt != job.record.attempt):
            return
        if self.closing and job.durable and status == JOB_FAILED and result is None:
            return  # lost to the shutdown: the durable record is re-queued by the next start
        ran = job.record.attempt
        retryable = status in (JOB_FAILED, JOB_TIMED_OUT) and not job.yielded_items and not job.service_request
        if retryable and 1 <= ran <= job.spec.retry_max and not self.closing:
            delay = job.spec.retry_delay(ran)
            what = reason or status
            self._append(
                job,
                "job.log",
                {
                    "stream": "system",
                    "data": f"attempt {ran} {status.replace('_', ' ')}: {what}\n"
                    f"retrying in {delay:g}s (attempt {ran + 1} of {job.spec.retry_max + 1})\n",
                },
            )
            job.record.status = JOB_QUEUED
            job.record_dirty = True
            if job.durable:
                self._flush(job)
            asyncio.get_running_loop().call_later(delay, self._retry, job)
            return
        if ran > 1 and status != JOB_SUCCEEDED:
            reason = f"{reason} (after {ran} attempts)" if reason else f"after {ran} attempts"
        self.finish(job, status, result, reason)

    def returned(self, job: LiveJob) -> None:
        """The attempt was handed to a container that stopped before starting it."""
        rec = job.record
        self._append(
            job,
            "job.log",
            {"stream": "system", "data": f"attempt {rec.attempt} never started: its container stopped; queued again\n"},
        )
        rec.attempt -= 1
        rec.status = JOB_QUEUED
        job.record_dirty = True

    def _retry(self, job: LiveJob) -> None:
        if not job.final and self.scheduler is not None:
            self.scheduler.submit(job)

    def finish(self, job: LiveJob, status: str, result: dict[str, Any] | None, reason: str) -> None:
        """Ends the job: result event (when there is one), end event, durable record."""
        if job.final:
            return
        rec = job.record
        rec.status = status
        rec.reason = reason
        rec.result = result
        rec.ended_at = utcnow()
        job.record_dirty = True
        if result is not None:
            self._append(job, "job.result", result)
        self._append(job, "job.end", {"status": status, "reason": reason})
        job.done.set()
        loop = asyncio.get_running_loop()
        if job.service_request:
            self._flush_request(job)
            retain = RETAIN_ENDED_REQUEST_S
        else:
            self._flush(job)  # written in a later turn of the loop, after the waiting caller resumed
            retain = RETAIN_ENDED_S
        self._evictions[job.job_id] = loop.call_later(retain, self._evict, job.job_id)

    def _evict(self, job_id: str) -> None:
        self._live.pop(job_id, None)
        self._evictions.pop(job_id, None)

    # -- queries ---------------------------------------------------------------------

    def live(self, job_id: str) -> LiveJob | None:
        return self._live.get(job_id)

    async def get(self, account: str, job_id: str) -> JobRecord:
        """A job's record, from memory or the store.

        Raises:
            NotFound: no such job in this account.
        """
        ids.key_of(job_id, "jobs")
        job = self._live.get(job_id)
        record = job.record if job is not None else await self.store.get_job(job_id)
        if record is None and is_request_job_id(job_id):
            # A web request's job (its id came with the response): its report may still be
            # on its way from the worker.
            deadline = asyncio.get_running_loop().time() + REQUEST_ARRIVAL_S
            while (job := self._live.get(job_id)) is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            record = job.record if job is not None else await self.store.get_job(job_id)
        if record is None or record.account != account:
            raise NotFound(f"job {job_id!r} not found")
        return record

    async def wait(self, account: str, job_id: str, timeout_s: float) -> tuple[JobRecord, bool]:
        """Waits up to ``timeout_s`` for a job to end."""
        if timeout_s < 0:
            raise InvalidArgument(f"timeout_s must be zero or more, got {timeout_s}")
        record = await self.get(account, job_id)
        job = self._live.get(job_id)
        if job is not None and not job.final and timeout_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.done.wait(), min(timeout_s, MAX_WAIT_S))
            record = job.record
        return record, record.status in FINAL_JOB_STATUSES

    def cancel(self, job: LiveJob, reason: str = "cancelled by the user") -> None:
        """Cancels a queued or running job."""
        if job.final:
            return
        if job.map_call is not None:
            job.map_call.cancel(reason)
            return
        assert self.scheduler is not None
        self.scheduler.cancel(job)
        self.finish(job, JOB_CANCELLED, None, reason)

    async def cancel_by_id(self, account: str, job_id: str) -> JobRecord:
        record = await self.get(account, job_id)
        job = self._live.get(job_id)
        if job is not None and job.service_request and not job.final:
            raise FailedPrecondition(
                f"job {job_id} is an HTTP request to web service {job.spec.name!r}; it ends with its response "
                "and cannot be cancelled (stop the deployment to stop the service)"
            )
        if job is not None:
            self.cancel(job)
            return job.record
        return record

    async def events(self, account: str, job_id: str, after_seq: int = 0) -> list[Event]:
        """The job's events after ``after_seq``."""
        await self.get(account, job_id)
        job = self._live.get(job_id)
        if job is not None and (not job.events or job.events[0].seq == 1):
            return [e for e in job.events if e.seq > after_seq]
        return await self.store.job_events(job_id, after_seq)

    async def watch(self, account: str, job_id: str, *, snapshot: bool, after_seq: int) -> AsyncIterator[JobWatchItem]:
        """Streams a job's committed events until its end event.

        Yields ``(None, record)`` and :class:`SnapshotEnd` first when ``snapshot`` (the job as
        of a committed seq), then ``(event, record)`` for each event after ``after_seq`` (and
        after the snapshot), in seq order, and :class:`Progress` when the job had no new event
        for the progress interval.

        Raises:
            NotFound: no such job in this account.
            InvalidArgument: ``after_seq`` is negative or after the job's last event.
        """
        record = await self.get(account, job_id)
        if not 0 <= after_seq <= record.last_seq:
            raise InvalidArgument(
                f"cannot resume a watch of job {job_id} after seq {after_seq}: its events are seq 1 to "
                f"{record.last_seq}"
            )
        job = self._live.get(job_id)
        if job is None:  # ended a while ago: the store has it all
            last = after_seq
            if snapshot:
                last = max(last, record.last_seq)
                yield None, record
                yield SnapshotEnd(record.last_seq)
            for event in await self.store.job_events(job_id, last):
                yield event, record
            return
        job.watchers += 1
        self._flush_pending(job)
        try:
            async for item in self._watch_live(job, snapshot=snapshot, after_seq=after_seq):
                yield item
        finally:
            job.watchers -= 1

    async def _watch_live(self, job: LiveJob, *, snapshot: bool, after_seq: int) -> AsyncIterator[JobWatchItem]:
        last = after_seq
        if snapshot:
            view = await self._snapshot(job)
            last = max(last, view.last_seq)
            yield None, view
            yield SnapshotEnd(view.last_seq)
        while True:
            waiter = job.changed.waiter()
            if job.events and job.events[0].seq > last + 1:
                # Our in-memory log starts later (adopted job): read the rest from the store.
                for event in await self.store.job_events(job.job_id, last):
                    if event.seq >= job.events[0].seq:
                        break
                    last = event.seq
                    yield event, job.record
            for event in _between(job, last, job.durable_seq):
                last = event.seq
                yield event, job.record
            if job.final and last >= job.record.last_seq:
                return
            if self.closing:
                raise Unavailable(f"the control plane is shutting down; watch job {job.job_id} again after seq {last}")
            if waiter.is_set():
                continue
            try:
                async with asyncio.timeout(self.watch_settings.progress_s):
                    await waiter.wait()
            except TimeoutError:
                yield Progress(last)

    async def _snapshot(self, job: LiveJob) -> JobRecord:
        """The job's record as of a committed seq (waits for the job's next write if needed)."""
        while True:
            waiter = job.changed.waiter()
            view = self._durable_view(job)
            if view is not None:
                return view
            if self.closing:
                raise Unavailable(f"the control plane is shutting down; watch job {job.job_id} again")
            self._flush_pending(job)  # the job is watched: this write copies the record
            await waiter.wait()

    @staticmethod
    def _durable_view(job: LiveJob) -> JobRecord | None:
        """A copy of the job's record as of ``durable_seq``, when one is at hand."""
        if job.durable_record is not None and job.durable_record.last_seq == job.durable_seq:
            return job.durable_record
        if job.durable_seq == job.record.last_seq and not job.record_dirty:
            return copy.copy(job.record)
        return None

    @contextlib.contextmanager
    def watch_app(self, account: str, app_name: str, *, snapshot: bool) -> Iterator[AsyncIterator[WatchItem]]:
        """Subscribes to an app's committed job events for the block and yields its stream.

        Every event committed after the ``with`` began is in the stream (unless a
        :class:`~apothic.server.watch.Reset` says it is gone). The stream's changes hold
        ``(event, job record)`` pairs; with ``snapshot`` it starts with one record per
        unfinished job of the app, each as of its committed seq.
        """
        topic = f"{account}/{app_name}"
        with self.app_topics.subscribed(topic) as log:
            for job in self._live.values():
                if job.record.account == account and job.record.app_name == app_name:
                    self._flush_pending(job)
            yield watch(
                _fixed(log),
                what=f"app {app_name!r}",
                snapshot=functools.partial(self._app_snapshot, account, app_name) if snapshot else None,
                after_rev=None if snapshot else log.rev,
                settings=self.watch_settings,
            )

    def _app_snapshot(self, account: str, app_name: str) -> list[JobRecord]:
        out = []
        for job in self._live.values():
            rec = job.record
            if rec.account != account or rec.app_name != app_name or job.final or not job.durable_seq:
                continue
            out.append(self._durable_view(job) or replace(rec, last_seq=job.durable_seq))
        return out

    async def list_jobs(self, account: str, app_name: str, status: str, limit: int) -> list[JobRecord]:
        if not 0 <= limit <= 1000:
            raise InvalidArgument(f"limit must be between 0 and 1000, got {limit}")
        limit = limit or 50
        await self.store.drain()
        stored = await self.store.list_jobs(account, app_name, status, limit)
        # Jobs still running whose record is written when they end (warm calls, maps).
        live = {
            job.job_id: job.record
            for job in self._live.values()
            if job.record.account == account
            and (not app_name or job.record.app_name == app_name)
            and (not status or job.record.status == status)
        }
        merged = {r.job_id: r for r in stored} | live
        return sorted(merged.values(), key=lambda r: r.created_at, reverse=True)[:limit]

    async def close(self) -> None:
        """Fails in-flight invokes (UNAVAILABLE for their callers), ends job watches (also
        UNAVAILABLE: they resume after the last seq they saw) and flushes records.

        Unfinished spawned jobs keep their durable record (with their output so far) and
        are re-queued by the next start. Safe to call more than once.
        """
        self.closing = True
        for job in list(self._live.values()):
            job.changed.fire()  # its watchers end (they resume after a restart)
            if job.final:
                continue
            if job.durable:
                job.record_dirty = True
                self._flush(job)
            else:
                job.done.set()
        if self._requests_timer is not None:
            self._requests_timer.cancel()
        self._flush_requests()
        self._flush_dirty()
        for handle in self._evictions.values():
            handle.cancel()
        self._evictions.clear()


def _between(job: LiveJob, after_seq: int, upto_seq: int) -> list[Event]:
    """The job's in-memory events with ``after_seq < seq <= upto_seq`` (a copy)."""
    if not job.events:
        return []
    first = job.events[0].seq
    return job.events[max(0, after_seq + 1 - first) : max(0, upto_seq + 1 - first)]


def _fixed(log: ChangeLog[tuple[Event, JobRecord]]) -> Callable[[], ChangeLog[tuple[Event, JobRecord]]]:
    return lambda: log
