"""Offer detection on this machine."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from apothic.worker import offer


def test_offer_describes_this_machine(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    detected = offer.detect(state_dir, {"pool": "ci", "zone": "local"})
    assert state_dir.is_dir()
    assert 1 <= detected.cpu_cores <= (os.cpu_count() or 1)
    assert float(detected.cpu_cores).is_integer()
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    assert 0.9 * total_mb <= detected.memory_mb <= 1.1 * total_mb
    free_mb = shutil.disk_usage(state_dir).free // (1024 * 1024)
    assert 0 < detected.disk_mb and abs(detected.disk_mb - free_mb) <= max(1024, free_mb // 10)
    assert detected.arch == platform.machine()
    assert detected.hostname
    assert detected.labels == {"pool": "ci", "zone": "local"}


def test_no_gpus_without_nvidia_smi() -> None:
    if shutil.which("nvidia-smi") is None:
        assert offer.detect_gpus() == ()
    else:  # a GPU machine: each entry is a real model with memory
        for gpu in offer.detect_gpus():
            assert gpu.name and gpu.count >= 1 and gpu.vram_mb > 0


def test_labels_are_copied_not_shared(tmp_path: Path) -> None:
    labels = {"a": "1"}
    detected = offer.detect(tmp_path, labels)
    labels["a"] = "2"
    assert detected.labels == {"a": "1"}
