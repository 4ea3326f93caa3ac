"""A local runtime in a process of its own: ``python -m benchmarks._runtime``.

Starts a control plane (embedded SurrealDB) and local workers on one event loop, prints
one JSON line ``{"base_url": ..., "api_key": ...}`` to stdout once they are up, and runs
until its stdin closes or it receives SIGTERM/SIGINT; then it stops the workers and the
control plane cleanly. Benchmarks talk to it over gRPC, so the client they measure never
shares a GIL with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from apothic.runtime import LocalRuntime, run_serving, tune_gc_for_serving


def _watch_stdin(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Sets ``done`` when stdin reaches end of file (the parent closed it or died)."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            done.set()

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError):
        # A regular file cannot be watched; signals still stop the runtime.
        pass


async def serve(*, db_url: str, workers: int) -> None:
    """Runs a :class:`LocalRuntime` until stdin closes or a stop signal arrives.

    Args:
        db_url: SurrealDB URL for the control plane.
        workers: how many local workers to start.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    runtime = LocalRuntime(db_url=db_url, workers=workers)
    try:
        await runtime.astart()
        tune_gc_for_serving()  # as `apothic up` does
        sys.stdout.write(
            json.dumps({"base_url": runtime.address, "api_key": runtime.api_key, "http_url": runtime.http_url}) + "\n"
        )
        sys.stdout.flush()
        _watch_stdin(loop, done)
        await done.wait()
    finally:
        await runtime.astop()


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and serves."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-url", default="mem://", help="SurrealDB URL (default: mem://)")
    parser.add_argument("--workers", type=int, default=1, help="local workers to start (default: 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    run_serving(serve(db_url=args.db_url, workers=args.workers))  # the loop `apothic up` serves on


if __name__ == "__main__":
    main()
