"""Plain data the SDK hands back: jobs, their events, deployments and apps.

Frozen dataclasses, never protobuf messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apothic import _serialization as ser
from apothic.exceptions import FunctionTimeoutError, JobCancelledError, JobError, JobFailedError


class JobStatus(enum.StrEnum):
    """Where a job stands. ``queued`` → ``running`` → one of the four final states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        """Whether the job has ended."""
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its value or its error."""

    job_id: str
    status: JobStatus
    value_format: str = ser.CLOUDPICKLE
    value_data: bytes = b""
    error: ser.ErrorInfo | None = None
    reason: str = ""
    attempt: int = 0

    def unwrap(self) -> Any:
        """Returns the job's value, or raises what it ended with.

        Raises:
            FunctionTimeoutError: the attempt timed out.
            JobCancelledError: the job was cancelled.
            JobFailedError: the runtime failed the job.
            Exception: the user's own exception, re-created, with the remote traceback.
        """
        if self.status is JobStatus.SUCCEEDED:
            return ser.loads_value(self.value_format, self.value_data)
        where = f"job {self.job_id}"
        if self.status is JobStatus.TIMED_OUT:
            raise FunctionTimeoutError(f"{where} timed out: {self.reason}", job_id=self.job_id, reason=self.reason)
        if self.status is JobStatus.CANCELLED:
            raise JobCancelledError(f"{where} was cancelled: {self.reason}", job_id=self.job_id, reason=self.reason)
        if self.error is not None and self.error.type:
            exc = ser.rebuild_exception(self.error, job_id=self.job_id)
            if self.attempt > 1:
                exc.add_note(f"(job {self.job_id} failed after {self.attempt} attempts)")
            raise exc
        if self.status is JobStatus.FAILED:
            raise JobFailedError(f"{where} failed: {self.reason}", job_id=self.job_id, reason=self.reason)
        raise JobError(f"{where} has not ended (status {self.status})", job_id=self.job_id)


@dataclass(frozen=True)
class JobInfo:
    """A job's state."""

    job_id: str
    app_name: str
    function_name: str
    deployment_id: str
    status: JobStatus
    attempt: int
    reason: str
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: Outcome | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log. ``kind`` is ``job.<name>``; ``seq`` counts 1, 2, 3…"""

    job_id: str
    seq: int
    time: datetime | None
    app_name: str
    function_name: str

    kind = "job.event"


@dataclass(frozen=True)
class JobSnapshotEvent(JobEvent):
    """The job as it stands, sent first by ``watch(snapshot=True)``."""

    job: JobInfo | None = None
    kind = "job.snapshot"


@dataclass(frozen=True)
class JobQueuedEvent(JobEvent):
    """The job was accepted."""

    kind = "job.queued"


@dataclass(frozen=True)
class JobRunningEvent(JobEvent):
    """An attempt started."""

    attempt: int = 0
    worker_id: str = ""
    container_id: str = ""
    kind = "job.running"


@dataclass(frozen=True)
class JobLogEvent(JobEvent):
    """Output the job printed. ``stream`` is ``stdout``, ``stderr`` or ``system``."""

    stream: str = "stdout"
    data: str = ""
    kind = "job.log"


@dataclass(frozen=True)
class JobResultEvent(JobEvent):
    """The value or the error of the last attempt."""

    ok: bool = False
    value_format: str = ser.CLOUDPICKLE
    value_data: bytes = field(default=b"", repr=False)
    error: ser.ErrorInfo | None = None

    kind = "job.result"

    def value(self) -> Any:
        """Decodes the returned value (only when ``ok``)."""
        return ser.loads_value(self.value_format, self.value_data)


@dataclass(frozen=True)
class JobEndEvent(JobEvent):
    """The job's last event."""

    status: JobStatus = JobStatus.SUCCEEDED
    reason: str = ""
    kind = "job.end"


class DeploymentStatus(enum.StrEnum):
    """What a deployment is doing."""

    LIVE = "live"
    SUPERSEDED = "superseded"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployed version of an app."""

    deployment_id: str
    app_name: str
    version: int
    status: DeploymentStatus
    ephemeral: bool
    function_names: tuple[str, ...]
    created_at: datetime | None
    updated_at: datetime | None
    #: The URL of each web service of the deployment, by function name.
    web_urls: Mapping[str, str] = field(default_factory=dict)
    #: Each function's spec hash: equal in two deployments when nothing that decides how it
    #: runs changed (code, image, secrets, volumes, env, options).
    spec_hashes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceLogLine:
    """A chunk of what a web service's container printed (``apothic deployment logs``)."""

    container_id: str
    stream: str
    data: str
    time: datetime | None


@dataclass(frozen=True)
class DeploymentEvent:
    """A change to a deployment (``deployment.snapshot``, ``.created``, ``.stopped``…)."""

    deployment_id: str
    seq: int
    time: datetime | None
    kind: str
    deployment: DeploymentInfo | None


@dataclass(frozen=True)
class AppInfo:
    """An app and its live version."""

    name: str
    live_deployment_id: str
    version: int
    status: DeploymentStatus
    function_names: tuple[str, ...]
    updated_at: datetime | None


@dataclass(frozen=True)
class ScheduleInfo:
    """A scheduled function of an app's live deployment.

    Attributes:
        app_name: the app.
        function_name: the scheduled function.
        deployment_id: the live deployment whose schedule this is.
        schedule: a short description (``cron '*/5 * * * *' (UTC)``, ``every 30s``).
        cron: the cron expression, or "" for a period.
        timezone: the cron expression's time zone, or "" for a period.
        period_s: seconds between runs, or 0 for a cron expression.
        next_run_at: when the next run is due.
        last_run_at: the tick of the last run, if any.
        last_job_id: the job of the last run, if any.
    """

    app_name: str
    function_name: str
    deployment_id: str
    schedule: str
    cron: str
    timezone: str
    period_s: float
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: str


@dataclass(frozen=True)
class ImageBuildLine:
    """A line of an image build's output.

    Attributes:
        image_id: the image's content id (``im-…``).
        executor: the executor kind building it (``process`` or ``docker``).
        step: the step it belongs to (``-1``: the base).
        line: the text, without its newline.
    """

    image_id: str
    executor: str
    step: int
    line: str


@dataclass(frozen=True)
class ImageBuildResult:
    """How building an image for one executor kind ended.

    Attributes:
        image_id: the image's content id.
        executor: ``process`` or ``docker``.
        ok: the image is built (or was already).
        cached: nothing ran: it was built before.
        deferred: no worker was connected; it is built when a container first needs it.
        failed_step: the failing step's index (``-1``: the base) when not ``ok``.
        error: what failed and how to fix it.
        log_tail: the last lines of the build's output.
        seconds: how long the build took.
    """

    image_id: str
    executor: str
    ok: bool
    cached: bool = False
    deferred: bool = False
    failed_step: int = -1
    error: str = ""
    log_tail: str = ""
    seconds: float = 0.0
