"""ruff stays clean on the project's own code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return [exe]


DIRS = ["apothic", "server", "worker", "tests", "examples", "benchmarks"]


def test_ruff_check() -> None:
    proc = subprocess.run([*_ruff(), "check", *DIRS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = subprocess.run([*_ruff(), "format", "--check", *DIRS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    exe = shutil.which("mypy") or str(Path(sys.executable).with_name("mypy"))
    proc = subprocess.run([exe, "apothic", "server", "worker"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
