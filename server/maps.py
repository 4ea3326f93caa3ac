"""Maps: one call that runs a function over a stream of inputs.

A map is one job (visible in listings, with the map's output as its log) whose inputs are
light items, not jobs of their own: results stream straight back to the caller, so a map
of 10,000 items writes one job record, not 10,000. Like a warm ``remote()``, the caller's
acknowledgement is the results themselves; a control-plane crash fails the map.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apothic.server.errors import InvalidArgument
from apothic.server.hub import Signal
from apothic.server.models import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_SUCCEEDED,
    JOB_TIMED_OUT,
    DeploymentRecord,
    FunctionSpecRecord,
)

if TYPE_CHECKING:
    from apothic.server.jobs import JobManager, LiveJob
    from apothic.server.scheduler import Scheduler

log = logging.getLogger("apothic.server.maps")


@dataclass(frozen=True)
class MapOutcome:
    """How one item ended."""

    index: int
    status: str
    result: dict[str, Any] | None
    reason: str
    attempts: int


@dataclass(eq=False)
class MapItem:
    """One input of a map, as the scheduler sees it."""

    call: MapCall
    index: int
    args: bytes
    attempt: int = 0
    container_id: str = ""
    done: bool = False
    prefetchable: bool = True

    @property
    def input_id(self) -> str:
        return f"{self.call.job.job_id}/{self.index}"

    @property
    def deployment(self) -> DeploymentRecord:
        return self.call.deployment

    @property
    def spec(self) -> FunctionSpecRecord:
        return self.call.spec

    @property
    def handler(self) -> MapCall:
        return self.call

    @property
    def args_format(self) -> str:
        return self.call.args_format

    @property
    def result_format(self) -> str:
        return self.call.result_format

    @property
    def final(self) -> bool:
        return self.done


@dataclass(eq=False)
class MapCall:
    """A running map: feeds items to the scheduler, collects their outcomes for the caller."""

    jobs: JobManager
    scheduler: Scheduler
    job: LiveJob
    args_format: str
    result_format: str
    items: dict[int, MapItem] = field(default_factory=dict)
    outcomes: list[MapOutcome] = field(default_factory=list)
    changed: Signal = field(default_factory=Signal)
    inputs_closed: bool = False
    finished: int = 0
    failed: int = 0

    @property
    def deployment(self) -> DeploymentRecord:
        return self.job.deployment

    @property
    def spec(self) -> FunctionSpecRecord:
        return self.job.spec

    @property
    def complete(self) -> bool:
        return self.inputs_closed and self.finished == len(self.items)

    def add(self, inputs: list[tuple[int, bytes]]) -> None:
        """Queues a batch of ``(index, args)`` inputs.

        Raises:
            InvalidArgument: an index repeats, or inputs come after the end.
        """
        if self.inputs_closed:
            raise InvalidArgument("map inputs arrived after the input stream ended")
        for index, args in inputs:
            if index in self.items:
                raise InvalidArgument(f"map input index {index} was sent twice")
            item = MapItem(call=self, index=index, args=args)
            self.items[index] = item
            if self.job.final:  # the map was cancelled: later inputs end at once
                self._cancelled(item, self.job.record.reason)
            else:
                self.scheduler.submit(item)

    def close_inputs(self) -> None:
        """No more inputs will come."""
        self.inputs_closed = True
        self._maybe_done()

    def take(self) -> list[MapOutcome]:
        """The outcomes that arrived since the last call."""
        out, self.outcomes = self.outcomes, []
        return out

    def cancel(self, reason: str) -> None:
        """Stops every unfinished item, each ending as cancelled (the caller went away, or
        the map's job was cancelled: the caller then gets those outcomes instead of waiting
        for results that will never come)."""
        if not self.job.final:
            self.jobs.finish(self.job, JOB_CANCELLED, None, reason)
        unfinished = [item for item in self.items.values() if not item.done]
        for item in unfinished:
            self._cancelled(item, reason)
        for item in unfinished:
            self.scheduler.cancel(item)

    def _cancelled(self, item: MapItem, reason: str) -> None:
        item.done = True
        self.finished += 1
        self.failed += 1
        self.outcomes.append(MapOutcome(item.index, JOB_CANCELLED, None, reason, item.attempt))
        self.changed.fire()

    # -- WorkHandler ----------------------------------------------------------------

    def started(self, item: MapItem, worker_id: str, container_id: str) -> int:
        item.attempt += 1
        if self.job.record.attempt == 0:
            self.jobs.started(self.job, worker_id, container_id)
        return item.attempt

    def log(self, item: MapItem, attempt: int, stream: str, data: str) -> None:
        if attempt == item.attempt:
            self.jobs.log(self.job, self.job.record.attempt, stream, data)

    def yielded(self, item: MapItem, attempt: int, seq: int, value_format: str, data: bytes) -> None:
        """Items of a generator mapped over are not collected."""

    def ended(self, item: MapItem, attempt: int, status: str, result: dict[str, Any] | None, reason: str) -> None:
        if item.done or (attempt != -1 and attempt != item.attempt):
            return
        if status in (JOB_FAILED, JOB_TIMED_OUT) and 1 <= item.attempt <= self.spec.retry_max:
            delay = self.spec.retry_delay(item.attempt)
            asyncio.get_running_loop().call_later(delay, self._retry, item)
            return
        item.done = True
        self.finished += 1
        if status != JOB_SUCCEEDED:
            self.failed += 1
        if item.attempt > 1 and status != JOB_SUCCEEDED:
            reason = f"{reason} (after {item.attempt} attempts)"
        self.outcomes.append(MapOutcome(item.index, status, result, reason, item.attempt))
        self.changed.fire()
        self._maybe_done()

    def returned(self, item: MapItem) -> None:
        item.attempt -= 1

    def _retry(self, item: MapItem) -> None:
        if not item.done:
            self.scheduler.submit(item)

    def _maybe_done(self) -> None:
        if self.complete and not self.job.final:
            total = len(self.items)
            summary = f"{total} inputs: {total - self.failed} succeeded, {self.failed} failed"
            if self.job.record.attempt == 0:
                self.jobs.started(self.job, "", "")
            self.jobs.finish(self.job, JOB_SUCCEEDED if not self.failed else JOB_FAILED, None, summary)
            self.changed.fire()
