"""Every figure of issue 3, side by side with Ray, in one run: ``python -m benchmarks``.

Run it from the repository root::

    python -m benchmarks            # the full run (a few minutes)
    python -m benchmarks --quick    # a smaller run, for a smoke test
    python -m benchmarks --json     # machine-readable
    python -m benchmarks --profile prof/   # then profile map and spawn (py-spy, /proc CPU times)

One Ray cluster and one Apothic runtime process serve every figure:

1. warm ``remote()`` p50/p99 over ``--calls`` sequential calls, against Ray's
   ``ray.get(f.remote(x))``;
2. ``list(echo.map(range(--items)))`` end to end in items/s, against Ray's ``--items``
   ``f.remote(i)`` then ``ray.get(refs)`` in tasks/s (target: at least 2.5x Ray);
3. ``echo.spawn_map(range(--jobs))`` then ``job.wait()`` on each, in jobs/s, against the
   same Ray figure, with the spawn phase (until every job is durable) timed apart; then
   the same with ``apothic.gather(*jobs)`` for the waits (where the SDK has it);
4. cold start: the first call of a newly deployed function (Ray: of a newly defined
   function on its running workers).

Ray runs first (``ray.init`` after Apothic's gRPC threads started timed out waiting for its
GCS) and is shut down before the Apothic runtime starts, so the two never share the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import invoke, throughput
from benchmarks._common import (
    ApothicSession,
    apothic_session,
    check_echo,
    dist_version,
    fmt_row,
    print_table,
    ray_session,
    source_state,
)

#: Issue 3's target for a warm call: p50 below Ray's.
WARM_TARGET = 1.0
QUICK = {
    "calls": 200,
    "warmup": 20,
    "cold": 3,
    "items": 2_000,
    "jobs": 1_000,
    "repeat": 1,
    "spawn_repeat": 1,
    "profile_rounds": 3,
}
FULL = {
    "calls": 1_000,
    "warmup": 50,
    "cold": 5,
    "items": 10_000,
    "jobs": 10_000,
    "repeat": 3,
    "spawn_repeat": 1,
    "profile_rounds": 10,
}


def _parser() -> argparse.ArgumentParser:
    assert __doc__
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    parser.add_argument("--calls", type=int, help=f"timed sequential remote() calls (default: {FULL['calls']})")
    parser.add_argument("--warmup", type=int, help=f"untimed calls before timing (default: {FULL['warmup']})")
    parser.add_argument("--cold", type=int, help=f"cold starts to time (default: {FULL['cold']})")
    parser.add_argument("--items", type=int, help=f"inputs per map and per Ray batch (default: {FULL['items']})")
    parser.add_argument("--jobs", type=int, help=f"jobs per spawn_map (default: {FULL['jobs']})")
    parser.add_argument(
        "--repeat", type=int, help=f"timed map runs and Ray batches; the median counts (default: {FULL['repeat']})"
    )
    parser.add_argument(
        "--spawn-repeat", type=int, help=f"timed spawn_map + wait runs (default: {FULL['spawn_repeat']})"
    )
    parser.add_argument("--no-ray", action="store_true", help="measure Apothic only")
    parser.add_argument(
        "--primitives",
        action="store_true",
        help="afterwards, run issue 4's Queue/Dict figures beside Redis and etcd (python -m benchmarks.primitives)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the timed figures: --profile-rounds maps of --items, then one spawn_map of --jobs with its "
        "waits, each under /proc CPU accounting and then under py-spy (the runtime with its containers, and "
        "this client); collapsed stacks and summary.txt go to DIR",
    )
    parser.add_argument(
        "--profile-rounds",
        type=int,
        help="with --profile: maps of --items profiled back to back, for enough samples "
        f"(default: {FULL['profile_rounds']})",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: py-spy --native (C frames too: gRPC, protobuf, syscalls); containers not sampled then",
    )
    return parser


def _profile_phase(name: str, run: Callable[[], int], targets: dict[str, int], out_dir: Path, native: bool) -> str:
    """Runs ``run`` (which returns how many items it did) twice: once with only CPU accounting
    from /proc (the runtime's process tree and this client), once under py-spy. Returns the
    summary; py-spy's collapsed stacks go to ``<out_dir>/<name>-<process>.txt``."""
    from benchmarks import _profile

    with _profile.cpu_usage(targets, recursive=("runtime",)) as usage:
        count = run()
    text = [f"{name}: {count:,} items in {usage.wall_s:.2f} s, CPU accounting only ({count / usage.wall_s:,.0f}/s)"]
    text.append(usage.report())
    named = {f"{name}-{proc}": pid for proc, pid in targets.items()}
    # Native sampling of the runtime and its nine containers slowed the map 3x: containers
    # are left out then (their CPU still shows in the accounting above).
    children = () if native else (f"{name}-runtime",)
    with _profile.pyspy(named, out_dir, subprocesses=children, native=native) as files:
        t0 = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - t0
    text.append(f"{name} under py-spy: {count:,} items in {elapsed:.2f} s ({count / elapsed:,.0f}/s)")
    text += [_profile.summarize(path, seconds=elapsed) for path in files.values() if path.exists()]
    runtime_file = files[f"{name}-runtime"]
    if name.startswith("map") and runtime_file.exists():
        text.append(_profile.stages(runtime_file, _profile.MAP_STAGES))
    return "\n\n".join(text)


def _profile(session: ApothicSession, opts: dict[str, int], out_dir: Path, native: bool) -> str:
    """Profiles ``--profile-rounds`` maps of ``--items`` back to back, and one spawn_map of
    ``--jobs`` with its waits; writes and returns ``summary.txt``."""
    targets = {"runtime": session.runtime_pid, "client": os.getpid()}
    echo, items, rounds, jobs = session.echo, opts["items"], opts["profile_rounds"], opts["jobs"]

    def maps() -> int:
        for _ in range(rounds):
            check_echo(list(echo.map(range(items))), items, "profiled map")
        return items * rounds

    def spawn() -> int:
        check_echo([j.wait() for j in echo.spawn_map(range(jobs))], jobs, "profiled spawn_map")
        return jobs

    summary = "\n\n".join(
        [
            _profile_phase(f"map-x{rounds}", maps, targets, out_dir, native),
            _profile_phase("spawn", spawn, targets, out_dir, native),
        ]
    )
    (out_dir / "summary.txt").write_text(summary + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Runs every figure for both peers and prints one table."""
    parser = _parser()
    args = parser.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    for key in opts:
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if opts["warmup"] < 0 or min(v for k, v in opts.items() if k != "warmup") < 1:
        parser.error("every count must be at least 1 (--warmup at least 0)")

    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    ray_latency = ray_tp = None
    ray_version = ""
    if not args.no_ray:
        with ray_session() as rs:
            if rs is not None:
                ray_version = rs.version
                ray_latency = invoke.ray_latency(rs, calls=opts["calls"], warmup=opts["warmup"], cold=opts["cold"])
                ray_tp = throughput.ray_tasks(rs, tasks=opts["items"], repeat=opts["repeat"])
    profile_summary = ""
    with apothic_session() as session:
        first_ns, warm = invoke.apothic_warm(session, calls=opts["calls"], warmup=opts["warmup"])
        apothic_tp = throughput.apothic_throughput(
            session, items=opts["items"], jobs=opts["jobs"], repeat=opts["repeat"], spawn_repeat=opts["spawn_repeat"]
        )
        if args.profile is not None:  # on the warm deployment, before the cold starts replace it
            profile_summary = _profile(session, opts, args.profile, args.native)
        cold = invoke.apothic_cold(session, cold=opts["cold"], first_ns=first_ns)
        apothic_latency = invoke.PeerResult(
            name="apothic", version=session.version, warm=warm, cold=cold, extra={"deploy_ms": session.deploy_ms}
        )
    wall_s = time.perf_counter() - t_start

    out: dict[str, Any] = {
        "benchmark": "all",
        "date": started.isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "options": opts,
        "versions": {"apothic": apothic_latency.version, "ray": ray_version or None},
        "source": source_state(),
        "latency": {
            "apothic": asdict(apothic_latency),
            "ray": asdict(ray_latency) if ray_latency else None,
            "ratio": {
                "warm_p50": apothic_latency.warm.p50_ms / ray_latency.warm.p50_ms,
                "warm_p99": apothic_latency.warm.p99_ms / ray_latency.warm.p99_ms,
                "cold_p50": apothic_latency.cold.p50_ms / ray_latency.cold.p50_ms,
            }
            if ray_latency
            else None,
        },
        "throughput": throughput.as_json(apothic_tp, ray_tp),
    }
    if profile_summary:
        out["profile_dir"] = str(args.profile)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return

    a, r = apothic_latency, ray_latency
    rows = [
        fmt_row(
            f"warm remote() p50, {a.warm.n:,} sequential calls (ms)", ".3f", a.warm.p50_ms, r.warm.p50_ms if r else None
        ),
        fmt_row("warm remote() p99 (ms)", ".3f", a.warm.p99_ms, r.warm.p99_ms if r else None),
        fmt_row("warm remote() mean (ms)", ".3f", a.warm.mean_ms, r.warm.mean_ms if r else None),
        *throughput.rows(apothic_tp, ray_tp),
        fmt_row(
            f"cold start: first call of a new deployment, median of {a.cold.n} (ms)",
            ".1f",
            a.cold.p50_ms,
            r.cold.p50_ms if r else None,
        ),
        fmt_row("app.deploy() (ms)", ".1f", a.extra["deploy_ms"], None),
    ]
    load = f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    header = [
        f"apothic benchmarks, {started.date().isoformat()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, apothic {a.version or dist_version('apothic')}"
        + (f", ray {ray_version}" if ray_version else ", ray not measured"),
        f"{' '.join(sys.argv[1:]) or 'default options'}: {opts}; took {wall_s:.0f} s; 1-min load average {load}",
    ]
    if source := source_state():
        header.append(f"source: {source}")
    footer = []
    if r:
        ratio = a.warm.p50_ms / r.warm.p50_ms
        footer.append(f"target (warm p50 below Ray's): {'met' if ratio < WARM_TARGET else 'NOT met'} ({ratio:.2f}x)")
    footer += throughput.notes(apothic_tp, ray_tp)
    print_table(header, rows, footer)
    if profile_summary:
        print(f"\nprofile written to {args.profile}/ (summary.txt and py-spy's collapsed stacks); CPU used:\n")
        print("\n\n".join(b for b in profile_summary.split("\n\n") if "CPU accounting only" in b or "CPU used" in b))


def _main_with_primitives(argv: list[str] | None = None) -> None:
    """:func:`main`, then ``benchmarks.primitives`` when ``--primitives`` is given."""
    args = _parser().parse_args(argv)
    main(argv)
    if args.primitives:
        from benchmarks import primitives

        primitives.main(["--json"] if args.json else [])


if __name__ == "__main__":
    _main_with_primitives()
