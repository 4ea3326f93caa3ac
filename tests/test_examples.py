"""Every script in examples/ runs, through `apothic run`, against the session runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, apothic_runtime) -> None:
    env = {**os.environ, "APOTHIC_BASE_URL": apothic_runtime.address, "APOTHIC_API_KEY": apothic_runtime.api_key}
    proc = subprocess.run(
        [sys.executable, "-m", "apothic.cli.main", "run", str(example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped" in proc.stdout


def test_there_are_examples() -> None:
    assert EXAMPLES
