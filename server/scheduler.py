"""Placement: which container runs which input, and when containers start and stop.

All state here is in memory; the store holds the jobs. Workers are reached only through
their session outboxes (commands below), which the worker servicer turns into messages.

A container takes up to ``spec.slots`` inputs at once (``@concurrent`` / ``@batched``);
the pool adds a container when every ready one is at its target, up to
``max_containers``, and keeps ``min_containers`` running even when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apothic._container.request_trail import request_job_id
from apothic.server import ids
from apothic.server.errors import ResourceExhausted
from apothic.server.models import (
    DEPLOYMENT_LIVE,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_SUCCEEDED,
    JOB_TIMED_OUT,
    DeploymentRecord,
    FunctionSpecRecord,
)
from apothic.server.placement import OfferFilter, describe_offer, function_filters, unmet
from apothic.server.web import WebOptions, connections_per_container, web_options
from apothic.server.work import RequestJobs, Work

log = logging.getLogger("apothic.server.scheduler")

#: Containers one worker runs at once, per offered CPU core.
CONTAINERS_PER_CORE = 4
#: How often idle containers are checked for scale-down.
REAP_INTERVAL_S = 1.0
#: Chunks of a web service's own output kept per function (its startup log tail).
SERVICE_LOG_CHUNKS = 200

service_log = logging.getLogger("apothic.service")


@dataclass(frozen=True)
class StartContainer:
    container_id: str
    account: str
    deployment_id: str
    app_name: str
    spec: FunctionSpecRecord
    archive_sha256: str


@dataclass(frozen=True)
class StopContainer:
    container_id: str
    reason: str


@dataclass(frozen=True)
class RunInput:
    container_id: str
    job_id: str
    attempt: int
    args_format: str
    args: bytes
    result_format: str
    timeout_s: float


@dataclass(frozen=True)
class CancelInput:
    job_id: str
    container_id: str


@dataclass(frozen=True)
class BuildImage:
    """Build an image on the worker (see :mod:`apothic.server.images`)."""

    image_id: str
    #: The ImageSpec, serialized (the servicer turns it back into a message).
    spec: bytes
    #: SHA-256s of the archives the image names.
    contexts: tuple[str, ...]


@dataclass(frozen=True)
class ServiceLogLine:
    """A chunk of what a web service container printed outside any input."""

    time: float  # wall clock, seconds
    container_id: str
    stream: str
    data: str


@dataclass(frozen=True)
class OpenTunnel:
    """Open a tunnel stream to a service container's port (see :mod:`apothic.server.tunnels`)."""

    tunnel_id: str
    container_id: str


Command = StartContainer | StopContainer | RunInput | CancelInput | BuildImage | OpenTunnel


@dataclass(eq=False)
class WorkerHandle:
    """A connected worker and its session outbox."""

    worker_id: str
    offer: dict[str, Any]
    #: Commands for the worker's session; None ends the session.
    outbox: asyncio.Queue[Command | None] = field(default_factory=asyncio.Queue)
    containers: dict[str, ContainerHandle] = field(default_factory=dict)
    #: Images this worker reported built in this session: their archives need not be sent.
    images: set[str] = field(default_factory=set)

    @property
    def executor(self) -> str:
        """How the worker runs containers: ``process`` or ``docker``."""
        return str(self.offer.get("executor") or "process")

    @property
    def capacity(self) -> int:
        cores = float(self.offer.get("cpu_cores") or 1)
        return max(2, int(cores * CONTAINERS_PER_CORE))


@dataclass(eq=False)
class ContainerHandle:
    container_id: str
    worker: WorkerHandle
    pool: FunctionPool
    state: str = "starting"  # starting | ready | stopping | gone
    inflight: dict[str, Work] = field(default_factory=dict)
    idle_since: float = field(default_factory=time.monotonic)
    #: When the container was started: ties go to the oldest, so warm ones are reused.
    created: float = field(default_factory=time.monotonic)
    #: Open client connections (tunnels) of a service container.
    connections: int = 0
    #: The jobs of the HTTP requests a service container is answering, by job id.
    requests: dict[str, Work] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """Running an input or serving a connection."""
        return bool(self.inflight) or self.connections > 0

    def free_for(self, work: Work) -> int:
        """Inputs like ``work`` this container can take now."""
        if self.state != "ready":
            return 0
        spec = self.pool.spec
        return spec.slots + (spec.prefetch if work.prefetchable else 0) - len(self.inflight)


@dataclass(eq=False)
class FunctionPool:
    """The containers and waiting inputs of one function of one deployment."""

    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    pending: deque[Work] = field(default_factory=deque)
    #: The offer filters a worker must meet to run this function (see apothic.server.placement).
    filters: tuple[OfferFilter, ...] = ()
    containers: set[ContainerHandle] = field(default_factory=set)
    closed: bool = False
    #: How the function serves HTTP; None for a function that takes inputs.
    web: WebOptions | None = None
    #: Why the pool's last container failed to start ("" when the last one started).
    startup_failure: str = ""
    #: Woken whenever one of the pool's containers becomes ready or goes away.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The end of what the service's containers printed outside any input.
    log_tail: deque[ServiceLogLine] = field(default_factory=lambda: deque(maxlen=SERVICE_LOG_CHUNKS))
    #: Followers of the service's output (``TailServiceLogs``): each gets every new line.
    log_followers: set[asyncio.Queue[ServiceLogLine]] = field(default_factory=set)

    def log_text(self, limit: int = 4096) -> str:
        """The end of the service's output, at most ``limit`` characters."""
        return "".join(line.data for line in self.log_tail)[-limit:]

    @property
    def idle_window_s(self) -> float:
        """Seconds an idle container stays warm."""
        if self.web is not None and self.web.keep_warm_s > 0:
            return self.web.keep_warm_s
        return self.spec.scaledown_window_s

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def key(self) -> tuple[str, str]:
        return (self.deployment.deployment_id, self.spec.name)

    @property
    def starting(self) -> int:
        return sum(1 for c in self.containers if c.state == "starting")

    @property
    def limit(self) -> int:
        return self.spec.max_containers or 1_000_000

    def best_container(self, work: Work) -> ContainerHandle | None:
        """The ready container with the most room for ``work`` (least loaded), if any.

        Among equally free containers the oldest wins, so consecutive calls reuse the same
        warm container and a spare started ahead stays idle until it is needed.
        """
        best: ContainerHandle | None = None
        room = 0
        for container in self.containers:
            free = container.free_for(work)
            if free > room or (free == room and best is not None and container.created < best.created):
                best, room = container, free
        return best


class Scheduler:
    """Places inputs on warm containers, starting containers on workers when needed."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerHandle] = {}
        self.pools: dict[tuple[str, str], FunctionPool] = {}
        self.containers: dict[str, ContainerHandle] = {}
        self._reaper: asyncio.Task[None] | None = None
        #: Live deployments (set by the control plane), kept warm per ``min_containers``.
        self.live_deployments: Callable[[], Iterable[DeploymentRecord]] = tuple
        #: Which host a function's containers must run on (a vast_local volume pins it), and
        #: who hears where a container was placed; set by the control plane.
        self.host_for: Callable[[str, FunctionSpecRecord], str | None] = lambda account, spec: None
        self.placed: Callable[[str, FunctionSpecRecord, str], None] = lambda account, spec, host: None
        #: Billing (set by the control plane, see apothic.server.billing): why an account may
        #: not start a container on a worker (None: it may), and who hears when a container
        #: starts and when the scheduler lets go of it.
        self.refusal: Callable[[str, WorkerHandle], str | None] = lambda account, worker: None
        self.container_started: Callable[[ContainerHandle], None] = lambda container: None
        self.container_ended: Callable[[ContainerHandle], None] = lambda container: None
        #: Records a service container's HTTP request as a job (set by the control plane:
        #: ``JobManager.service_request``); None keeps no trail.
        self.request_jobs: RequestJobs | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="apothic-scheduler-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    # -- inputs ----------------------------------------------------------------------

    def pool(self, deployment: DeploymentRecord, spec: FunctionSpecRecord) -> FunctionPool:
        """The pool of a function, created (or reopened) on demand."""
        key = (deployment.deployment_id, spec.name)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = FunctionPool(
                deployment=deployment, spec=spec, filters=function_filters(spec.options_json), web=web_options(spec)
            )
        elif pool.closed:
            # A call pinned to a retired deployment still runs: containers start on demand.
            pool.closed = False
        return pool

    def check_capacity(self, deployment: DeploymentRecord, spec: FunctionSpecRecord, count: int) -> None:
        """Refuses ``count`` more inputs that would exceed the function's max_pending_tasks.

        Raises:
            ResourceExhausted: the limit would be exceeded; the message names it.
        """
        limit = spec.max_pending_tasks
        if not limit:
            return
        pool = self.pools.get((deployment.deployment_id, spec.name))
        waiting = len(pool.pending) if pool is not None else 0
        if waiting + count > limit:
            raise ResourceExhausted(
                f"function {spec.name!r} of app {deployment.app_name!r} has {waiting} inputs waiting and its "
                f"max_pending_tasks is {limit}; {count} more would exceed it. Retry later or raise the limit"
            )

    def submit(self, work: Work) -> None:
        """Runs the input on a container with a free slot, or queues it and scales up."""
        pool = self.pool(work.deployment, work.spec)
        container = pool.best_container(work) if not pool.pending else None
        if container is not None:
            self._assign(container, work)
            target = pool.spec.target_slots
            # Scale ahead only once every ready container is at its target: one spare, not
            # a new container per call while the others sit idle.
            if len(container.inflight) >= target and not any(
                c.state == "ready" and len(c.inflight) < target for c in pool.containers
            ):
                self._scale(pool, extra=1)
            return
        pool.pending.append(work)
        self._scale(pool)

    def _assign(self, container: ContainerHandle, work: Work) -> None:
        container.inflight[work.input_id] = work
        work.container_id = container.container_id
        attempt = work.handler.started(work, container.worker.worker_id, container.container_id)
        container.worker.outbox.put_nowait(
            RunInput(
                container_id=container.container_id,
                job_id=work.input_id,
                attempt=attempt,
                args_format=work.args_format,
                args=work.args,
                result_format=work.result_format,
                timeout_s=work.spec.timeout_s,
            )
        )

    def _fill(self, container: ContainerHandle) -> None:
        """Hands waiting inputs to a container with free slots."""
        pool = container.pool
        while pool.pending and container.free_for(pool.pending[0]) > 0:
            work = pool.pending.popleft()
            if not work.final:
                self._assign(container, work)
        if not container.busy:
            container.idle_since = time.monotonic()

    # -- services ----------------------------------------------------------------------

    def service_container(self, pool: FunctionPool) -> ContainerHandle | None:
        """The ready container of a service with the fewest connections, starting one (or
        one more, when every ready one is at its connection target) as needed; None while
        none is ready yet (wait on ``pool.changed``)."""
        ready = [c for c in pool.containers if c.state == "ready"]
        best = min(ready, key=lambda c: (c.connections, c.created), default=None)
        target = connections_per_container(pool.spec)
        # A web_server binds a fixed port: a second container on one host could not.
        single = pool.web is not None and pool.web.kind == "web_server"
        crowded = best is None or (best.connections >= target and not single)
        if crowded and not pool.starting and len(pool.containers) < pool.limit:
            worker = self._pick_worker(pool)
            if worker is not None:
                self._start_container(pool, worker)
        return best

    def service_pool(self, deployment: DeploymentRecord, spec: FunctionSpecRecord) -> FunctionPool | None:
        """A web service's pool for reading its output: the existing one, or a new one for a
        live deployment; None for a stopped deployment without one."""
        pool = self.pools.get((deployment.deployment_id, spec.name))
        if pool is None and deployment.status == DEPLOYMENT_LIVE:
            pool = self.pool(deployment, spec)
        return pool

    def service_unplaceable(self, pool: FunctionPool) -> str | None:
        """Why no connected worker can run a service, or None when one may."""
        return self._unplaceable(pool)

    def service_log(self, container_id: str, stream: str, data: str) -> None:
        """Output a web service container printed: kept as its function's log tail and
        logged (logger ``apothic.service``)."""
        container = self.containers.get(container_id)
        if container is None:
            return
        pool = container.pool
        line = ServiceLogLine(time.time(), container_id, stream, data)
        pool.log_tail.append(line)
        for follower in pool.log_followers:
            with contextlib.suppress(asyncio.QueueFull):  # a follower that fell behind misses lines
                follower.put_nowait(line)
        service_log.info(
            "%s/%s %s %s: %s", pool.deployment.app_name, pool.spec.name, container_id, stream, data.rstrip()
        )

    def request_started(
        self, worker: WorkerHandle, container_id: str, number: int, request: dict[str, str], started_at: float
    ) -> None:
        """A service container of ``worker`` began answering an HTTP request at
        ``started_at`` (seconds since the epoch): its job starts."""
        container = self.containers.get(container_id)
        if container is None or container.worker is not worker or container.pool.web is None or number < 1:
            return
        if self.request_jobs is None:
            return
        pool = container.pool
        job_id = request_job_id(container_id, number)
        if job_id in container.requests:
            return
        container.requests[job_id] = self.request_jobs(
            pool.deployment, pool.spec, job_id, request, worker.worker_id, container_id, started_at
        )

    def request_ended(
        self,
        worker: WorkerHandle,
        container_id: str,
        number: int,
        status_code: int,
        error: dict[str, Any] | None,
        duration_s: float,
    ) -> None:
        """A service container answered an HTTP request: its job ends. A 5xx answer, a
        handler that raised, or no answer at all fails it; any other succeeds with
        ``{"status_code": N}``."""
        container = self.containers.get(container_id)
        if container is None or container.worker is not worker:
            return
        work = container.requests.pop(request_job_id(container_id, number), None)
        if work is None:
            return
        took = f" after {duration_s:.3f}s" if duration_s > 0 else ""
        if error is not None:
            reason = f"{error['type'].rpartition('.')[2]}: {error['message']}"
            work.handler.ended(work, 1, JOB_FAILED, {"error": error}, reason)
        elif status_code >= 500 or status_code <= 0:
            what = f"HTTP {status_code}" if status_code > 0 else "no response"
            work.handler.ended(work, 1, JOB_FAILED, None, f"the service answered {what}{took}")
        else:
            value = json.dumps({"status_code": status_code}).encode()
            work.handler.ended(work, 1, JOB_SUCCEEDED, {"format": "json", "data": value}, "")

    def open_tunnel(self, container: ContainerHandle, tunnel_id: str) -> None:
        """Asks the container's worker to open tunnel ``tunnel_id`` to it."""
        container.connections += 1
        container.worker.outbox.put_nowait(OpenTunnel(tunnel_id=tunnel_id, container_id=container.container_id))

    def tunnel_closed(self, container: ContainerHandle) -> None:
        """A connection to a service container ended: it may go idle."""
        container.connections = max(0, container.connections - 1)
        if not container.busy:
            container.idle_since = time.monotonic()

    def cancel(self, work: Work) -> None:
        """Takes an input off its queue, or stops it on its container."""
        pool = self.pools.get((work.deployment.deployment_id, work.spec.name))
        if pool is not None and work in pool.pending:
            pool.pending.remove(work)
            return
        input_id, is_async = work.input_id, work.spec.is_async
        container = self.containers.get(work.container_id)
        if container is not None and container.inflight.get(input_id) is work:
            del container.inflight[input_id]
            if not is_async:
                container.state = "stopping"  # the worker stops it: a sync input cannot be interrupted
            container.worker.outbox.put_nowait(CancelInput(job_id=input_id, container_id=container.container_id))
            if container.state == "ready":
                self._fill(container)

    def _scale(self, pool: FunctionPool, extra: int = 0) -> None:
        if pool.closed:
            return
        wanted = -(-len(pool.pending) // pool.spec.target_slots) + extra - pool.starting
        while wanted > 0 and len(pool.containers) < pool.limit:
            worker = self._pick_worker(pool)
            if worker is None:
                reason = self._unplaceable(pool)
                while reason and pool.pending:
                    work = pool.pending.popleft()
                    work.handler.ended(work, -1, "failed", None, reason)
                return
            self._start_container(pool, worker)
            wanted -= 1

    def _pick_worker(self, pool: FunctionPool) -> WorkerHandle | None:
        """The least loaded worker with room that may run ``pool``'s function; None when no
        connected worker may (its inputs wait for one)."""
        host = self.host_for(pool.deployment.account, pool.spec)
        best: WorkerHandle | None = None
        for worker in self.workers.values():
            if host is not None and worker.offer.get("hostname") != host:
                continue
            if pool.filters and unmet(pool.filters, worker.offer) is not None:
                continue
            if len(worker.containers) >= worker.capacity and not self._reclaim_idle(worker):
                continue
            if best is None or len(worker.containers) < len(best.containers):
                best = worker
        return best

    def _unplaceable(self, pool: FunctionPool) -> str | None:
        """Why no connected worker can ever run ``pool``'s function, or None when one can
        (or none is connected yet: one may come)."""
        if not self.workers or not pool.filters:
            return None
        offered = []
        first: OfferFilter | None = None
        for worker in self.workers.values():
            f = unmet(pool.filters, worker.offer)
            if f is None:
                return None
            first = first or f
            offered.append(f"{worker.worker_id} offers {describe_offer(f, worker.offer)}")
        return (
            f"no connected worker can run function {pool.spec.name!r}: it needs {first} "
            f"({'; '.join(offered[:3])}); change its placement options or start a worker that offers it"
        )

    def _reclaim_idle(self, worker: WorkerHandle) -> bool:
        """Stops the longest-idle container on a full worker to make room."""
        idle = [c for c in worker.containers.values() if c.state == "ready" and not c.busy]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._stop_container(victim, "making room for another function")
        return True

    def _start_container(self, pool: FunctionPool, worker: WorkerHandle) -> None:
        refusal = self.refusal(pool.deployment.account, worker)
        if refusal is not None:
            other, admitted = self._admitting_worker(pool)
            if other is None:
                if not admitted:
                    self._refuse(pool, refusal)
                return  # a worker that admits the account is full: the inputs wait for room
            worker = other
        container = ContainerHandle(container_id=ids.new_id("containers"), worker=worker, pool=pool)
        self.placed(pool.deployment.account, pool.spec, str(worker.offer.get("hostname") or ""))
        pool.containers.add(container)
        worker.containers[container.container_id] = container
        self.containers[container.container_id] = container
        worker.outbox.put_nowait(
            StartContainer(
                container_id=container.container_id,
                account=pool.deployment.account,
                deployment_id=pool.deployment.deployment_id,
                app_name=pool.deployment.app_name,
                spec=pool.spec,
                archive_sha256=pool.deployment.archive_sha256,
            )
        )
        self.container_started(container)

    def _admitting_worker(self, pool: FunctionPool) -> tuple[WorkerHandle | None, bool]:
        """A worker with room that may run ``pool``'s function and that :attr:`refusal`
        admits the pool's account to (a free worker when a priced one was refused), and
        whether any such worker is connected, with room or not."""
        account = pool.deployment.account
        host = self.host_for(account, pool.spec)
        admitted = False
        for worker in sorted(self.workers.values(), key=lambda w: len(w.containers)):
            if host is not None and worker.offer.get("hostname") != host:
                continue
            if pool.filters and unmet(pool.filters, worker.offer) is not None:
                continue
            if self.refusal(account, worker) is None:
                if len(worker.containers) < worker.capacity:
                    return worker, True
                admitted = True
        return None, admitted

    def _refuse(self, pool: FunctionPool, reason: str) -> None:
        """Fails a pool's waiting inputs with ``reason`` (like an unplaceable function's) and
        tells a waiting service request (the ingress answers with the reason)."""
        while pool.pending:
            work = pool.pending.popleft()
            if not work.final:
                work.handler.ended(work, -1, "failed", None, reason)
        pool.startup_failure = reason
        # Later, not now: a service request asks for a container and only then waits on
        # ``pool.changed``, which must still be the event this wakes.
        asyncio.get_running_loop().call_soon(pool.notify)

    def end_container(self, container_id: str, reason: str) -> None:
        """Ends a container now: its running inputs fail with ``reason`` and the worker stops
        it (billing ends the containers of an account whose balance ran out)."""
        container = self.containers.get(container_id)
        if container is None:
            return
        self._container_gone(container, reason, startup_failed=False)
        container.worker.outbox.put_nowait(StopContainer(container_id=container_id, reason=reason))

    def _stop_container(self, container: ContainerHandle, reason: str) -> None:
        self._forget(container)
        container.state = "stopping"
        container.worker.outbox.put_nowait(StopContainer(container_id=container.container_id, reason=reason))

    def _forget(self, container: ContainerHandle) -> None:
        container.pool.containers.discard(container)
        container.worker.containers.pop(container.container_id, None)
        if self.containers.pop(container.container_id, None) is not None:
            self.container_ended(container)

    def ensure_warm(self, deployment: DeploymentRecord) -> None:
        """Starts containers for functions whose ``min_containers`` are not running."""
        for spec in deployment.functions:
            if spec.min_containers:
                pool = self.pool(deployment, spec)
                missing = spec.min_containers - len(pool.containers)
                for _ in range(missing):
                    worker = self._pick_worker(pool)
                    if worker is None:
                        break
                    self._start_container(pool, worker)

    # -- worker events ---------------------------------------------------------------

    def worker_connected(self, worker_id: str, offer: dict[str, Any]) -> WorkerHandle:
        """Registers a worker's session; a worker that reconnects starts afresh."""
        old = self.workers.get(worker_id)
        if old is not None:
            self.worker_lost(old, "the worker reconnected")
        worker = WorkerHandle(worker_id=worker_id, offer=offer)
        self.workers[worker_id] = worker
        self._rescale_all()
        return worker

    def _rescale_all(self) -> None:
        for pool in list(self.pools.values()):
            if pool.pending:
                self._scale(pool)
        for dep in self.live_deployments():
            self.ensure_warm(dep)

    def worker_lost(self, worker: WorkerHandle, reason: str) -> None:
        """Ends what ran on a worker whose session ended."""
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
        for container in list(worker.containers.values()):
            self._container_gone(container, f"worker {worker.worker_id} was lost ({reason})", startup_failed=False)
        self._rescale_all()

    def container_ready(self, container_id: str) -> None:
        container = self.containers.get(container_id)
        if container is None or container.state != "starting":
            return
        container.state = "ready"
        container.idle_since = time.monotonic()
        container.pool.startup_failure = ""
        container.pool.notify()
        if container.pool.closed:
            self._stop_container(container, "its deployment stopped")
            return
        self._fill(container)

    def container_exited(self, container_id: str, reason: str, *, startup_failed: bool) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            self._container_gone(container, reason, startup_failed=startup_failed)

    def _container_gone(self, container: ContainerHandle, reason: str, *, startup_failed: bool) -> None:
        self._forget(container)
        container.state = "gone"
        pool = container.pool
        if startup_failed:
            pool.startup_failure = reason
        pool.notify()
        lost, container.inflight = list(container.inflight.values()), {}
        requests, container.requests = list(container.requests.values()), {}
        if pool.spec.prefetch:
            # A serial container runs what it holds in the order handed over: only the
            # oldest was running; the prefetched ones never started and run elsewhere.
            lost, unstarted = lost[: pool.spec.slots], lost[pool.spec.slots :]
            for work in reversed(unstarted):
                if not work.final:
                    work.handler.returned(work)
                    pool.pending.appendleft(work)
        for work in lost:
            if not work.final:
                work.handler.ended(
                    work,
                    -1,
                    "failed",
                    None,
                    f"container {container.container_id} exited while running the input: {reason}",
                )
        for work in requests:
            what = f"container {container.container_id} exited while answering the request: {reason}"
            work.handler.ended(work, -1, JOB_FAILED, None, what)
        if startup_failed:
            # An import error repeats for every container: fail the waiting inputs with it.
            while pool.pending:
                work = pool.pending.popleft()
                work.handler.ended(work, -1, "failed", None, f"the function's container failed to start: {reason}")
        elif pool.pending:
            self._scale(pool)

    def input_finished(
        self, container_id: str, input_id: str, attempt: int, status: str, result: dict[str, Any] | None, reason: str
    ) -> None:
        """An attempt ended on a container."""
        container = self.containers.get(container_id)
        if container is None:
            return
        work = container.inflight.pop(input_id, None)
        if work is None:
            return  # cancelled meanwhile
        if status == JOB_QUEUED:  # handed over but never started: its container is stopping
            container.state = "stopping"
            if not work.final:
                work.handler.returned(work)
                container.pool.pending.appendleft(work)
                self._scale(container.pool)
            return
        if status == JOB_TIMED_OUT and not work.spec.is_async:
            container.state = "stopping"  # the worker stops it: a sync input cannot be interrupted
        work.handler.ended(work, attempt, status, result, reason)
        if container.state == "ready":
            self._fill(container)

    def _inflight(self, container_id: str, input_id: str) -> Work | None:
        container = self.containers.get(container_id)
        return container.inflight.get(input_id) if container is not None else None

    def input_log(self, container_id: str, input_id: str, attempt: int, stream: str, data: str) -> None:
        work = self._find(input_id, container_id)
        if work is not None:
            work.handler.log(work, attempt, stream, data)
            return
        container = self.containers.get(container_id)
        request = container.requests.get(input_id) if container is not None else None
        if request is not None:  # a web request's output: its job's, and the service's
            request.handler.log(request, attempt, stream, data)
            self.service_log(container_id, stream, data)

    def input_yield(self, container_id: str, input_id: str, attempt: int, seq: int, fmt: str, data: bytes) -> None:
        work = self._find(input_id, container_id)
        if work is not None:
            work.handler.yielded(work, attempt, seq, fmt, data)

    def _find(self, input_id: str, container_id: str) -> Work | None:
        if container_id:
            return self._inflight(container_id, input_id)
        for container in self.containers.values():
            work = container.inflight.get(input_id)
            if work is not None:
                return work
        return None

    # -- deployments -----------------------------------------------------------------

    def deployment_stopped(self, deployment_id: str, reason: str) -> None:
        """Stops a deployment's idle containers and fails its waiting inputs."""
        for key, pool in list(self.pools.items()):
            if key[0] != deployment_id:
                continue
            pool.closed = True
            while pool.pending:
                work = pool.pending.popleft()
                work.handler.ended(work, -1, "failed", None, reason)
            for container in list(pool.containers):
                if container.state == "starting" or not container.inflight:
                    self._stop_container(container, reason)
            if not pool.containers:
                del self.pools[key]

    async def _reap_idle(self) -> None:
        try:
            while True:
                await asyncio.sleep(REAP_INTERVAL_S)
                now = time.monotonic()
                for key, pool in list(self.pools.items()):
                    idle = sorted(
                        (c for c in pool.containers if c.state == "ready" and not c.busy),
                        key=lambda c: c.idle_since,
                    )
                    keep = pool.spec.min_containers if not pool.closed else 0
                    removable = max(0, len(pool.containers) - keep)
                    for container in idle[:removable]:
                        if now - container.idle_since >= pool.idle_window_s or pool.closed:
                            self._stop_container(container, "idle past its scale-down window")
                    if pool.closed and not pool.containers:
                        self.pools.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover
            log.exception("idle reaper died")
            raise
