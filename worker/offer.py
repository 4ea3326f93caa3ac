"""What this machine offers: cores, memory, disk, GPUs, arch, labels, region and price."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class GpuInfo:
    name: str
    count: int
    vram_mb: int


@dataclass(frozen=True)
class Offer:
    cpu_cores: float
    memory_mb: int
    disk_mb: int
    gpus: tuple[GpuInfo, ...]
    arch: str
    hostname: str
    labels: dict[str, str] = field(default_factory=dict)
    #: Where the machine is (free-form, e.g. ``eu-west``; "" when not set).
    region: str = ""
    #: USD per hour the machine costs; containers are charged their share of it (0: free).
    cost_per_hour: float = 0.0


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs via ``nvidia-smi``, grouped by model; empty when there are none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    groups: dict[tuple[str, int], int] = {}
    for line in out.strip().splitlines():
        name, _, mem = (p.strip() for p in line.partition(","))
        try:
            vram = int(float(mem))
        except ValueError:
            vram = 0
        groups[(name, vram)] = groups.get((name, vram), 0) + 1
    return tuple(GpuInfo(name=n, count=c, vram_mb=v) for (n, v), c in groups.items())


def detect(
    state_dir: Path, labels: dict[str, str], *, hostname: str = "", region: str = "", cost_per_hour: float = 0.0
) -> Offer:
    """Measures this machine (``hostname`` overrides the name it reports); ``region`` and
    ``cost_per_hour`` are what the operator configured."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return Offer(
        cpu_cores=float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
        memory_mb=_memory_mb(),
        disk_mb=shutil.disk_usage(state_dir).free // (1024 * 1024),
        gpus=detect_gpus(),
        arch=platform.machine(),
        hostname=hostname or socket.gethostname(),
        labels=dict(labels),
        region=region,
        cost_per_hour=cost_per_hour,
    )
