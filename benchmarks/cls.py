"""Issue 7: a method call on a warm ``@app.cls`` instance beside a Ray actor method call.

Run it from the repository root::

    python -m benchmarks.cls [--calls 1000] [--warmup 50] [--json]

Both peers run in one invocation on the same machine. Apothic: a runtime in another
process (:mod:`benchmarks._runtime`), a class with one ``@method`` that returns its
argument, deployed by value; after the warm-up, ``--calls`` sequential
``instance.echo.remote(i)`` round trips. Ray (``pip install 'apothic[bench]'``): an actor
with the same method, ``ray.get(actor.echo.remote(i))`` the same number of times. The
table shows p50, p99 and mean per call and the ratio (below 1: Apothic is faster).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

from benchmarks._common import Stats, print_table, ray_session, runtime_process, time_calls


def apothic_method(calls: int, warmup: int) -> Stats:
    """Warm method calls on one named instance."""
    import apothic

    with runtime_process() as address:
        config = apothic.ClientConfig(base_url=address["base_url"], api_key=address["api_key"])
        app = apothic.App("apothic-bench-cls", client=config)

        @app.cls()
        class Echo:
            @apothic.method()
            def echo(self, x: Any) -> Any:
                return x

        app.deploy()
        try:
            inst = Echo.named("bench")
            time_calls(inst.echo.remote, warmup)
            return Stats.of(time_calls(inst.echo.remote, calls, start=warmup))
        finally:
            app.stop()


def ray_method(calls: int, warmup: int) -> Stats | None:
    """Warm method calls on one Ray actor."""
    with ray_session(num_cpus=os.cpu_count() or 1) as session:
        if session is None:
            return None
        ray = session.ray

        @ray.remote
        class Echo:
            def echo(self, x: Any) -> Any:
                return x

        actor = Echo.remote()  # type: ignore[attr-defined]

        def call(i: int) -> Any:
            return ray.get(actor.echo.remote(i))

        time_calls(call, warmup)
        return Stats.of(time_calls(call, calls, start=warmup))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Warm method call: apothic @app.cls vs a Ray actor.")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    ours = apothic_method(opts.calls, opts.warmup)
    ray = ray_method(opts.calls, opts.warmup)
    if opts.json:
        print(json.dumps({"apothic": asdict(ours), "ray": asdict(ray) if ray else None}, indent=2))
        return
    rows = []
    for label, attr in (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("mean ms", "mean_ms")):
        a = getattr(ours, attr)
        r = getattr(ray, attr) if ray else None
        ratio = f"{a / r:.2f}x" if r else "-"
        rows.append((f"method call {label}", f"{a:.3f}", f"{r:.3f}" if r else "-", ratio))
    header = [f"issue 7: warm method call, apothic @app.cls vs a Ray actor ({opts.calls} sequential calls each)"]
    print_table(header, rows, ["ray column: ray.get(actor.echo.remote(i)) on ray.init(num_cpus=cores)"])


if __name__ == "__main__":
    main()
