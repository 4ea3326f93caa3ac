"""HTTP ingress overhead: ``python -m benchmarks.ingress``.

The same Starlette app (:mod:`benchmarks.web_funcs`) is measured twice, in one run:

1. served by uvicorn directly on this machine (a process of its own);
2. deployed with ``@app.asgi`` on a local runtime (a process of its own) and reached
   through the control plane's HTTP ingress, which tunnels each connection to the worker
   and on to the same uvicorn app inside a container: the runtime's own in-process worker
   (``apothic up``'s; it hands the container connection to the ingress);
3. the same, served by a worker in a process of its own (``apothic worker``) that dials
   the control plane: each connection rides a ``WorkerService.Tunnel`` gRPC stream, as it
   does from another machine.

For each: sequential latency (p50/p99 over ``--requests`` requests on one keep-alive
connection) and throughput (``--connections`` keep-alive connections at once, requests/s
and p50/p99 under that load). The load generator is a raw asyncio HTTP/1.1 client in a
separate process, so it shares a GIL with neither server. The ratios printed are
ingress / direct (target: p50 overhead under 2x).

    python -m benchmarks.ingress              # the full run
    python -m benchmarks.ingress --quick      # a smoke test
    python -m benchmarks.ingress --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from benchmarks._common import ROOT, Stats, runtime_process

PATH = "/hello"


# -- the load generator (runs in its own process: --client) ----------------------------


async def _connection(host: str, port: int, path: str, count: int, samples: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    clock = time.perf_counter_ns
    try:
        for _ in range(count):
            t0 = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise AssertionError(f"unexpected answer: {head[:200]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            samples.append(clock() - t0)
    finally:
        writer.close()


async def _load(url: str, *, requests: int, connections: int, warmup: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    await _connection(host, port, path, warmup, [])
    sequential: list[int] = []
    await _connection(host, port, path, requests, sequential)
    per = max(1, requests // connections)
    loaded: list[int] = []
    # Warm every connection's tunnel before the clock starts.
    await asyncio.gather(*(_connection(host, port, path, 5, []) for _ in range(connections)))
    start = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, path, per, loaded) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return {
        "sequential": asdict(Stats.of(sequential)),
        "loaded": asdict(Stats.of(loaded)),
        "requests_per_s": len(loaded) / elapsed,
    }


# -- the servers ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def direct_uvicorn() -> Iterator[str]:
    """uvicorn serving the app on a free port, in its own process; yields the URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.web_funcs:asgi_app_factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _dialing_worker(rt: dict[str, Any]) -> Iterator[None]:
    """``apothic worker`` in a process of its own, dialing the runtime over gRPC."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="apothic-bench-worker-") as state:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apothic.cli.main",
                "worker",
                "--base-url",
                rt["base_url"],
                "--api-key",
                rt["api_key"],
                "--state-dir",
                state,
                "--worker-id",
                "workers:bench-dialer",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(15)


@contextlib.contextmanager
def through_ingress(*, dialing_worker: bool = False) -> Iterator[str]:
    """The app deployed on a local runtime process; yields its URL on the ingress.

    Args:
        dialing_worker: serve it from a worker process that dials in over gRPC instead of
            the runtime's in-process worker.
    """
    import apothic
    from benchmarks import web_funcs

    with runtime_process(workers=0 if dialing_worker else None) as rt, contextlib.ExitStack() as stack:
        if dialing_worker:
            stack.enter_context(_dialing_worker(rt))
        os.environ["APOTHIC_BASE_URL"] = rt["base_url"]
        os.environ["APOTHIC_API_KEY"] = rt["api_key"]
        web_funcs.app._client = apothic.ClientConfig(base_url=rt["base_url"], api_key=rt["api_key"])
        web_funcs.app.deploy()
        try:
            url = web_funcs.hello.get_web_url() + PATH
            # The first request waits for a container (and, with a dialing worker, for the
            # worker to connect); the load generator's warm-up must not time that.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - loopback
                        if r.status == 200:
                            break
                time.sleep(0.2)
            yield url
        finally:
            web_funcs.app.stop()


def _measure(url: str, *, requests: int, connections: int, warmup: int) -> dict[str, Any]:
    """Runs the load generator in a process of its own against ``url``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ingress",
            "--client",
            url,
            "--requests",
            str(requests),
            "--connections",
            str(connections),
            "--warmup",
            str(warmup),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Row:
    label: str
    direct: float
    ingress: float
    grpc: float

    def ratio(self, value: float) -> float:
        return value / self.direct if self.direct else float("inf")


def _rows(direct: dict[str, Any], ingress: dict[str, Any], grpc: dict[str, Any]) -> list[Row]:
    def row(label: str, *path: str) -> Row:
        def get(doc: dict[str, Any]) -> float:
            value: Any = doc
            for key in path:
                value = value[key]
            return float(value)

        return Row(label, get(direct), get(ingress), get(grpc))

    return [
        row("sequential p50 (ms)", "sequential", "p50_ms"),
        row("sequential p99 (ms)", "sequential", "p99_ms"),
        row("loaded p50 (ms)", "loaded", "p50_ms"),
        row("loaded p99 (ms)", "loaded", "p99_ms"),
        row("throughput (req/s)", "requests_per_s"),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs the benchmark (or, with ``--client``, the load)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per series (default: 5000)")
    parser.add_argument("--connections", type=int, default=16, help="connections under load (default: 16)")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring (default: 300)")
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = 500, 50
    if args.client:
        result = asyncio.run(
            _load(args.client, requests=args.requests, connections=args.connections, warmup=args.warmup)
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return
    knobs = {"requests": args.requests, "connections": args.connections, "warmup": args.warmup}
    with direct_uvicorn() as url:
        direct = _measure(url, **knobs)
    with through_ingress() as url:
        ingress = _measure(url, **knobs)
    with through_ingress(dialing_worker=True) as url:
        grpc = _measure(url, **knobs)
    rows = _rows(direct, ingress, grpc)
    if args.json:
        ratios = {r.label: {"ingress": r.ratio(r.ingress), "ingress_grpc_worker": r.ratio(r.grpc)} for r in rows}
        doc = {"direct": direct, "ingress": ingress, "ingress_grpc_worker": grpc, "ratios": ratios, **knobs}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    print(
        f"HTTP ingress vs uvicorn direct: {args.requests} sequential requests on one connection, "
        f"then {args.connections} connections at once ({os.cpu_count()} cores)"
    )
    print(f"{'':22}{'uvicorn direct':>15}{'ingress':>10}{'ratio':>8}{'ingress, gRPC worker':>22}{'ratio':>8}")
    for r in rows:
        print(
            f"{r.label:22}{r.direct:15.3f}{r.ingress:10.3f}{r.ratio(r.ingress):7.2f}x"
            f"{r.grpc:22.3f}{r.ratio(r.grpc):7.2f}x"
        )
    p50, p50_grpc = rows[0].ratio(rows[0].ingress), rows[0].ratio(rows[0].grpc)
    verdict = "meets" if p50 < 2 else "misses"
    print(
        f"p50 overhead {p50:.2f}x with the in-process worker ({verdict} the target of under 2x); "
        f"{p50_grpc:.2f}x through a worker that dials in over gRPC"
    )


if __name__ == "__main__":
    main()
