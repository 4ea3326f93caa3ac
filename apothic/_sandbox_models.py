"""What the sandbox API returns: small frozen dataclasses (re-exported by :mod:`apothic.sandbox`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class SandboxStatus(enum.StrEnum):
    """Where a sandbox is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Whether the sandbox has ended."""
        return self not in (SandboxStatus.STARTING, SandboxStatus.RUNNING)


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the control plane reports it.

    Attributes:
        sandbox_id: ``sandboxes:…``; reattach with ``Sandbox.from_id``.
        name: its name ("" when unnamed).
        status: where it is in its life.
        job_id: the job that runs it (its events and logs are the sandbox's).
        app_name: the hidden app whose function runs it.
        reason: how it ended, once it has.
        timeout_s: its lifetime limit.
        idle_timeout_s: seconds without a call before it is terminated (0: never).
        created_at: when it was created.
        ended_at: when it ended, once it has.
    """

    sandbox_id: str
    name: str
    status: SandboxStatus
    job_id: str
    app_name: str
    reason: str
    timeout_s: float
    idle_timeout_s: float
    created_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class SandboxFileInfo:
    """One entry of a sandbox directory listing.

    Attributes:
        name: the entry's name.
        is_dir: whether it is a directory.
        size: its size in bytes.
        modified_at: when it last changed.
    """

    name: str
    is_dir: bool
    size: int
    modified_at: datetime | None


@dataclass(frozen=True)
class ExecExit:
    """How a sandbox command ended.

    Attributes:
        exit_code: 127 when the command does not exist, 124 when it timed out, 128+N when
            signal N killed it.
        timed_out: whether it was killed for running past its timeout.
        message: the agent's note (what was not found, why it was killed); often empty.
    """

    exit_code: int
    timed_out: bool = False
    message: str = ""
