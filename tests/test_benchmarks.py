"""The issue-4 benchmark runs end to end (Apothic's figures, the floors and the bare service),
so a change that breaks it shows here rather than when someone next measures. Only its shape
is checked: the figures themselves are for BENCHMARKS.md, not for assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_primitives_benchmark_runs_without_its_peers() -> None:
    cmd = [sys.executable, "-m", "benchmarks.primitives", "--no-peers", "--json"]
    cmd += ["--seconds", "0.3", "--warmup", "0.1", "--floor-tries", "30"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)

    assert set(out["results"]) == {"apothic"}  # no peer was started
    figures = out["results"]["apothic"]
    assert set(figures) == {"queue_seq", "queue_conc", "dict_seq", "dict_conc"}
    assert all(f["ops"] > 0 and f["ops_s"] > 0 for f in figures.values()), figures
    assert figures["queue_conc"]["clients"] == 16 and figures["queue_seq"]["clients"] == 1
    assert out["verdicts"] == {}  # nothing to compare with

    floors = out["floors"]
    assert set(floors) == {"fsync_ms", "commit_ms", "rpc_ms", "bare_queue_ms", "bare_dict_ms"}, floors
    assert all(v > 0 for v in floors.values()), floors
    # Three durable writes there and back take longer than one bare answer; a CAS (an answer
    # and a durable write) too.
    assert floors["bare_queue_ms"] > floors["rpc_ms"] and floors["bare_dict_ms"] > floors["rpc_ms"], floors
    for key in ("queue_seq", "dict_seq"):
        row = out["ceilings"][key]
        assert row["bare_ms"] > 0 and row["apothic_ms"] > 0 and row["ceiling_ops_s"] > 0, row
        assert "bare_ratio" not in row and "ceiling_ratio" not in row  # no peer, no ratio


def test_bad_benchmark_options_are_refused() -> None:
    cmd = [sys.executable, "-m", "benchmarks.primitives", "--no-peers", "--floor-tries", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--floor-tries at least 1" in proc.stderr
