"""Throughput: Apothic's ``map`` and ``spawn_map`` against Ray's tasks.

Run it from the repository root::

    python -m benchmarks.throughput [--items 10000] [--jobs 10000] [--repeat 3] [--json]

(``python -m benchmarks`` runs these together with the invoke benchmark.)

* **map**: ``list(echo.map(range(N)))`` end to end: inputs stream to the runtime in
  batches over one bidi call and the results come back in input order. Items per second.
* **spawn then wait**: ``jobs = echo.spawn_map(range(N))`` (returns once every job is
  durable) then ``[j.wait() for j in jobs]``. Jobs per second end to end, with the spawn
  phase (until all ids are durable) and the wait phase (one ``WaitJob`` RPC per job)
  timed apart.
* **spawn then gather**: the same, waiting with ``apothic.gather(*jobs)`` (where the SDK
  has it).
* **Ray**: ``refs = [f.remote(i) for i in range(N)]`` then ``ray.get(refs)``. Tasks per
  second end to end; the submit phase (until every ``f.remote`` returned) is timed too.
  Every Apothic figure is compared with this one.

Maps and Ray batches run ``--repeat`` times after an untimed 200-item warm-up, and the
table shows the median run; spawns run ``--spawn-repeat`` times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

from benchmarks._common import (
    ApothicSession,
    RaySession,
    apothic_session,
    check_echo,
    fmt_row,
    median,
    print_table,
    ray_session,
)

#: The issue-3 target for map, as a multiple of Ray's tasks/s.
MAP_TARGET = 2.5


@dataclass(frozen=True)
class Runs:
    """Repeated timings of one phase: seconds per run, and the rate of the median run."""

    count: int
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second of the median run."""
        return self.count / self.median_s

    def as_dict(self) -> dict[str, Any]:
        rates = [self.count / s for s in self.seconds]
        return {
            "count": self.count,
            "seconds": [round(s, 4) for s in self.seconds],
            "median_s": round(self.median_s, 4),
            "per_s": round(self.rate, 1),
            "per_s_min": round(min(rates), 1),
            "per_s_max": round(max(rates), 1),
        }


@dataclass(frozen=True)
class ApothicThroughput:
    """Apothic's map and spawn figures (``gather_*``: None where ``apothic.gather`` is missing)."""

    map: Runs
    spawn_total: Runs
    spawn_phase: Runs
    wait_phase: Runs
    gather_total: Runs | None = None
    gather_wait_phase: Runs | None = None


@dataclass(frozen=True)
class RayThroughput:
    """Ray's task figures."""

    total: Runs
    submit: Runs


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def apothic_map(session: ApothicSession, *, items: int, repeat: int, warmup: int = 200) -> Runs:
    """``list(echo.map(range(items)))``, ``repeat`` times after an untimed warm-up map."""
    echo = session.echo
    if warmup:
        check_echo(list(echo.map(range(warmup))), warmup, "warm-up map")
    seconds = []
    for _ in range(repeat):
        elapsed, results = _timed(lambda: list(echo.map(range(items))))
        check_echo(results, items, "map")
        seconds.append(elapsed)
    return Runs(items, seconds)


def apothic_spawn(session: ApothicSession, *, jobs: int, repeat: int, gather: bool = False) -> tuple[Runs, Runs, Runs]:
    """``echo.spawn_map(range(jobs))`` then ``job.wait()`` on each (``apothic.gather(*jobs)``
    when ``gather``), ``repeat`` times.

    Returns (end to end, spawn phase, wait phase).
    """
    import apothic

    echo = session.echo
    total, spawn, wait = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        handles = echo.spawn_map(range(jobs))
        t1 = time.perf_counter()
        results = apothic.gather(*handles) if gather else [j.wait() for j in handles]
        t2 = time.perf_counter()
        check_echo(results, jobs, "spawn_map + gather" if gather else "spawn_map + wait")
        total.append(t2 - t0)
        spawn.append(t1 - t0)
        wait.append(t2 - t1)
    return Runs(jobs, total), Runs(jobs, spawn), Runs(jobs, wait)


def apothic_throughput(
    session: ApothicSession, *, items: int, jobs: int, repeat: int, spawn_repeat: int
) -> ApothicThroughput:
    """Both Apothic throughput figures on one session."""
    import apothic

    mapped = apothic_map(session, items=items, repeat=repeat)
    total, spawn, wait = apothic_spawn(session, jobs=jobs, repeat=spawn_repeat)
    gather_total = gather_wait = None
    if hasattr(apothic, "gather"):
        time.sleep(1.0)  # let the last run's write-behind settle
        gather_total, _, gather_wait = apothic_spawn(session, jobs=jobs, repeat=spawn_repeat, gather=True)
    return ApothicThroughput(
        map=mapped,
        spawn_total=total,
        spawn_phase=spawn,
        wait_phase=wait,
        gather_total=gather_total,
        gather_wait_phase=gather_wait,
    )


def ray_tasks(session: RaySession, *, tasks: int, repeat: int, warmup: int = 200) -> RayThroughput:
    """``refs = [echo.remote(i) ...]; ray.get(refs)``, ``repeat`` times after a warm-up."""
    ray, echo = session.ray, session.echo
    if warmup:
        check_echo(ray.get([echo.remote(i) for i in range(warmup)]), warmup, "Ray warm-up")
    total, submit = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        refs = [echo.remote(i) for i in range(tasks)]
        t1 = time.perf_counter()
        results = ray.get(refs)
        t2 = time.perf_counter()
        check_echo(results, tasks, "Ray tasks")
        total.append(t2 - t0)
        submit.append(t1 - t0)
    return RayThroughput(total=Runs(tasks, total), submit=Runs(tasks, submit))


# -- report ---------------------------------------------------------------------------------


def rows(apothic: ApothicThroughput, ray: RayThroughput | None) -> list[tuple[str, ...]]:
    """The throughput lines of a table (metric, apothic, ray, apothic/ray)."""
    r = ray.total.rate if ray else None
    out = [
        fmt_row(f"map, {apothic.map.count:,} items end to end (items/s; Ray: tasks/s)", ",.0f", apothic.map.rate, r),
        fmt_row(
            f"spawn_map {apothic.spawn_total.count:,} jobs + wait all (jobs/s; Ray: tasks/s)",
            ",.0f",
            apothic.spawn_total.rate,
            r,
        ),
        fmt_row(
            "  spawn phase, until all ids durable (jobs/s; Ray: f.remote() submits/s)",
            ",.0f",
            apothic.spawn_phase.rate,
            ray.submit.rate if ray else None,
        ),
        fmt_row("  spawn phase (s)", ".2f", apothic.spawn_phase.median_s, None),
        fmt_row("  wait phase, one job.wait() per job (s)", ".2f", apothic.wait_phase.median_s, None),
    ]
    if apothic.gather_total is not None and apothic.gather_wait_phase is not None:
        out += [
            fmt_row(
                f"spawn_map {apothic.gather_total.count:,} + apothic.gather(*jobs) (jobs/s; Ray: tasks/s)",
                ",.0f",
                apothic.gather_total.rate,
                r,
            ),
            fmt_row("  wait phase, apothic.gather (s)", ".2f", apothic.gather_wait_phase.median_s, None),
        ]
    return out


def notes(apothic: ApothicThroughput, ray: RayThroughput | None) -> list[str]:
    """Lines under the table: spreads, the spawn split, the map target's verdict."""

    def spread(runs: Runs, unit: str) -> str:
        rates = sorted(runs.count / s for s in runs.seconds)
        if len(rates) == 1:
            return f"{rates[0]:,.0f} {unit} (1 run)"
        return f"{rates[0]:,.0f}-{rates[-1]:,.0f} {unit} over {len(rates)} runs"

    spawn, wait = apothic.spawn_phase.median_s, apothic.wait_phase.median_s
    share = wait / (spawn + wait)
    out = [
        f"map: {spread(apothic.map, 'items/s')}" + (f"; Ray: {spread(ray.total, 'tasks/s')}" if ray else ""),
        f"spawn_map + wait: spawn phase {spawn:.2f} s, wait phase {wait:.2f} s "
        f"({share:.0%} of the total, {wait / apothic.wait_phase.count * 1e3:.2f} ms per job.wait())",
    ]
    if apothic.gather_wait_phase is not None:
        g = apothic.gather_wait_phase
        out.append(
            f"spawn_map + apothic.gather(*jobs): wait phase {g.median_s:.2f} s "
            f"({g.median_s / g.count * 1e3:.2f} ms per job; "
            f"{wait / g.median_s:.1f}x faster than one job.wait() at a time)"
        )
    if ray:
        ratio = apothic.map.rate / ray.total.rate
        met = "met" if ratio >= MAP_TARGET else "NOT met"
        out.append(f"target (map at least {MAP_TARGET:g}x Ray's tasks/s): {met} ({ratio:.2f}x)")
    return out


def as_json(apothic: ApothicThroughput, ray: RayThroughput | None) -> dict[str, Any]:
    """The figures as plain data."""
    return {
        "apothic": {
            "map": apothic.map.as_dict(),
            "spawn_total": apothic.spawn_total.as_dict(),
            "spawn_phase": apothic.spawn_phase.as_dict(),
            "wait_phase": apothic.wait_phase.as_dict(),
            "gather_total": apothic.gather_total.as_dict() if apothic.gather_total else None,
            "gather_wait_phase": apothic.gather_wait_phase.as_dict() if apothic.gather_wait_phase else None,
        },
        "ray": {"tasks": ray.total.as_dict(), "submit": ray.submit.as_dict()} if ray else None,
        "ratio": {
            "map": apothic.map.rate / ray.total.rate,
            "spawn_total": apothic.spawn_total.rate / ray.total.rate,
            "map_target": MAP_TARGET,
            "map_target_met": apothic.map.rate / ray.total.rate >= MAP_TARGET,
        }
        if ray
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Runs both peers' throughput series and prints the comparison."""
    assert __doc__
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="inputs per map / Ray batch (default: 10000)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per spawn_map (default: 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of map and of Ray's batch (default: 3)")
    parser.add_argument("--spawn-repeat", type=int, default=1, help="timed spawn_map + wait runs (default: 1)")
    parser.add_argument("--no-ray", action="store_true", help="measure Apothic only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.items, args.jobs, args.repeat, args.spawn_repeat) < 1:
        parser.error("--items, --jobs, --repeat and --spawn-repeat must be at least 1")

    ray = None
    if not args.no_ray:
        with ray_session() as rs:
            if rs is not None:
                ray = ray_tasks(rs, tasks=args.items, repeat=args.repeat)
    with apothic_session() as session:
        apothic = apothic_throughput(
            session, items=args.items, jobs=args.jobs, repeat=args.repeat, spawn_repeat=args.spawn_repeat
        )
    if args.json:
        out = {
            "benchmark": "throughput",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            **as_json(apothic, ray),
        }
        print(json.dumps(out, indent=2))
        return
    header = [
        f"throughput benchmark, {datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        f"median of {args.repeat} map / Ray runs, {args.spawn_repeat} spawn run(s)",
    ]
    print_table(header, rows(apothic, ray), notes(apothic, ray))


if __name__ == "__main__":
    main()
