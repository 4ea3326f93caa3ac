"""What the scheduler places on containers: units of work and who is told how they went.

A :class:`Work` is one input for one function: a job's attempt, or one item of a map. Its
``handler`` hears about it starting, printing, yielding and ending; the handler decides
about retries and results, the scheduler only about placement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from apothic.server.models import DeploymentRecord, FunctionSpecRecord


class Work(Protocol):
    """One input the scheduler can place."""

    @property
    def input_id(self) -> str:
        """The job id, or ``<job id>/<index>`` for a map item."""

    deployment: DeploymentRecord
    spec: FunctionSpecRecord
    container_id: str
    handler: WorkHandler
    #: May wait inside a busy serial container (map items), see protocol.PREFETCH.
    prefetchable: bool

    @property
    def args_format(self) -> str: ...

    @property
    def args(self) -> bytes: ...

    @property
    def result_format(self) -> str: ...

    @property
    def final(self) -> bool:
        """No more attempts will run."""


class WorkHandler(Protocol):
    """Learns how a piece of work goes."""

    def started(self, work: Any, worker_id: str, container_id: str) -> int:
        """An attempt starts on a container; returns its attempt number."""

    def log(self, work: Any, attempt: int, stream: str, data: str) -> None:
        """The attempt printed something."""

    def yielded(self, work: Any, attempt: int, seq: int, value_format: str, data: bytes) -> None:
        """A generator attempt produced an item."""

    def ended(self, work: Any, attempt: int, status: str, result: dict[str, Any] | None, reason: str) -> None:
        """The attempt ended (succeeded, failed, timed out, or lost with its container)."""

    def returned(self, work: Any) -> None:
        """The attempt never started (its container stopped first); it runs again."""


#: Starts the job of an HTTP request a web service container answers:
#: ``(deployment, spec, job id, request, worker id, container id, started at) -> the job``.
RequestJobs: TypeAlias = Callable[[DeploymentRecord, FunctionSpecRecord, str, dict[str, str], str, str, float], Work]
