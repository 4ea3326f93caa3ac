"""Records the control plane keeps in memory and in the store: small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
