"""Worker settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

#: The executor kinds a worker can run.
EXECUTORS = ("process", "docker")


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs.

    Attributes:
        base_url: control-plane gRPC address.
        api_key: API key the worker authenticates with (also handed to its containers).
        worker_id: stable id across reconnects.
        state_dir: where source archives are unpacked.
        labels: free-form labels added to the offer.
        max_backoff_s: longest wait between reconnect attempts.
        stop_grace_s: how long a stopped container may take to exit before it is killed.
        zygote: start containers by forking a zygote process that has already imported
            what they need (cold starts skip the interpreter start); False starts a fresh
            interpreter for each container.
        region: where the machine is, offered for placement (``region=`` on a function).
        cost_per_hour: what the machine costs in USD per hour, offered to the control plane:
            containers are charged their share of it (0: free, never charged).
    """

    base_url: str
    api_key: str
    worker_id: str
    state_dir: Path
    labels: dict[str, str] = field(default_factory=dict)
    max_backoff_s: float = 5.0
    stop_grace_s: float = 2.0
    zygote: bool = True
    executor: str = "process"
    hostname: str = ""
    local_volumes_dir: Path | None = None
    region: str = ""
    cost_per_hour: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.cost_per_hour) or self.cost_per_hour < 0:
            raise ValueError(f"cost_per_hour must be a finite number of USD, 0 or more, got {self.cost_per_hour!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
