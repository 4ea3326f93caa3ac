"""The floors under a sequential Queue cycle or Dict CAS on this machine: ``python -m benchmarks._floors``.

A sequential client waits for each answer before it sends the next call, and every mutation
answers only after its write is durable (DESIGN section 4). So no implementation on this stack
can do a sequential mutation faster than one gRPC round trip between two Python processes
plus one durable commit of the embedded SurrealDB engine, whatever the control plane does in
between. This measures those parts alone, with no Apothic code in the path:

* ``fsync_ms``: appending 200 bytes to a file and ``fdatasync`` (the disk's own floor, which
  Redis with ``appendfsync always`` and etcd pay as well);
* ``commit_ms``: one transaction creating one small row through the embedded engine on
  ``surrealkv://``, flushed to the disk as the control plane has it do (one fsync per
  commit, ``ServerSettings.sync_commits``), called the way the control plane calls it;
* ``rpc_ms``: one message there and back on an open grpc.aio bidirectional stream between two
  Python processes, both ends bare (no auth, no dispatch).

Each is the median of ``--n`` tries. Prints one JSON object. :mod:`benchmarks.primitives`
runs it in a process of its own (so the engine's threads are gone before the next figure)
and turns the floors into the most cycles per second the design allows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The message both ways in the RPC floor: about the size of a small Queue or Dict call.
_PAYLOAD = b"x" * 100
_METHOD = "/apothic.floors.Echo/Stream"


def fsync_ms(directory: Path, n: int) -> float:
    """Median ms of appending 200 bytes to a file in ``directory`` and fdatasync-ing it."""
    path = directory / "fsync-floor"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e3


async def commit_ms(url: str, n: int) -> float:
    """Median ms of one transaction creating one small row, through the embedded engine as the
    control plane calls it (:func:`apothic.server.cbor.query_raw`)."""
    from surrealdb import AsyncSurreal

    from apothic.config import set_engine_threads, set_sync_commits
    from apothic.server import cbor
    from apothic.server.settings import ServerSettings

    cbor.install()
    settings = ServerSettings()  # the engine as the control plane runs it
    set_engine_threads(settings.engine_threads)
    set_sync_commits(settings.sync_commits)
    db: Any = AsyncSurreal(url)  # an embedded connection: connect() takes no URL
    if hasattr(db, "connect"):
        await db.connect()
    await db.use("floors", "floors")
    sql = "BEGIN TRANSACTION; CREATE floor CONTENT {n: $n, b: $b} RETURN NONE; COMMIT TRANSACTION;"
    times = []
    try:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            response = await cbor.query_raw(db, sql, {"n": i, "b": _PAYLOAD})
            times.append(time.perf_counter() - t0)
            if response.get("error"):
                raise RuntimeError(f"the floor commit failed: {response['error']}")
    finally:
        await db.close()
    return statistics.median(times[n // 10 :]) * 1e3


async def _echo_server(port_file: Path) -> None:
    import grpc
    import grpc.aio

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for message in requests:
            yield message

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("apothic.floors.Echo", {"Stream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def rpc_ms(n: int) -> float:
    """Median ms of one message there and back on an open grpc.aio stream to an echo server
    in another Python process."""
    import grpc.aio

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, "-m", "benchmarks._floors", "--echo-server", str(port_file)])
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the echo server did not start")
                await asyncio.sleep(0.05)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
                call = channel.stream_stream(_METHOD)()
                times = []
                for _ in range(n + n // 10):
                    t0 = time.perf_counter()
                    await call.write(_PAYLOAD)
                    await call.read()
                    times.append(time.perf_counter() - t0)
                await call.done_writing()
        finally:
            server.terminate()
            server.wait(10)
    return statistics.median(times[n // 10 :]) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._floors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where the disk floors write (default: a temporary directory)")
    parser.add_argument("--n", type=int, default=2000, help="tries per floor (default: 2000)")
    parser.add_argument("--echo-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server is not None:
        asyncio.run(_echo_server(args.echo_server))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="apothic-floors-") as tmp_name:
        tmp = Path(tmp_name)
        out = {
            "fsync_ms": round(fsync_ms(tmp, args.n), 4),
            "commit_ms": round(asyncio.run(commit_ms(f"surrealkv://{tmp / 'db'}", args.n)), 4),
            "rpc_ms": round(asyncio.run(rpc_ms(args.n)), 4),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
