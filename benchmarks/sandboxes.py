"""Issue 7: sandbox time-to-interactive on the process and docker executors.

Run it from the repository root::

    python -m benchmarks.sandboxes               # 30 sandboxes per executor
    python -m benchmarks.sandboxes --count 5     # a smoke test
    python -m benchmarks.sandboxes --json

What is measured (a local runtime in this process, ``mem://`` store, one worker per
executor), ``--count`` times in sequence:

1. time-to-interactive: ``Sandbox.create()`` until the first ``exec("true")`` has returned
   its exit code (the figure issue 7 asks for), and its two parts: the create alone, and
   that first exec;
2. a warm exec round trip: ``exec("true").wait()`` on a sandbox that already ran one, and
   the same in a named session (one shell reused).

Each sandbox is terminated after its sample. The docker rows run when the Docker daemon
answers and ``apothic-base:bookworm`` exists (``bash scripts/docker-setup.sh``); otherwise
they are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from apothic.runtime import LocalRuntime
from apothic.sandbox import Sandbox
from benchmarks._common import Stats

BASE_IMAGE = "apothic-base:bookworm"


@dataclass(frozen=True)
class Row:
    """One measured series on one executor."""

    metric: str
    executor: str
    stats: Stats | None
    note: str = ""


def _docker_problem() -> str:
    """Why the docker rows cannot run here ("" when they can)."""
    try:
        out = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker is not available ({exc})"
    return "" if out.returncode == 0 else f"{BASE_IMAGE} is missing (bash scripts/docker-setup.sh)"


@contextlib.contextmanager
def _runtime(executor: str) -> Iterator[LocalRuntime]:
    with tempfile.TemporaryDirectory(prefix="apothic-bench-sb-") as tmp:
        runtime = LocalRuntime(state_dir=tmp, db_url="mem://", executor=executor).start()
        try:
            yield runtime
        finally:
            runtime.stop()


def measure(runtime: LocalRuntime, executor: str, count: int, warm_calls: int) -> list[Row]:
    """Times ``count`` sandboxes from create to their first exec, then warm execs."""
    config = runtime.config
    # One sandbox first, untimed: it deploys the hidden app and warms the worker's caches.
    Sandbox.create(client=config).terminate()
    tti, create, first = [], [], []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        sb = Sandbox.create(client=config)
        t1 = time.perf_counter_ns()
        code = sb.exec("true").wait()
        t2 = time.perf_counter_ns()
        assert code == 0, f"exec in a fresh sandbox exited with {code}"
        tti.append(t2 - t0)
        create.append(t1 - t0)
        first.append(t2 - t1)
        sb.terminate()
    sb = Sandbox.create(client=config)
    try:
        warm, session = [], []
        sb.exec("true", session="bench").wait()
        for _ in range(warm_calls):
            t0 = time.perf_counter_ns()
            sb.exec("true").wait()
            warm.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            sb.exec("true", session="bench").wait()
            session.append(time.perf_counter_ns() - t0)
    finally:
        sb.terminate()
    return [
        Row("time-to-interactive (create -> first exec)", executor, Stats.of(tti)),
        Row("  create (until ready)", executor, Stats.of(create)),
        Row("  first exec('true')", executor, Stats.of(first)),
        Row("warm exec('true')", executor, Stats.of(warm)),
        Row("warm exec('true') in a session", executor, Stats.of(session)),
    ]


def print_rows(rows: list[Row], header: str) -> None:
    """Prints metric | executor | p50 | p99 | mean."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header, title_justify="left")
    for name, justify in (("metric", "left"), ("executor", "left"), ("n", "right"), ("p50 ms", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("p99 ms", justify="right")
    table.add_column("mean ms", justify="right")
    for r in rows:
        if r.stats is None:
            table.add_row(r.metric, r.executor, "-", "-", "-", r.note)
            continue
        s = r.stats
        table.add_row(r.metric, r.executor, str(s.n), f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.mean_ms:.1f}")
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> None:
    """Runs the figures and prints them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandboxes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30, help="sandboxes timed per executor (default: 30)")
    parser.add_argument("--warm", type=int, default=100, help="warm execs timed (default: 100)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    opts = parser.parse_args(argv)
    rows: list[Row] = []
    with _runtime("process") as runtime:
        rows += measure(runtime, "process", opts.count, opts.warm)
    problem = _docker_problem()
    if problem:
        rows.append(Row("time-to-interactive (create -> first exec)", "docker", None, note=f"skipped: {problem}"))
    else:
        with _runtime("docker") as runtime:
            rows += measure(runtime, "docker", opts.count, opts.warm)
    if opts.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print_rows(rows, f"sandboxes: {opts.count} per executor, {opts.warm} warm execs")


if __name__ == "__main__":
    main()
