"""``Job``: a handle on one call of a function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal, overload

from apothic._lazy import get_client
from apothic._sync import iter_sync, run_sync
from apothic.config import ClientConfig
from apothic.models import JobEvent, JobInfo, JobStatus
from apothic.watch import WatchMarker

#: A WaitJob call waits at most this long before the SDK asks again (keeps RPCs short).
_WAIT_SLICE_S = 30.0


class _JobAio:
    """The async forms of :class:`Job`'s methods (``job.aio.wait()``…)."""

    def __init__(self, job: Job) -> None:
        self._job = job

    async def info(self) -> JobInfo:
        """Returns the job's full state."""
        return await get_client(self._job._config).get_job(self._job.job_id)

    async def status(self) -> JobStatus:
        """Returns the job's status."""
        return (await self.info()).status

    async def logs(self) -> str:
        """Returns everything the job printed so far, stdout and stderr interleaved."""
        events = await get_client(self._job._config).job_logs(self._job.job_id)
        return "".join(e.data for e in events)

    async def wait(self, timeout: float | None = None) -> Any:
        """Waits for the job to end and returns its value.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: the job had not ended within ``timeout``.
            Exception: what the job ended with (see :meth:`apothic.models.Outcome.unwrap`).
        """
        client = get_client(self._job._config)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S, deadline - loop.time()))
            info, done = await client.wait_job(self._job.job_id, left)
            if done and info.outcome is not None:
                return info.outcome.unwrap()
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {self._job.job_id} is still {info.status} after {timeout}s")

    async def cancel(self) -> JobStatus:
        """Cancels the job; returns its status afterwards."""
        return (await get_client(self._job._config).cancel_job(self._job.job_id)).status

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: Literal[False] = False
    ) -> AsyncIterator[JobEvent]: ...

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: Literal[True]
    ) -> AsyncIterator[JobEvent | WatchMarker]: ...

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: bool
    ) -> AsyncIterator[JobEvent | WatchMarker]: ...

    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: bool = False
    ) -> AsyncIterator[JobEvent | WatchMarker]:
        """Streams the job's events until its ``job.end`` event.

        Events come in ``seq`` order, none missing or repeated, and only once they are
        durable: a ``seq`` seen here names the same event after a control-plane restart, so
        ``after_seq`` resumes a watch exactly where it left off.

        Args:
            snapshot: first yield a ``job.snapshot`` event with the job as of one ``seq``
                (later events follow it).
            after_seq: resume after this event number.
            markers: also yield the watch markers of :mod:`apothic.watch` between events:
                :class:`~apothic.watch.SnapshotEnd` after the snapshot and
                :class:`~apothic.watch.Progress` while the job is quiet, their ``rev`` being
                a ``seq`` (a job's log is kept whole, so no :class:`~apothic.watch.Reset`).

        Raises:
            NotFoundError: no such job.
            InvalidArgumentError: ``after_seq`` is after the job's last event.
        """
        return self._watch(snapshot, after_seq, markers)

    async def _watch(self, snapshot: bool, after_seq: int, markers: bool) -> AsyncIterator[JobEvent | WatchMarker]:
        async for item in get_client(self._job._config).watch_job(
            self._job.job_id, snapshot=snapshot, after_seq=after_seq
        ):
            if markers or isinstance(item, JobEvent):
                yield item


class Job:
    """One call of a function, running or ended. Returned by ``fn.spawn(...)``.

    Attributes:
        job_id: the job's id (``jobs:…``).
    """

    def __init__(self, job_id: str, *, client: ClientConfig | None = None) -> None:
        self.job_id = job_id
        self._config = client
        self.aio = _JobAio(self)

    @classmethod
    def from_id(cls, job_id: str, *, client: ClientConfig | None = None) -> Job:
        """A handle on an existing job."""
        return cls(job_id, client=client)

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    def info(self) -> JobInfo:
        """Returns the job's full state."""
        return run_sync(self.aio.info(), "job.info()")

    def status(self) -> JobStatus:
        """Returns the job's status."""
        return run_sync(self.aio.status(), "job.status()")

    def logs(self) -> str:
        """Returns everything the job printed so far."""
        return run_sync(self.aio.logs(), "job.logs()")

    def wait(self, timeout: float | None = None) -> Any:
        """Waits for the job to end and returns its value (see :meth:`_JobAio.wait`)."""
        return run_sync(self.aio.wait(timeout), "job.wait()")

    def cancel(self) -> JobStatus:
        """Cancels the job; returns its status afterwards."""
        return run_sync(self.aio.cancel(), "job.cancel()")

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: Literal[False] = False
    ) -> Iterator[JobEvent]: ...

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: Literal[True]
    ) -> Iterator[JobEvent | WatchMarker]: ...

    @overload
    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: bool
    ) -> Iterator[JobEvent | WatchMarker]: ...

    def watch(
        self, *, snapshot: bool = True, after_seq: int = 0, markers: bool = False
    ) -> Iterator[JobEvent | WatchMarker]:
        """Yields the job's events until its ``job.end`` event, and with ``markers=True`` the
        watch markers between them (see :meth:`_JobAio.watch`).

        Example::

            last = 0
            for item in job.watch(snapshot=False, markers=True):
                if isinstance(item, apothic.JobEvent):
                    last = item.seq  # a checkpoint: job.watch(after_seq=last) resumes here
        """
        return iter_sync(self.aio.watch(snapshot=snapshot, after_seq=after_seq, markers=markers), "job.watch()")


#: Waits a gather keeps in flight at once.
_GATHER_CONCURRENCY = 256


class _Gather:
    """``apothic.gather(*jobs)``: waits for many jobs at once; ``apothic.gather.aio`` is the
    async form."""

    async def aio(self, *jobs: Job, return_exceptions: bool = False) -> list[Any]:
        """Waits for every job and returns their values in the given order.

        Args:
            jobs: the jobs to wait for.
            return_exceptions: put a failed job's exception in its place instead of raising
                the first one.
        """
        room = asyncio.Semaphore(_GATHER_CONCURRENCY)

        async def one(job: Job) -> Any:
            async with room:
                try:
                    return await job.aio.wait()
                except Exception as exc:
                    if return_exceptions:
                        return exc
                    raise

        return list(await asyncio.gather(*(one(job) for job in jobs)))

    def __call__(self, *jobs: Job, return_exceptions: bool = False) -> list[Any]:
        """Waits for every job and returns their values in the given order (see :meth:`aio`)."""
        return run_sync(self.aio(*jobs, return_exceptions=return_exceptions), "apothic.gather()")


gather = _Gather()
