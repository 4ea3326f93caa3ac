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
  Python processes, both ends bare (no auth, no dispatch);
* ``bare_queue_ms`` and ``bare_dict_ms``: the two together, as a *bare service*: a grpc.aio
  server in its own process that answers each message on one open stream, after one durable
  commit (the ``commit_ms`` transaction) when the message is a write, and does nothing else.
  A sequential Queue cycle is three writes there and back; a Dict CAS is a message answered
  at once (a read the control plane serves from memory) and a write. This is the fastest
  any control plane built the fixed way (Python, grpc.aio, the embedded engine, durable
  acknowledgements) could serve those cycles on this machine: the parts' costs as they add up
  when they share the machine's cores and the server's event loop, which the sum of
  ``rpc_ms`` and ``commit_ms`` leaves out.

Everything runs on the loop the control plane serves on (:func:`apothic.runtime.run_serving`:
uvloop's), the clients too, which makes them the fastest a Python client could be (one
coroutine, no blocking facade). Each is the median of ``--n`` tries. Prints one JSON object.
:mod:`benchmarks.primitives` runs it in a process of its own (so the engine's threads are gone
before the next figure) and turns the floors into the most cycles per second the design allows.
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

from apothic.runtime import run_serving

#: The message both ways in the RPC floor: about the size of a small Queue or Dict call.
_PAYLOAD = b"x" * 100
_METHOD = "/apothic.floors.Bare/Stream"
#: The bare service commits before answering a message that starts with this byte.
_WRITE = b"w"
#: The statement of the commit floor and of the bare service's writes.
_COMMIT_SQL = "BEGIN TRANSACTION; CREATE floor CONTENT {n: $n, b: $b} RETURN NONE; COMMIT TRANSACTION;"


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


async def _open_engine(url: str) -> Any:
    """An embedded connection to ``url``, opened as the control plane opens its store."""
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
    return db


async def _commit(db: Any, n: int, payload: bytes) -> None:
    """One durable transaction creating one small row, called as the control plane calls the engine."""
    from apothic.server import cbor

    response = await cbor.query_raw(db, _COMMIT_SQL, {"n": n, "b": payload})
    if response.get("error"):
        raise RuntimeError(f"the floor commit failed: {response['error']}")


async def commit_ms(url: str, n: int) -> float:
    """Median ms of one transaction creating one small row, through the embedded engine as the
    control plane calls it (:func:`apothic.server.cbor.query_raw`)."""
    db = await _open_engine(url)
    times = []
    try:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            await _commit(db, i, _PAYLOAD)
            times.append(time.perf_counter() - t0)
    finally:
        await db.close()
    return statistics.median(times[n // 10 :]) * 1e3


async def _bare_server(port_file: Path, url: str) -> None:
    """The bare service: answers each message of a stream, after one durable commit for a write."""
    import grpc
    import grpc.aio

    db = await _open_engine(url)
    count = 0

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        nonlocal count
        async for message in requests:
            if message[:1] == _WRITE:
                count += 1
                await _commit(db, count, message)
            yield message

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("apothic.floors.Bare", {"Stream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def service_floors(directory: Path, n: int) -> dict[str, float]:
    """``rpc_ms``, ``bare_queue_ms`` and ``bare_dict_ms`` (medians of ``n`` tries each) against
    the bare service in another Python process, its engine on ``surrealkv://`` in ``directory``."""
    import grpc.aio

    port_file = directory / "bare-port"
    url = f"surrealkv://{directory / 'bare'}"
    server = subprocess.Popen([sys.executable, "-m", "benchmarks._floors", "--bare-server", str(port_file), url])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare service did not start")
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            call = channel.stream_stream(_METHOD)()
            read, write = b"r" + _PAYLOAD[1:], _WRITE + _PAYLOAD[1:]

            async def median_ms(cycle: tuple[bytes, ...]) -> float:
                times = []
                for _ in range(n + n // 10):
                    t0 = time.perf_counter()
                    for message in cycle:
                        await call.write(message)
                        await call.read()
                    times.append(time.perf_counter() - t0)
                return statistics.median(times[n // 10 :]) * 1e3

            out = {
                "rpc_ms": await median_ms((read,)),
                "bare_queue_ms": await median_ms((write, write, write)),
                "bare_dict_ms": await median_ms((read, write)),
            }
            await call.done_writing()
    finally:
        server.terminate()
        server.wait(10)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._floors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where the disk floors write (default: a temporary directory)")
    parser.add_argument("--n", type=int, default=2000, help="tries per floor (default: 2000)")
    parser.add_argument("--bare-server", nargs=2, metavar=("PORT_FILE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server is not None:
        run_serving(_bare_server(Path(args.bare_server[0]), args.bare_server[1]))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="apothic-floors-") as tmp_name:
        tmp = Path(tmp_name)
        out = {
            "fsync_ms": round(fsync_ms(tmp, args.n), 4),
            "commit_ms": round(run_serving(commit_ms(f"surrealkv://{tmp / 'db'}", args.n)), 4),
            **{k: round(v, 4) for k, v in run_serving(service_floors(tmp, args.n)).items()},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
