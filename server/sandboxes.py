"""Sandboxes: long-running jobs of the built-in agent function, and the routing of calls to them.

A sandbox is one job of ``apothic._sandbox_agent.serve`` in a hidden app the control plane
deploys per account and option set (``sandbox-<hash of the options>``). The job's container
dials back and opens ``ServeSandbox``; every exec and file call is routed over that stream as
a numbered request whose replies come back on it. The job is the durable record: a sandbox's
id is its job's id under the ``sandboxes`` kind, its status follows the job's (cancelled:
terminated, timed out, failed), and its events and logs are the job's. Terminating cancels
the job, which stops the container; the job's timeout is the sandbox's.

What the control plane keeps in memory (names, agent links, idle clocks) is only routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apothic.server import ids
from apothic.server.deployments import validate_name
from apothic.server.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from apothic.server.models import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_SUCCEEDED,
    JOB_TIMED_OUT,
    FunctionSpecRecord,
    JobRecord,
    utcnow,
)

if TYPE_CHECKING:
    from apothic.server.deployments import DeploymentManager
    from apothic.server.jobs import JobManager

log = logging.getLogger("apothic.server.sandboxes")

#: The function every sandbox runs.
AGENT_MODULE = "apothic._sandbox_agent"
AGENT_FUNCTION = "serve"
STARTING, RUNNING, TERMINATED, TIMED_OUT, FAILED = "starting", "running", "terminated", "timed_out", "failed"
_ENDED = {JOB_CANCELLED: TERMINATED, JOB_SUCCEEDED: TERMINATED, JOB_TIMED_OUT: TIMED_OUT, JOB_FAILED: FAILED}
#: Seconds a create waits for the agent by default.
READY_TIMEOUT_S = 120.0
#: Seconds a file call waits for the agent's answer.
FILE_CALL_TIMEOUT_S = 60.0
#: How often idle and ended sandboxes are looked for.
TICK_S = 0.5
#: Seconds an ended sandbox is still listed and answers with how it ended.
RETAIN_ENDED_S = 3600.0


@dataclass
class AgentLink:
    """The stream of one connected agent: requests out, replies routed to their callers."""

    root: str
    outbox: asyncio.Queue[tuple[str, Any] | None] = field(default_factory=asyncio.Queue)
    pending: dict[int, asyncio.Queue[Any]] = field(default_factory=dict)
    next_id: int = 0
    closed: bool = False

    def deliver(self, request_id: int, reply: Any) -> None:
        """Hands a reply to the call waiting for it (a late one is dropped)."""
        queue = self.pending.get(request_id)
        if queue is not None:
            queue.put_nowait(reply)

    def close(self) -> None:
        """Fails every waiting call and ends the stream."""
        if self.closed:
            return
        self.closed = True
        for queue in self.pending.values():
            queue.put_nowait(None)
        self.outbox.put_nowait(None)


@dataclass
class SandboxRecord:
    """A sandbox the control plane knows: its job and how to reach its agent."""

    sandbox_id: str
    account: str
    name: str
    job_id: str
    app_name: str
    token: str
    timeout_s: float
    idle_timeout_s: float
    created_at: datetime
    link: AgentLink | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_active: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    #: Set when the control plane ended it (idle), to name the reason.
    end_reason: str = ""


@dataclass(frozen=True)
class SandboxView:
    """A sandbox's state for a caller."""

    record: SandboxRecord
    status: str
    reason: str
    ended_at: datetime | None


def sandbox_id_of(job_id: str) -> str:
    """The sandbox id that goes with a job id (same key)."""
    return "sandboxes:" + job_id.partition(":")[2]


class SandboxManager:
    """Creates sandboxes, routes calls to their agents and ends them."""

    def __init__(self, deployments: DeploymentManager, jobs: JobManager) -> None:
        self.deployments = deployments
        self.jobs = jobs
        self._by_id: dict[str, SandboxRecord] = {}
        self._deploy_lock = asyncio.Lock()
        self._ticker: asyncio.TimerHandle | None = None
        #: Final records of ended sandboxes' jobs, once the job manager let go of them.
        self._stored: dict[str, JobRecord] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def create(
        self, account: str, name: str, spec: FunctionSpecRecord, *, idle_timeout_s: float, ready_timeout_s: float
    ) -> SandboxView:
        """Deploys the hidden app for these options if needed, spawns the sandbox's job and
        waits until its agent is connected.

        Raises:
            InvalidArgument: a bad name or option.
            AlreadyExists: a running sandbox of the account has the name.
            NotFound: a secret or volume the options name does not exist.
            FailedPrecondition: the sandbox could not start, or was not ready in time.
        """
        if name:
            validate_name("sandbox", name)
        self._check_free(account, name)
        if spec.timeout_s <= 0:
            raise InvalidArgument("a sandbox's timeout_s must be greater than zero")
        if idle_timeout_s < 0 or ready_timeout_s < 0:
            raise InvalidArgument("idle_timeout_s and ready_timeout_s must be zero or more")
        spec = _agent_spec(spec)
        app_name = "sandbox-" + hashlib.sha256(_spec_key(spec).encode()).hexdigest()[:16]
        async with self._deploy_lock:
            try:
                dep, spec = await self.deployments.resolve(account, app_name, AGENT_FUNCTION, "")
            except (NotFound, FailedPrecondition):
                dep = await self.deployments.deploy(account, app_name, [spec], b"", ephemeral=False)
                spec = dep.functions[0]
        job_id = ids.new_id("jobs")
        record = SandboxRecord(
            sandbox_id=sandbox_id_of(job_id),
            account=account,
            name=name,
            job_id=job_id,
            app_name=app_name,
            token=secrets.token_urlsafe(24),
            timeout_s=spec.timeout_s,
            idle_timeout_s=idle_timeout_s,
            created_at=utcnow(),
        )
        self._check_free(account, name)  # again: another create may have taken it meanwhile
        self._by_id[record.sandbox_id] = record
        args = json.dumps([record.sandbox_id, record.token]).encode()
        try:
            (job,) = await self.jobs.spawn_many(account, dep, spec, "json", [args], "json", job_ids=[job_id])
        except BaseException:
            del self._by_id[record.sandbox_id]
            raise
        self._arm()
        ready = asyncio.ensure_future(record.ready.wait())
        done = asyncio.ensure_future(job.done.wait())
        try:
            await asyncio.wait(
                {ready, done}, timeout=ready_timeout_s or READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            self._end(record, "its creator went away before it was ready")
            raise
        finally:
            ready.cancel()
            done.cancel()
        if job.final:
            raise FailedPrecondition(
                f"sandbox {record.sandbox_id} could not start: {job.record.reason or job.record.status}"
            )
        if not record.ready.is_set():
            wait = ready_timeout_s or READY_TIMEOUT_S
            self._end(record, f"it was not ready within {wait:g}s")
            raise FailedPrecondition(f"sandbox {record.sandbox_id} was not ready within {wait:g}s; it was terminated")
        return self.view(record)

    def _check_free(self, account: str, name: str) -> None:
        """Raises AlreadyExists when a running sandbox of the account has ``name``."""
        for other in self._by_id.values():
            if name and other.account == account and other.name == name and not self._job(other).final:
                raise AlreadyExists(f"a running sandbox is already called {name!r} ({other.sandbox_id})")

    async def get(self, account: str, sandbox_id: str = "", name: str = "") -> SandboxView:
        """A sandbox by id, or by name (the running one, else the newest).

        Raises:
            InvalidArgument: neither id nor name.
            NotFound: no such sandbox in this account.
        """
        if sandbox_id:
            record = self._by_id.get(sandbox_id)
            if record is None or record.account != account:
                ids.key_of(sandbox_id, "sandboxes")
                raise NotFound(f"sandbox {sandbox_id!r} not found")
            await self._load_ended(record)
            return self.view(record)
        if not name:
            raise InvalidArgument("a sandbox id or name is required")
        named = [r for r in self._by_id.values() if r.account == account and r.name == name]
        if not named:
            raise NotFound(f"no sandbox is called {name!r}")
        running = [r for r in named if not self._job(r).final]
        record = max(running or named, key=lambda r: r.created_at)
        await self._load_ended(record)
        return self.view(record)

    async def _load_ended(self, record: SandboxRecord) -> None:
        """Reads an ended sandbox's job record back once the job manager let go of it."""
        if self.jobs.live(record.job_id) is None and record.job_id not in self._stored:
            with contextlib.suppress(NotFound):
                self._stored[record.job_id] = await self.jobs.get(record.account, record.job_id)

    def list(self, account: str, *, include_ended: bool) -> list[SandboxView]:
        """The account's sandboxes, newest first."""
        views = [self.view(r) for r in self._by_id.values() if r.account == account]
        if not include_ended:
            views = [v for v in views if v.status in (STARTING, RUNNING)]
        return sorted(views, key=lambda v: v.record.created_at, reverse=True)

    async def terminate(self, account: str, sandbox_id: str) -> SandboxView:
        """Cancels the sandbox's job (its container stops); an ended one is left alone."""
        record = (await self.get(account, sandbox_id)).record
        self._end(record, "terminated by the user")
        return self.view(record)

    async def wait(self, account: str, sandbox_id: str, timeout_s: float) -> tuple[SandboxView, bool]:
        """Waits up to ``timeout_s`` for the sandbox to end."""
        record = (await self.get(account, sandbox_id)).record
        await self.jobs.wait(account, record.job_id, timeout_s)
        view = self.view(record)
        return view, view.status not in (STARTING, RUNNING)

    def view(self, record: SandboxRecord) -> SandboxView:
        job = self._job(record)
        if job.final:
            status = _ENDED.get(job.record.status, FAILED)
            reason = record.end_reason or job.record.reason
            if status == TIMED_OUT:
                reason = f"it ran past its timeout of {record.timeout_s:g}s"
            return SandboxView(record, status, reason, job.record.ended_at)
        return SandboxView(record, RUNNING if record.link is not None else STARTING, "", None)

    def _job(self, record: SandboxRecord) -> Any:
        """The sandbox's live job, or a stand-in holding its stored record once evicted."""
        job = self.jobs.live(record.job_id)
        if job is not None:
            return job
        stored = self._stored.get(record.job_id)
        return _Ended(stored) if stored is not None else _Ended(None)

    def _end(self, record: SandboxRecord, reason: str) -> None:
        job = self.jobs.live(record.job_id)
        if job is not None and not job.final:
            record.end_reason = reason
            self.jobs.cancel(job, f"sandbox {reason}")
        if record.link is not None:
            record.link.close()

    # -- the agent's stream --------------------------------------------------------------

    def attach(self, account: str, sandbox_id: str, token: str, root: str) -> AgentLink:
        """Connects an agent's stream to its sandbox.

        Raises:
            NotFound: no such sandbox.
            PermissionDenied: the token is not the sandbox's.
            FailedPrecondition: the sandbox has ended.
        """
        record = self._by_id.get(sandbox_id)
        if record is None or record.account != account:
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        if not secrets.compare_digest(record.token, token):
            raise PermissionDenied(f"the agent token for sandbox {sandbox_id} is wrong")
        if self._job(record).final:
            raise FailedPrecondition(f"sandbox {sandbox_id} has ended")
        if record.link is not None:
            record.link.close()
        record.link = AgentLink(root=root)
        record.ready.set()
        record.last_active = time.monotonic()
        return record.link

    def detach(self, sandbox_id: str, link: AgentLink) -> None:
        """The agent's stream ended."""
        link.close()
        record = self._by_id.get(sandbox_id)
        if record is not None and record.link is link:
            record.link = None
            record.ready.clear()

    async def call(
        self,
        account: str,
        sandbox_id: str,
        op: str,
        message: Any,
        stdin: AsyncIterator[tuple[bytes, bool]] | None = None,
    ) -> AsyncIterator[Any]:
        """Sends one request to the sandbox's agent and yields its replies up to the last one
        (an exit, a result, done or an error); ``stdin`` chunks ``(data, eof)`` follow the
        request to the agent while it runs.

        Raises:
            NotFound: no such sandbox.
            FailedPrecondition: it has ended, or ended during the call.
            Unavailable: its agent is not connected.
        """
        record = (await self.get(account, sandbox_id)).record
        view = self.view(record)
        if view.status not in (STARTING, RUNNING):
            raise FailedPrecondition(
                f"sandbox {sandbox_id} has ended ({view.status.replace('_', ' ')}: {view.reason}); create a new one"
            )
        link = record.link
        if link is None or link.closed:
            raise Unavailable(f"sandbox {sandbox_id} has no agent connected right now; retry shortly")
        link.next_id += 1
        request_id = link.next_id
        replies: asyncio.Queue[Any] = asyncio.Queue()
        link.pending[request_id] = replies
        record.in_flight += 1
        record.last_active = time.monotonic()
        link.outbox.put_nowait(("request", (request_id, op, message)))
        feeder = asyncio.ensure_future(_forward(link, request_id, stdin)) if stdin is not None else None
        finished = False
        try:
            while True:
                reply = await replies.get()
                if reply is None:
                    ended = self.view(record)
                    why = f"{ended.status.replace('_', ' ')}: {ended.reason}" if ended.reason else "its agent went away"
                    raise FailedPrecondition(f"sandbox {sandbox_id} ended during the call ({why})")
                which = reply.WhichOneof("body")
                finished = which != "output"
                yield reply
                if finished:
                    return
        finally:
            if feeder is not None:
                feeder.cancel()
            link.pending.pop(request_id, None)
            record.in_flight -= 1
            record.last_active = time.monotonic()
            if not finished and not link.closed:
                link.outbox.put_nowait(("cancel", request_id))

    async def call_once(self, account: str, sandbox_id: str, op: str, message: Any) -> Any:
        """:meth:`call` for a request with one reply, bounded by :data:`FILE_CALL_TIMEOUT_S`.

        Raises:
            DomainError: the agent's error, by its code; as for :meth:`call`.
        """
        async with asyncio.timeout(FILE_CALL_TIMEOUT_S):
            async for reply in self.call(account, sandbox_id, op, message):
                if reply.WhichOneof("body") == "error":
                    raise agent_error(reply.error.code, reply.error.message)
                return reply
        raise Unavailable(f"sandbox {sandbox_id} did not answer")  # pragma: no cover

    # -- idle timeouts and ended jobs ------------------------------------------------------

    def _arm(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = time.monotonic()
        live = 0
        for record in list(self._by_id.values()):
            job = self.jobs.live(record.job_id)
            if job is None or job.final:
                if job is not None:
                    self._stored[record.job_id] = job.record
                if record.link is not None:
                    record.link.close()
                    record.link = None
                ended = self._stored.get(record.job_id)
                if (
                    ended is not None
                    and ended.ended_at
                    and (utcnow() - ended.ended_at).total_seconds() > RETAIN_ENDED_S
                ):
                    del self._by_id[record.sandbox_id]  # forgotten: its id now answers NOT_FOUND
                    self._stored.pop(record.job_id, None)
                continue
            live += 1
            idle = record.idle_timeout_s
            if idle and not record.in_flight and now - record.last_active > idle:
                log.info("terminating sandbox %s: idle for %.0fs", record.sandbox_id, idle)
                self._end(record, f"was idle for {idle:g}s")
        if live and not self.jobs.closing:
            self._arm()


async def _forward(link: AgentLink, request_id: int, stdin: AsyncIterator[tuple[bytes, bool]]) -> None:
    """Hands a caller's stdin chunks to the agent until end of file (or the call ends)."""
    with contextlib.suppress(DomainError):
        async for data, eof in stdin:
            if link.closed:
                return
            link.outbox.put_nowait(("stdin", (request_id, data, eof)))
            if eof:
                return


class _Ended:
    """Stands in for an evicted job: final, with its last record (if seen)."""

    final = True

    def __init__(self, record: JobRecord | None) -> None:
        self.record = record or JobRecord(
            job_id="",
            account="",
            app_name="",
            function_name="",
            deployment_id="",
            status=JOB_FAILED,
            attempt=0,
            reason="the control plane no longer has this sandbox's job",
            args_format="",
            args=b"",
            result_format="",
            result=None,
            created_at=utcnow(),
        )


def agent_error(code: str, message: str) -> DomainError:
    """The domain error for an agent's error code."""
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unavailable):
        if cls.code == code:
            return cls(message)
    return DomainError(message)


def _agent_spec(spec: FunctionSpecRecord) -> FunctionSpecRecord:
    """The client's container options as the agent function's spec."""
    return replace(
        spec,
        name=AGENT_FUNCTION,
        module=AGENT_MODULE,
        qualname=AGENT_FUNCTION,
        pickled_function=b"",
        max_containers=0,
        min_containers=0,
        scaledown_window_s=2.0,
        retry_max=0,
        max_concurrent_inputs=1,
        target_concurrent_inputs=1,
        batch_max_size=0,
        batch_wait_ms=0.0,
        max_pending_tasks=0,
        is_generator=False,
        is_async=False,
        schedule_cron="",
        schedule_timezone="",
        schedule_period_s=0.0,
        startup_timeout_s=spec.startup_timeout_s or 60.0,
    )


def _spec_key(spec: FunctionSpecRecord) -> str:
    """What identifies an option set: every field that changes the container."""
    parts = [
        spec.timeout_s,
        spec.startup_timeout_s,
        spec.options_json,
        spec.secrets,
        spec.volumes,
        spec.bucket_mounts,
        spec.image_id,
        spec.image.hex(),
    ]
    return json.dumps(parts, default=list)
