"""Image builds: each image built once per executor kind, on the workers that run it.

An image is named by its content (``im-…``, see :mod:`apothic.server.servicers.image_specs`).
:meth:`ImageManager.build` asks one connected worker of each executor kind (process,
docker) that has no recorded build to build it, streams the build's output back, records
the success, and answers from the record next time. Builds of the same image for the same
executor share one run. A worker that joins later builds an image the first time one of
its containers needs it (the container start carries the image's archives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from apothic.server.scheduler import BuildImage, Scheduler, WorkerHandle
from apothic.server.store import Store

log = logging.getLogger("apothic.server.images")

#: Longest a build may take before the deploy waiting for it gives up.
BUILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class BuildLine:
    """A line of a build's output."""

    image_id: str
    executor: str
    step: int
    line: str


@dataclass(frozen=True)
class BuildOutcome:
    """How an image's build for one executor kind ended (see ``ImageBuildResult``)."""

    image_id: str
    executor: str
    ok: bool
    cached: bool = False
    deferred: bool = False
    failed_step: int = -1
    error: str = ""
    log_tail: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        """The failure in one message: where, why, and the end of the output."""
        where = "its base" if self.failed_step < 0 else f"step {self.failed_step}"
        text = f"image {self.image_id} failed to build on a {self.executor} worker at {where}: {self.error}"
        return text + (f"\n--- build output (last lines) ---\n{self.log_tail}" if self.log_tail else "")


BuildEvent = BuildLine | BuildOutcome


@dataclass(eq=False)
class _Flight:
    """A build running on one worker, and who is listening to it."""

    image_id: str
    executor: str
    worker: WorkerHandle
    started: float = field(default_factory=time.monotonic)
    listeners: list[asyncio.Queue[BuildEvent]] = field(default_factory=list)

    def publish(self, event: BuildEvent) -> None:
        for q in self.listeners:
            q.put_nowait(event)


class ImageManager:
    """Runs image builds on the workers and keeps their record."""

    def __init__(self, store: Store, scheduler: Scheduler, *, build_timeout_s: float = BUILD_TIMEOUT_S) -> None:
        self.store = store
        self.scheduler = scheduler
        self.build_timeout_s = build_timeout_s
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _workers_by_executor(self) -> dict[str, list[WorkerHandle]]:
        out: dict[str, list[WorkerHandle]] = {}
        for worker in self.scheduler.workers.values():
            out.setdefault(worker.executor, []).append(worker)
        return out

    async def build(
        self, image_id: str, spec: bytes, contexts: tuple[str, ...], *, force: bool = False
    ) -> AsyncIterator[BuildEvent]:
        """Builds an image for every executor kind connected; yields output lines and then
        one outcome per kind. With no worker connected, one ``deferred`` outcome."""
        kinds = self._workers_by_executor()
        if not kinds:
            yield BuildOutcome(image_id, "", ok=True, deferred=True)
            return
        recorded = {} if force else await self.store.image_builds(image_id)
        listener: asyncio.Queue[BuildEvent] = asyncio.Queue()
        flights: list[_Flight] = []
        try:
            for executor, workers in sorted(kinds.items()):
                if executor in recorded:
                    yield BuildOutcome(image_id, executor, ok=True, cached=True)
                    continue
                flight = self._flights.get((image_id, executor))
                if flight is None:
                    worker = min(workers, key=lambda w: len(w.containers))
                    flight = self._flights[(image_id, executor)] = _Flight(image_id, executor, worker)
                    worker.outbox.put_nowait(BuildImage(image_id=image_id, spec=spec, contexts=contexts))
                flight.listeners.append(listener)
                flights.append(flight)
            deadline = time.monotonic() + self.build_timeout_s
            pending = {f.executor for f in flights}
            while pending:
                try:
                    event = await asyncio.wait_for(listener.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    for executor in sorted(pending):
                        yield BuildOutcome(
                            image_id,
                            executor,
                            ok=False,
                            error=f"the build did not finish within {self.build_timeout_s:g}s",
                        )
                    return
                if isinstance(event, BuildOutcome):
                    pending.discard(event.executor)
                yield event
        finally:
            for flight in flights:
                with contextlib.suppress(ValueError):
                    flight.listeners.remove(listener)

    async def ensure_built(self, image_id: str, spec: bytes, contexts: tuple[str, ...]) -> list[BuildOutcome]:
        """Builds an image where it is not built yet (see :meth:`build`); its outcomes."""
        return [e async for e in self.build(image_id, spec, contexts) if isinstance(e, BuildOutcome)]

    # -- from the workers' sessions ------------------------------------------------------

    def on_log(self, worker: WorkerHandle, image_id: str, step: int, line: str) -> None:
        """A line of a worker's build output."""
        flight = self._flights.get((image_id, worker.executor))
        if flight is not None and flight.worker is worker:
            flight.publish(BuildLine(image_id, worker.executor, step, line))

    def on_built(self, worker: WorkerHandle, outcome: BuildOutcome) -> None:
        """A worker finished a build (or found the image in its cache)."""
        outcome = replace(outcome, executor=worker.executor)
        if outcome.ok:
            worker.images.add(outcome.image_id)
        flight = self._flights.get((outcome.image_id, worker.executor))
        if flight is None or flight.worker is not worker:
            return

        async def finish() -> None:
            try:
                if outcome.ok:
                    await self.store.record_image_build(outcome.image_id, outcome.executor, outcome.seconds)
            except Exception:
                log.exception("image %s: could not record its build", outcome.image_id)
            finally:
                if self._flights.get((outcome.image_id, worker.executor)) is flight:
                    del self._flights[(outcome.image_id, worker.executor)]
                flight.publish(outcome)

        task = asyncio.create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def worker_lost(self, worker: WorkerHandle) -> None:
        """Fails the builds a worker was running when its session ended."""
        for key, flight in list(self._flights.items()):
            if flight.worker is worker:
                del self._flights[key]
                flight.publish(
                    BuildOutcome(
                        flight.image_id,
                        flight.executor,
                        ok=False,
                        error=f"worker {worker.worker_id} disconnected during the build; deploy again to retry",
                    )
                )
