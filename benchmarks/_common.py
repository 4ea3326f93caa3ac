"""What every benchmark shares: latency summaries, the runtime process, the peers' sessions.

* :func:`runtime_process` starts ``python -m benchmarks._runtime`` (a ``LocalRuntime`` in a
  process of its own, so the client measured never shares a GIL with the server).
* :func:`apothic_session` adds the client side: it points the SDK at that runtime, deploys
  :mod:`benchmarks.funcs` and yields an :class:`ApothicSession`.
* :func:`ray_session` runs ``ray.init(num_cpus=<cores>)`` and yields a :class:`RaySession`
  with an ``echo`` task, or yields None when Ray is not installed.

Ray has to start first in a process: when ``ray.init`` ran after Apothic's gRPC client
threads were up, it timed out waiting for its GCS daemon (gRPC skips its fork handlers then).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository root: the runtime process runs there so ``benchmarks`` imports.
ROOT = Path(__file__).resolve().parents[1]
#: Seconds the runtime process may take to print its address.
RUNTIME_START_TIMEOUT_S = 60.0

RAY_MISSING = (
    "Ray is not installed, so only Apothic's figures are shown; "
    "`pip install 'apothic[bench]'` (or `pip install ray`) adds the peer."
)


@dataclass(frozen=True)
class Stats:
    """Latency summary of one measured series, in milliseconds."""

    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> Stats:
        """Summarizes samples given in nanoseconds (nearest-rank percentiles)."""
        ordered = sorted(samples_ns)
        n = len(ordered)

        def pct(p: float) -> float:
            return ordered[max(0, min(n - 1, math.ceil(p / 100 * n) - 1))] / 1e6

        return cls(
            n=n,
            p50_ms=pct(50),
            p99_ms=pct(99),
            mean_ms=sum(ordered) / n / 1e6,
            min_ms=ordered[0] / 1e6,
            max_ms=ordered[-1] / 1e6,
        )


def median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def time_calls(call: Callable[[int], Any], count: int, *, start: int = 0) -> list[int]:
    """Runs ``call(i)`` ``count`` times in sequence; returns each duration in ns.

    Raises:
        AssertionError: a call did not return its argument.
    """
    samples = []
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        t0 = clock()
        result = call(i)
        samples.append(clock() - t0)
        if result != i:
            raise AssertionError(f"call {i} returned {result!r}")
    return samples


def check_echo(results: list[Any], count: int, what: str) -> None:
    """Checks that ``results`` is ``list(range(count))``.

    Raises:
        AssertionError: a result is missing, extra or out of order.
    """
    if results != list(range(count)):
        bad = next((i for i, r in enumerate(results) if r != i), len(results))
        raise AssertionError(f"{what}: {len(results)} results for {count} inputs, first wrong at index {bad}")


def dist_version(name: str) -> str:
    """An installed distribution's version, or ``""``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def source_state() -> str:
    """The checkout measured: ``<short commit>``, with ``+ uncommitted changes`` when the
    tree is dirty; ``""`` outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + (" + uncommitted changes" if dirty else "")


# -- Apothic ------------------------------------------------------------------------------


@contextlib.contextmanager
def runtime_process(db_url: str | None = None, *, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Starts ``python -m benchmarks._runtime`` and yields its ``base_url``, ``api_key`` and ``pid``.

    ``db_url`` picks the runtime's store (its default when None); ``workers`` how many
    in-process workers it starts (its default when None).

    The runtime's log goes to a temporary file, quoted when it fails to start. On exit its
    stdin is closed (it stops cleanly), then it is terminated if it lingers.

    Raises:
        RuntimeError: the runtime exited or stayed silent before printing its address.
    """
    with tempfile.TemporaryFile(mode="w+") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._runtime",
                *(["--db-url", db_url] if db_url is not None else []),
                *(["--workers", str(workers)] if workers is not None else []),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                ready = sel.select(RUNTIME_START_TIMEOUT_S)
            line = proc.stdout.readline() if ready else ""
            if not line:
                log_file.seek(0)
                tail = log_file.read()[-2000:]
                raise RuntimeError(f"the runtime process did not start (exit code {proc.poll()}):\n{tail}")
            yield {**json.loads(line), "pid": proc.pid}
        finally:
            proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class ApothicSession:
    """A deployed ``benchmarks.funcs`` app on a runtime in another process."""

    version: str
    runtime_pid: int
    app: Any
    echo: Any
    deploy_ms: float


@contextlib.contextmanager
def apothic_session() -> Iterator[ApothicSession]:
    """Starts a runtime process, deploys :mod:`benchmarks.funcs` and yields the session;
    stops the app and the runtime afterwards."""
    import apothic

    with runtime_process() as address:
        # The benchmark's edge: the SDK reads its configuration from the environment,
        # as an app configured by `apothic up` or APOTHIC_* variables does.
        os.environ["APOTHIC_BASE_URL"] = address["base_url"]
        os.environ["APOTHIC_API_KEY"] = address["api_key"]
        from benchmarks.funcs import app, echo

        t0 = time.perf_counter_ns()
        app.deploy()
        deploy_ms = (time.perf_counter_ns() - t0) / 1e6
        try:
            yield ApothicSession(
                version=getattr(apothic, "__version__", "") or dist_version("apothic"),
                runtime_pid=address["pid"],
                app=app,
                echo=echo,
                deploy_ms=deploy_ms,
            )
        finally:
            app.stop()


# -- Ray ----------------------------------------------------------------------------------


@dataclass
class RaySession:
    """A running local Ray cluster and a remote ``echo`` function on it."""

    ray: Any
    version: str
    echo: Any

    def new_echo(self) -> Any:
        """A newly defined remote ``echo`` (Ray has not seen it yet)."""

        @self.ray.remote
        def echo(x: Any) -> Any:
            return x

        return echo


@contextlib.contextmanager
def ray_session(*, num_cpus: int | None = None) -> Iterator[RaySession | None]:
    """``ray.init`` with ``num_cpus`` (default: this machine's cores); yields None, after
    saying why on stderr, when Ray is not installed."""
    try:
        import ray
    except ImportError:
        print(RAY_MISSING, file=sys.stderr)
        yield None
        return
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    try:

        @ray.remote
        def echo(x: Any) -> Any:
            return x

        yield RaySession(ray=ray, version=ray.__version__, echo=echo)
    finally:
        ray.shutdown()


# -- report ---------------------------------------------------------------------------------


def fmt_row(name: str, fmt: str, apothic: float, ray: float | None, *, ratio: bool = True) -> tuple[str, ...]:
    """One table row: metric, apothic, ray and apothic/ray, formatted (``-`` where absent)."""
    return (
        name,
        format(apothic, fmt),
        "-" if ray is None else format(ray, fmt),
        "-" if ray is None or not ratio or ray == 0 else f"{apothic / ray:.2f}x",
    )


def print_table(header: list[str], rows: list[tuple[str, ...]], footer: list[str]) -> None:
    """Prints a metric | apothic | ray | apothic/ray table (rich when it is installed)."""
    columns = ("metric", "apothic", "ray", "apothic/ray")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(r[0]) for r in [columns, *rows])
        lines = [*header, "", f"{columns[0]:<{width}}  {columns[1]:>12}  {columns[2]:>12}  {columns[3]:>11}"]
        lines += [f"{m:<{width}}  {a:>12}  {r:>12}  {x:>11}" for m, a, r, x in rows]
        print("\n".join([*lines, "", *footer]))
        return
    table = Table()
    table.add_column(columns[0])
    for name in columns[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(120, Console().width))
    console.print("\n".join(header), highlight=False)
    console.print(table)
    for line in footer:
        console.print(line, highlight=False)
