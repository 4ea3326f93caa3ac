"""Placement: which container runs which job, and when containers start and stop.

All state here is in memory; the store holds the jobs. Workers are reached only through
their session outboxes (commands below), which the worker servicer turns into messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apothic.server import ids
from apothic.server.models import JOB_TIMED_OUT, DeploymentRecord, FunctionSpecRecord

if TYPE_CHECKING:
    from apothic.server.jobs import JobManager, LiveJob

log = logging.getLogger("apothic.server.scheduler")

#: Containers one worker runs at once, per offered CPU core.
CONTAINERS_PER_CORE = 4
#: How often idle containers are checked for scale-down.
REAP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class StartContainer:
    container_id: str
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


Command = StartContainer | StopContainer | RunInput | CancelInput


@dataclass(eq=False)
class WorkerHandle:
    """A connected worker and its session outbox."""

    worker_id: str
    offer: dict[str, Any]
    #: Commands for the worker's session; None ends the session.
    outbox: asyncio.Queue[Command | None] = field(default_factory=asyncio.Queue)
    containers: dict[str, ContainerHandle] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        cores = float(self.offer.get("cpu_cores") or 1)
        return max(2, int(cores * CONTAINERS_PER_CORE))


@dataclass(eq=False)
class ContainerHandle:
    container_id: str
    worker: WorkerHandle
    pool: FunctionPool
    state: str = "starting"  # starting | idle | busy | stopping
    job: LiveJob | None = None
    idle_since: float = 0.0


@dataclass(eq=False)
class FunctionPool:
    """The containers and waiting jobs of one function of one deployment."""

    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    idle: deque[ContainerHandle] = field(default_factory=deque)
    pending: deque[LiveJob] = field(default_factory=deque)
    containers: set[ContainerHandle] = field(default_factory=set)
    closed: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.deployment.deployment_id, self.spec.name)

    @property
    def starting(self) -> int:
        return sum(1 for c in self.containers if c.state == "starting")

    @property
    def limit(self) -> int:
        return self.spec.max_containers or 1_000_000


class Scheduler:
    """Places jobs on warm containers, starting containers on workers when needed."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        jobs.scheduler = self
        self.workers: dict[str, WorkerHandle] = {}
        self.pools: dict[tuple[str, str], FunctionPool] = {}
        self.containers: dict[str, ContainerHandle] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="apothic-scheduler-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    # -- jobs ------------------------------------------------------------------------

    def _pool(self, job: LiveJob) -> FunctionPool:
        key = (job.deployment.deployment_id, job.spec.name)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = FunctionPool(deployment=job.deployment, spec=job.spec)
        return pool

    def submit(self, job: LiveJob) -> None:
        """Runs the job on an idle container, or queues it and scales up."""
        pool = self._pool(job)
        if pool.closed:
            # A call pinned to a superseded deployment whose containers are still busy
            # retiring: a closed pool only stops containers, so the job would never run.
            pool.closed = False
        while pool.idle:
            container = pool.idle.popleft()
            if container.state == "idle":
                self._assign(container, job)
                return
        pool.pending.append(job)
        self._scale(pool)

    def _assign(self, container: ContainerHandle, job: LiveJob) -> None:
        container.state = "busy"
        container.job = job
        attempt = self.jobs.mark_running(job, container.worker.worker_id, container.container_id)
        rec = job.record
        container.worker.outbox.put_nowait(
            RunInput(
                container_id=container.container_id,
                job_id=rec.job_id,
                attempt=attempt,
                args_format=rec.args_format,
                args=rec.args,
                result_format=rec.result_format,
                timeout_s=job.spec.timeout_s,
            )
        )

    def cancel(self, job: LiveJob) -> None:
        """Takes a job off its queue or stops the container running it."""
        pool = self.pools.get((job.deployment.deployment_id, job.spec.name))
        if pool is not None and job in pool.pending:
            pool.pending.remove(job)
            return
        job_id = job.job_id
        container = self.containers.get(job.container_id)
        if container is not None and container.job is job:
            container.job = None
            container.state = "stopping"
            container.worker.outbox.put_nowait(CancelInput(job_id=job_id, container_id=container.container_id))

    def _scale(self, pool: FunctionPool) -> None:
        wanted = len(pool.pending) - pool.starting
        while wanted > 0 and len(pool.containers) < pool.limit:
            worker = self._pick_worker()
            if worker is None:
                return
            self._start_container(pool, worker)
            wanted -= 1

    def _pick_worker(self) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        for worker in self.workers.values():
            if len(worker.containers) >= worker.capacity and not self._reclaim_idle(worker):
                continue
            if best is None or len(worker.containers) < len(best.containers):
                best = worker
        return best

    def _reclaim_idle(self, worker: WorkerHandle) -> bool:
        """Stops the longest-idle container on a full worker to make room."""
        idle = [c for c in worker.containers.values() if c.state == "idle"]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._stop_container(victim, "making room for another function")
        return True

    def _start_container(self, pool: FunctionPool, worker: WorkerHandle) -> None:
        container = ContainerHandle(container_id=ids.new_id("containers"), worker=worker, pool=pool)
        pool.containers.add(container)
        worker.containers[container.container_id] = container
        self.containers[container.container_id] = container
        worker.outbox.put_nowait(
            StartContainer(
                container_id=container.container_id,
                deployment_id=pool.deployment.deployment_id,
                app_name=pool.deployment.app_name,
                spec=pool.spec,
                archive_sha256=pool.deployment.archive_sha256,
            )
        )

    def _stop_container(self, container: ContainerHandle, reason: str) -> None:
        self._forget(container)
        container.state = "stopping"
        container.worker.outbox.put_nowait(StopContainer(container_id=container.container_id, reason=reason))

    def _forget(self, container: ContainerHandle) -> None:
        pool = container.pool
        pool.containers.discard(container)
        with contextlib.suppress(ValueError):
            pool.idle.remove(container)
        container.worker.containers.pop(container.container_id, None)
        self.containers.pop(container.container_id, None)

    def _make_idle(self, container: ContainerHandle) -> None:
        pool = container.pool
        container.job = None
        if pool.closed:
            self._stop_container(container, "its deployment stopped")
            return
        if pool.pending:
            self._assign(container, pool.pending.popleft())
            return
        container.state = "idle"
        container.idle_since = time.monotonic()
        pool.idle.append(container)

    # -- worker events ---------------------------------------------------------------

    def worker_connected(self, worker_id: str, offer: dict[str, Any]) -> WorkerHandle:
        """Registers a worker's session; a worker that reconnects starts afresh."""
        old = self.workers.get(worker_id)
        if old is not None:
            self.worker_lost(old, "the worker reconnected")
        worker = WorkerHandle(worker_id=worker_id, offer=offer)
        self.workers[worker_id] = worker
        for pool in list(self.pools.values()):
            if pool.pending:
                self._scale(pool)
        return worker

    def worker_lost(self, worker: WorkerHandle, reason: str) -> None:
        """Fails what ran on a worker whose session ended."""
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
        for container in list(worker.containers.values()):
            self._container_gone(container, f"worker {worker.worker_id} was lost ({reason})", startup_failed=False)
        for pool in list(self.pools.values()):
            if pool.pending:
                self._scale(pool)

    def container_ready(self, container_id: str) -> None:
        container = self.containers.get(container_id)
        if container is None or container.state != "starting":
            return
        self._make_idle(container)

    def container_exited(self, container_id: str, reason: str, *, startup_failed: bool) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            self._container_gone(container, reason, startup_failed=startup_failed)

    def _container_gone(self, container: ContainerHandle, reason: str, *, startup_failed: bool) -> None:
        self._forget(container)
        pool = container.pool
        job, container.job = container.job, None
        container.state = "gone"
        if job is not None and not job.final:
            self.jobs.fail(job, f"container {container.container_id} exited while running the job: {reason}")
        if startup_failed:
            # An import error repeats for every container: fail the waiting jobs with it.
            while pool.pending:
                self.jobs.fail(pool.pending.popleft(), f"the function's container failed to start: {reason}")
        elif pool.pending:
            self._scale(pool)

    def input_finished(
        self, container_id: str, job_id: str, attempt: int, status: str, result: dict[str, Any] | None, reason: str
    ) -> None:
        """An attempt ended on a container."""
        container = self.containers.get(container_id)
        job = self.jobs.live(job_id)
        if job is not None and not job.final and job.record.attempt == attempt:
            self.jobs.finish(job, status, result, reason)
        if container is None:
            return
        if status == JOB_TIMED_OUT or container.state != "busy" or container.job is not job:
            return  # the worker stops timed-out and cancelled containers itself
        self._make_idle(container)

    def input_log(self, job_id: str, attempt: int, stream: str, data: str) -> None:
        job = self.jobs.live(job_id)
        if job is not None:
            self.jobs.add_log(job, attempt, stream, data)

    # -- deployments -----------------------------------------------------------------

    def deployment_stopped(self, deployment_id: str, reason: str) -> None:
        """Stops a deployment's containers and fails its waiting jobs."""
        for key, pool in list(self.pools.items()):
            if key[0] != deployment_id:
                continue
            pool.closed = True
            while pool.pending:
                self.jobs.fail(pool.pending.popleft(), reason)
            for container in list(pool.containers):
                if container.state in ("idle", "starting"):
                    self._stop_container(container, reason)
            if not pool.containers:
                del self.pools[key]

    async def _reap_idle(self) -> None:
        try:
            while True:
                await asyncio.sleep(REAP_INTERVAL_S)
                now = time.monotonic()
                for key, pool in list(self.pools.items()):
                    for container in list(pool.idle):
                        if now - container.idle_since >= pool.spec.scaledown_window_s:
                            self._stop_container(container, "idle past its scale-down window")
                    if pool.closed and not pool.containers:
                        self.pools.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover
            log.exception("idle reaper died")
            raise
