"""Invoke latency: Apothic's ``fn.remote(x)`` against Ray's ``ray.get(f.remote(x))``.

Run it from the repository root::

    python -m benchmarks.invoke [--calls 1000] [--warmup 50] [--cold 5] [--json]

Both peers run in the same invocation, one after the other, on the same machine:

* Apothic: a local runtime (control plane with embedded ``mem://`` SurrealDB and one
  worker) in a separate process (:mod:`benchmarks._runtime`), so the client measured here
  never shares a GIL with the server. ``benchmarks.funcs.echo`` is deployed by module;
  after the warm-up, ``--calls`` sequential ``echo.remote(i)`` round trips are timed. Cold
  start: the app is deployed again (a new deployment, so a new container) and the first
  ``remote()`` is timed to its result, ``--cold`` times.
* Ray (optional; ``pip install 'apothic[bench]'``): ``ray.init(num_cpus=2)``, the same
  warm-up and ``--calls`` sequential ``ray.get(f.remote(i))``. Its "cold start" is the first
  call of a newly defined remote function on the running cluster.

The table shows p50, p99 and mean per call, and the ratio apothic/ray (below 1 means
Apothic is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The repository root: the runtime process runs there so ``benchmarks`` imports.
ROOT = Path(__file__).resolve().parents[1]
#: Seconds the runtime process may take to print its address.
RUNTIME_START_TIMEOUT_S = 60.0
#: The issue's target for a warm call, as a multiple of Ray's.
TARGET_RATIO = 2.0


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


@dataclass(frozen=True)
class PeerResult:
    """What one peer measured."""

    name: str
    version: str
    warm: Stats
    cold: Stats
    extra: dict[str, float]


def _time_calls(call: Callable[[int], Any], count: int, *, start: int = 0) -> list[int]:
    """Runs ``call(i)`` ``count`` times in sequence; returns each duration in ns."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        t0 = clock()
        result = call(i)
        samples.append(clock() - t0)
        if result != i:
            raise AssertionError(f"call {i} returned {result!r}")
    return samples


# -- Apothic ------------------------------------------------------------------------------


@contextlib.contextmanager
def runtime_process() -> Iterator[dict[str, str]]:
    """Starts ``python -m benchmarks._runtime`` and yields its ``base_url`` and ``api_key``.

    The runtime's log goes to a temporary file, quoted when it fails to start. On exit its
    stdin is closed (it stops cleanly), then it is terminated if it lingers.

    Raises:
        RuntimeError: the runtime exited or stayed silent before printing its address.
    """
    with tempfile.TemporaryFile(mode="w+") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._runtime"],
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
            yield json.loads(line)
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


def measure_apothic(*, calls: int, warmup: int, cold: int) -> PeerResult:
    """Measures warm ``remote()`` and cold starts against a runtime in another process."""
    import apothic

    with runtime_process() as address:
        # The benchmark's edge: the SDK reads its configuration from the environment,
        # as an app configured by `apothic up` or APOTHIC_* variables does.
        os.environ["APOTHIC_BASE_URL"] = address["base_url"]
        os.environ["APOTHIC_API_KEY"] = address["api_key"]
        from benchmarks.funcs import app, echo

        t0 = time.perf_counter_ns()
        app.deploy()
        deploy_ns = time.perf_counter_ns() - t0
        first_ns = _time_calls(echo.remote, 1)
        _time_calls(echo.remote, warmup)
        warm = _time_calls(echo.remote, calls)

        cold_ns = first_ns
        for i in range(cold - 1):
            app.deploy()  # a new deployment supersedes the last one: a fresh container
            cold_ns += _time_calls(echo.remote, 1, start=i)
        app.stop()
    return PeerResult(
        name="apothic",
        version=getattr(apothic, "__version__", "") or _dist_version("apothic"),
        warm=Stats.of(warm),
        cold=Stats.of(cold_ns),
        extra={"deploy_ms": deploy_ns / 1e6},
    )


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


# -- Ray ----------------------------------------------------------------------------------


def measure_ray(*, calls: int, warmup: int, cold: int) -> PeerResult | None:
    """Measures ``ray.get(f.remote(x))`` the same way; None when Ray is not installed."""
    try:
        import ray
    except ImportError:
        print(
            "Ray is not installed, so only Apothic's figures are shown; "
            "`pip install 'apothic[bench]'` (or `pip install ray`) adds the peer.",
            file=sys.stderr,
        )
        return None

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:

        def make() -> Any:
            @ray.remote
            def echo(x: Any) -> Any:
                return x

            return lambda i: ray.get(echo.remote(i))

        call = make()
        _time_calls(call, 1)  # waits for the first worker process
        _time_calls(call, warmup)
        warm = _time_calls(call, calls)
        # A function Ray has not seen yet, on workers that are already running.
        cold_ns = [ns for i in range(cold) for ns in _time_calls(make(), 1, start=i)]
    finally:
        ray.shutdown()
    return PeerResult(name="ray", version=ray.__version__, warm=Stats.of(warm), cold=Stats.of(cold_ns), extra={})


# -- report -------------------------------------------------------------------------------


def _rows(apothic: PeerResult, ray: PeerResult | None) -> list[tuple[str, str, float, float | None]]:
    """(metric, value format, apothic, ray) for each line of the table."""
    return [
        ("warm remote() p50 (ms)", ".3f", apothic.warm.p50_ms, ray.warm.p50_ms if ray else None),
        ("warm remote() p99 (ms)", ".3f", apothic.warm.p99_ms, ray.warm.p99_ms if ray else None),
        ("warm remote() mean (ms)", ".3f", apothic.warm.mean_ms, ray.warm.mean_ms if ray else None),
        ("warm calls, sequential (/s)", ",.0f", 1000 / apothic.warm.mean_ms, 1000 / ray.warm.mean_ms if ray else None),
        ("cold start: first call, median (ms)", ".1f", apothic.cold.p50_ms, ray.cold.p50_ms if ray else None),
        ("deploy (ms)", ".1f", apothic.extra["deploy_ms"], None),
    ]


def report_table(apothic: PeerResult, ray: PeerResult | None, *, calls: int, warmup: int) -> None:
    """Prints the side-by-side table (rich when it is installed, plain text otherwise)."""
    header = [
        f"invoke benchmark, {datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        f"{calls} sequential calls after {warmup} warm-up calls; cold start over {apothic.cold.n} deploys",
        f"apothic {apothic.version}" + (f", ray {ray.version}" if ray else ", ray not measured"),
    ]
    rows = [
        (name, format(a, fmt), "-" if r is None else format(r, fmt), "-" if r is None else f"{a / r:.2f}x")
        for name, fmt, a, r in _rows(apothic, ray)
    ]
    verdict = ""
    if ray is not None:
        ratio = apothic.warm.p50_ms / ray.warm.p50_ms
        met = "met" if ratio <= TARGET_RATIO else "NOT met"
        verdict = f"target (warm p50 within {TARGET_RATIO:g}x of Ray): {met} ({ratio:.2f}x)"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(r[0]) for r in rows)
        lines = [*header, "", f"{'metric':<{width}}  {'apothic':>10}  {'ray':>10}  {'apothic/ray':>11}"]
        lines += [f"{m:<{width}}  {a:>10}  {r:>10}  {x:>11}" for m, a, r, x in rows]
        print("\n".join([*lines, verdict]))
        return
    table = Table()
    table.add_column("metric")
    table.add_column("apothic", justify="right")
    table.add_column("ray", justify="right")
    table.add_column("apothic/ray", justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print("\n".join(header), highlight=False)
    console.print(table)
    if verdict:
        console.print(verdict)


def report_json(apothic: PeerResult, ray: PeerResult | None, *, calls: int, warmup: int) -> None:
    """Prints every figure as one JSON object."""
    out = {
        "benchmark": "invoke",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "calls": calls,
        "warmup": warmup,
        "apothic": asdict(apothic),
        "ray": asdict(ray) if ray else None,
        "ratio": {
            "warm_p50": apothic.warm.p50_ms / ray.warm.p50_ms,
            "warm_p99": apothic.warm.p99_ms / ray.warm.p99_ms,
            "warm_mean": apothic.warm.mean_ms / ray.warm.mean_ms,
            "cold_p50": apothic.cold.p50_ms / ray.cold.p50_ms,
        }
        if ray
        else None,
    }
    print(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Runs both peers and prints the comparison."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="timed sequential calls per peer (default: 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls before timing (default: 50)")
    parser.add_argument("--cold", type=int, default=5, help="cold starts to time (default: 5)")
    parser.add_argument("--no-ray", action="store_true", help="measure Apothic only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0 or args.cold < 1:
        parser.error("--calls and --cold must be at least 1, --warmup at least 0")

    # Ray first: started after Apothic's gRPC client threads were running in this process,
    # ray.init timed out waiting for its GCS daemon (gRPC skips its fork handlers then).
    ray = None if args.no_ray else measure_ray(calls=args.calls, warmup=args.warmup, cold=args.cold)
    apothic = measure_apothic(calls=args.calls, warmup=args.warmup, cold=args.cold)
    report = report_json if args.json else report_table
    report(apothic, ray, calls=args.calls, warmup=args.warmup)


if __name__ == "__main__":
    main()
