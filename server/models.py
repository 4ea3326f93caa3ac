"""Records the control plane keeps in memory and in the store: small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apothic._container.protocol import prefetch_for
from apothic.schedules import Cron, Period

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_TIMED_OUT = "timed_out"
FINAL_JOB_STATUSES = frozenset({JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_TIMED_OUT})

DEPLOYMENT_LIVE = "live"
DEPLOYMENT_SUPERSEDED = "superseded"
DEPLOYMENT_STOPPED = "stopped"


def utcnow() -> datetime:
    """The server's clock."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class FunctionSpecRecord:
    """A deployed function's spec."""

    name: str
    module: str
    qualname: str
    pickled_function: bytes
    timeout_s: float
    startup_timeout_s: float
    max_containers: int
    scaledown_window_s: float
    options_json: str
    retry_max: int = 0
    retry_initial_delay_s: float = 1.0
    retry_backoff: float = 2.0
    retry_max_delay_s: float = 60.0
    max_concurrent_inputs: int = 1
    target_concurrent_inputs: int = 1
    batch_max_size: int = 0
    batch_wait_ms: float = 0.0
    max_pending_tasks: int = 0
    min_containers: int = 0
    is_generator: bool = False
    is_async: bool = False
    #: A Cron-scheduled function's expression and time zone ("" when not cron-scheduled).
    schedule_cron: str = ""
    schedule_timezone: str = ""
    #: Seconds between a Period-scheduled function's runs (0 when not period-scheduled).
    schedule_period_s: float = 0.0
    #: Secrets the container's environment is built from, in order: a secret's name, or
    #: ``inline:<token>`` for sealed values sent with the deploy (see apothic.server.secrets).
    secrets: tuple[str, ...] = ()
    #: Volumes the container mounts, each ``"<name>:<mount path>"`` (see
    #: :func:`apothic.server.volumes.mount_ref`).
    volumes: tuple[str, ...] = ()
    #: S3-compatible buckets the container mounts, each a JSON reference without credentials
    #: (see :func:`apothic.server.buckets.mount_ref`).
    bucket_mounts: tuple[str, ...] = ()
    #: What decides how the function runs, hashed (see ``FunctionSpec.spec_hash``).
    spec_hash: str = ""
    #: The function's image: a serialized ``ImageSpec`` (empty: the worker's own environment),
    #: and its content id.
    image: bytes = b""
    image_id: str = ""

    def schedule(self) -> Cron | Period | None:
        """The function's schedule, or None when it only runs when called.

        Raises:
            InvalidConfigError: the stored schedule is not valid.
        """
        if self.schedule_cron:
            return Cron(self.schedule_cron, timezone=self.schedule_timezone or "UTC")
        if self.schedule_period_s > 0:
            return Period(seconds=self.schedule_period_s)
        return None

    def retry_delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based)."""
        return float(min(self.retry_initial_delay_s * self.retry_backoff ** (retry - 1), self.retry_max_delay_s))

    @property
    def slots(self) -> int:
        """Inputs one container takes at once (a batched one needs a whole batch)."""
        return max(1, self.batch_max_size or self.max_concurrent_inputs)

    @property
    def prefetch(self) -> int:
        """Extra map items a serial container may hold beyond the one it runs."""
        return prefetch_for(
            max_inputs=self.max_concurrent_inputs,
            batch_max_size=self.batch_max_size,
            is_async=self.is_async,
            is_generator=self.is_generator,
        )

    @property
    def target_slots(self) -> int:
        """Inputs per container before the autoscaler adds another."""
        if self.batch_max_size:
            return self.batch_max_size
        return max(1, min(self.target_concurrent_inputs or self.slots, self.slots))


@dataclass
class DeploymentRecord:
    """One deployed version of an app."""

    deployment_id: str
    account: str
    app_name: str
    version: int
    status: str
    ephemeral: bool
    functions: list[FunctionSpecRecord]
    archive_sha256: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    last_seq: int = 0

    def function(self, name: str) -> FunctionSpecRecord | None:
        """The spec of the function called ``name``, if any."""
        for spec in self.functions:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True)
class AppRecord:
    """An app and its live deployment."""

    account: str
    name: str
    live_deployment: str
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class Event:
    """One entry of an object's event log (``job.queued``, ``deployment.created``…)."""

    object_id: str
    seq: int
    time: datetime
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRecord:
    """A job's durable state."""

    job_id: str
    account: str
    app_name: str
    function_name: str
    deployment_id: str
    status: str
    attempt: int
    reason: str
    args_format: str
    args: bytes
    result_format: str
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_seq: int = 0
