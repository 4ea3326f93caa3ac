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
import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._common import (
    ApothicSession,
    RaySession,
    Stats,
    apothic_session,
    ray_session,
    runtime_process,
    time_calls,
)

__all__ = [
    "PeerResult",
    "Stats",
    "apothic_latency",
    "main",
    "measure_apothic",
    "measure_ray",
    "ray_latency",
    "runtime_process",
]

#: The issue-2 target for a warm call, as a multiple of Ray's (issue 3: below Ray's).
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class PeerResult:
    """What one peer measured."""

    name: str
    version: str
    warm: Stats
    cold: Stats
    extra: dict[str, float]


def apothic_warm(session: ApothicSession, *, calls: int, warmup: int) -> tuple[list[int], Stats]:
    """Times the first call after the deploy, then ``calls`` warm ``echo.remote(i)`` after
    ``warmup`` untimed ones; returns (first call's ns, warm stats)."""
    first_ns = time_calls(session.echo.remote, 1)
    time_calls(session.echo.remote, warmup)
    return first_ns, Stats.of(time_calls(session.echo.remote, calls))


def apothic_cold(session: ApothicSession, *, cold: int, first_ns: list[int]) -> Stats:
    """Cold starts: ``first_ns`` (the first call after the session's deploy) plus
    ``cold - len(first_ns)`` more, each a new deployment (a fresh container) and its first
    ``remote()`` timed to its result."""
    samples = list(first_ns)
    for i in range(cold - len(samples)):
        session.app.deploy()  # a new deployment supersedes the last one: a fresh container
        samples += time_calls(session.echo.remote, 1, start=i)
    return Stats.of(samples)


def apothic_latency(session: ApothicSession, *, calls: int, warmup: int, cold: int) -> PeerResult:
    """Warm ``remote()`` and cold starts on a fresh session (nothing called yet)."""
    first_ns, warm = apothic_warm(session, calls=calls, warmup=warmup)
    return PeerResult(
        name="apothic",
        version=session.version,
        warm=warm,
        cold=apothic_cold(session, cold=cold, first_ns=first_ns),
        extra={"deploy_ms": session.deploy_ms},
    )


def measure_apothic(*, calls: int, warmup: int, cold: int) -> PeerResult:
    """Measures warm ``remote()`` and cold starts against a runtime in another process."""
    with apothic_session() as session:
        return apothic_latency(session, calls=calls, warmup=warmup, cold=cold)


def ray_warm(session: RaySession, *, calls: int, warmup: int) -> Stats:
    """``calls`` sequential ``ray.get(echo.remote(i))`` after ``warmup`` untimed ones."""
    ray, echo = session.ray, session.echo

    def call(i: int) -> object:
        return ray.get(echo.remote(i))

    time_calls(call, 1)  # waits for the first worker process
    time_calls(call, warmup)
    return Stats.of(time_calls(call, calls))


def ray_cold(session: RaySession, *, cold: int) -> Stats:
    """The first call of a newly defined remote function, on workers already running."""
    ray = session.ray
    samples: list[int] = []
    for i in range(cold):
        fresh = session.new_echo()

        def call(x: int, f: Any = fresh) -> Any:
            return ray.get(f.remote(x))

        samples += time_calls(call, 1, start=i)
    return Stats.of(samples)


def ray_latency(session: RaySession, *, calls: int, warmup: int, cold: int) -> PeerResult:
    """Warm ``ray.get(f.remote(x))`` and Ray's "cold start"."""
    warm = ray_warm(session, calls=calls, warmup=warmup)
    return PeerResult(name="ray", version=session.version, warm=warm, cold=ray_cold(session, cold=cold), extra={})


def measure_ray(*, calls: int, warmup: int, cold: int) -> PeerResult | None:
    """Measures ``ray.get(f.remote(x))`` the same way; None when Ray is not installed."""
    with ray_session() as session:
        if session is None:
            return None
        return ray_latency(session, calls=calls, warmup=warmup, cold=cold)


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
        met2 = "met" if ratio <= TARGET_RATIO else "NOT met"
        met3 = "met" if ratio < 1 else "NOT met"
        verdict = (
            f"warm p50 {ratio:.2f}x Ray's: issue-3 target (below Ray's) {met3}; "
            f"issue-2 target (within {TARGET_RATIO:g}x) {met2}"
        )
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
