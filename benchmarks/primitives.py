"""Issue 4: ``apothic.Queue`` beside Redis and ``apothic.Dict`` beside etcd, in one run.

Run it from the repository root::

    python -m benchmarks.primitives              # about 90 s
    python -m benchmarks.primitives --json       # machine-readable
    python -m benchmarks.primitives --seconds 1  # a quick run
    python -m benchmarks.primitives --no-peers --seconds 0.3 --floor-tries 50   # a smoke test (the tests run it)
    python -m benchmarks.primitives --profile prof/   # py-spy on the runtime during the 16-client phases

Everything runs on loopback and is started here, in temporary directories, on free ports:

* ``redis-server`` with ``appendonly yes``, ``appendfsync always`` and ``save ""``: every
  acknowledged write is fsynced, as Apothic's are;
* ``etcd`` (3.4, Debian's ``etcd-server``): one member, its WAL fsynced per commit (its default);
* the Apothic runtime (``python -m benchmarks._runtime``) in a process of its own, on
  ``surrealkv://<tmp>`` (the on-disk store ``apothic up`` uses) unless ``--db-url`` says otherwise.

A peer whose binary or Python client is missing is skipped with a message on stderr.

Figures (each client loops for ``--seconds`` after ``--warmup`` seconds; ops/s counts whole cycles):

1. Queue cycle: ``q.put(v)``, ``q.claim()``, ``q.ack(claim)``, against Redis's reliable-queue
   cycle ``LPUSH q v``, ``BLMOVE q processing RIGHT LEFT``, ``LREM processing 1 v``. Sequential
   (one client, the blocking APIs) and 16 concurrent clients (16 asyncio tasks on ``.aio`` /
   ``redis.asyncio``) sharing one queue. Target: within 3x of Redis.
2. Dict CAS: ``d.get_entry(k)`` then ``d.put(k, v, if_version=entry.version)``, against etcd's
   ``Range(k)`` then ``Txn(compare mod_revision(k) == rev, then Put(k, v))``. Sequential and 16
   concurrent clients, each on its own key. Target: at least equal to etcd.

3. Sequential floors (:mod:`benchmarks._floors`, after the figures): one gRPC round trip between
   two bare Python processes and one durable embedded SurrealDB commit, with no Apothic code in
   the path, and the most sequential cycles per second they allow (a Queue cycle is three
   mutations, each a round trip and a commit; a Dict CAS is a read and a mutation); then the
   same cycles measured against a *bare service*, a grpc.aio server that does nothing but
   answer each message, after one durable commit when it is a write: the fastest a control
   plane built the fixed way could be, beside the peer of the same run.

etcd is reached over its native gRPC API (``etcdserverpb.KV/Range`` and ``/Txn``) with grpcio,
the messages encoded by hand (a few fields): the same transport as Apothic's client, without
``aetcd``'s pinned protobuf or the HTTP/JSON gateway's extra hop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import dist_version, runtime_process, source_state

#: Issue 4's targets: Queue ops/s at least 1/3 of Redis's; Dict CAS at least etcd's.
QUEUE_TARGET = 1 / 3
DICT_TARGET = 1.0
CONCURRENCY = 16


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc; 0.0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until(check: Callable[[], bool], proc: subprocess.Popen[Any], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start (exit code {proc.poll()}):\n{tail}")


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[tuple[int, int] | None]:
    """Starts redis-server (AOF, fsync always); yields (port, pid), or None when it is missing."""
    exe = shutil.which("redis-server")
    if exe is None:
        print(
            "redis-server is not installed; skipping the Redis peer (`apt-get install redis-server`)", file=sys.stderr
        )
        yield None
        return
    port, data, log = free_port(), tmp / "redis", tmp / "redis.log"
    data.mkdir()
    cmd = [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
           "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no", "--logfile", str(log)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait_until(ping, proc, "redis-server", log, 20)
        yield port, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def etcd_server(tmp: Path) -> Iterator[tuple[int, int] | None]:
    """Starts a one-member etcd; yields (client port, pid), or None when it is missing."""
    exe = shutil.which("etcd")
    if exe is None:
        print("etcd is not installed; skipping the etcd peer (`apt-get install etcd-server`)", file=sys.stderr)
        yield None
        return
    client, peer, log = free_port(), free_port(), tmp / "etcd.log"
    c_url, p_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    cmd = [exe, "--name", "bench", "--data-dir", str(tmp / "etcd"),
           "--listen-client-urls", c_url, "--advertise-client-urls", c_url,
           "--listen-peer-urls", p_url, "--initial-advertise-peer-urls", p_url,
           "--initial-cluster", f"bench={p_url}", "--log-level", "warn"]  # fmt: skip
    with log.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        import grpc

        def ready() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{client}") as ch:
                _Etcd.range_sync(ch, b"__ready__", timeout=1)
            return True

        _wait_until(ready, proc, "etcd", log, 30)
        yield client, proc.pid
    finally:
        _stop(proc)


# -- etcd's gRPC API, encoded by hand ---------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(tag: int, data: bytes) -> bytes:
    return _varint(tag << 3 | 2) + _varint(len(data)) + data


def _vi(tag: int, n: int) -> bytes:
    return _varint(tag << 3) + _varint(n)


def _fields(buf: bytes) -> dict[int, list[Any]]:
    """Decodes one protobuf message's varint and length-delimited fields."""
    out: dict[int, list[Any]] = {}
    i, n = 0, len(buf)
    while i < n:
        key = shift = 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        tag, wt = key >> 3, key & 7
        if wt == 0:
            v = shift = 0
            while True:
                b = buf[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            out.setdefault(tag, []).append(v)
        elif wt == 2:
            ln = shift = 0
            while True:
                b = buf[i]
                i += 1
                ln |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            out.setdefault(tag, []).append(buf[i : i + ln])
            i += ln
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wt}")
    return out


class _Etcd:
    """``etcdserverpb.KV`` Range and Txn (compare MOD == rev, then Put) over raw protobuf."""

    RANGE = "/etcdserverpb.KV/Range"
    TXN = "/etcdserverpb.KV/Txn"

    @staticmethod
    def range_req(key: bytes) -> bytes:
        return _ld(1, key)

    @staticmethod
    def mod_revision(resp: bytes) -> int:
        """The first KeyValue's mod_revision (0 when the key is missing)."""
        kvs = _fields(resp).get(2)
        return int(_fields(kvs[0]).get(3, [0])[0]) if kvs else 0

    @staticmethod
    def cas_req(key: bytes, mod_rev: int, value: bytes) -> bytes:
        # Compare{result=EQUAL(0), target=MOD(2), key, mod_revision}; RequestOp{request_put=PutRequest{key, value}}
        compare = _vi(2, 2) + _ld(3, key) + _vi(6, mod_rev)
        put = _ld(2, _ld(1, key) + _ld(2, value))
        return _ld(1, compare) + _ld(2, put)

    @staticmethod
    def succeeded(resp: bytes) -> bool:
        return bool(_fields(resp).get(2, [0])[0])

    @staticmethod
    def range_sync(channel: Any, key: bytes, timeout: float | None = None) -> bytes:
        call = channel.unary_unary(_Etcd.RANGE, request_serializer=None, response_deserializer=None)
        return call(_Etcd.range_req(key), timeout=timeout)  # type: ignore[no-any-return]


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured series: ``ops`` whole cycles in ``seconds``, and CPU seconds per cycle."""

    ops: int
    seconds: float
    ops_s: float
    clients: int
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)


class _Cpu:
    """CPU seconds of the server (by pid) and of this process over a measured window."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid

    def __enter__(self) -> _Cpu:
        self.s0 = cpu_s(self.pid) if self.pid else 0.0
        t = os.times()
        self.c0 = t.user + t.system
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = (cpu_s(self.pid) if self.pid else 0.0) - self.s0
        t = os.times()
        self.client = t.user + t.system - self.c0

    def per_op(self, ops: int) -> dict[str, float]:
        return {"server": round(self.server / ops * 1e3, 4), "client": round(self.client / ops * 1e3, 4)}


def run_sequential(cycle: Callable[[int], None], *, warmup: float, seconds: float, server_pid: int | None) -> Figure:
    """Calls ``cycle(i)`` in a loop: ``warmup`` seconds untimed, then ``seconds`` timed."""
    i = 0
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        cycle(i)
        i += 1
    ops = 0
    with _Cpu(server_pid) as cpu:
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            cycle(i)
            i += 1
            ops += 1
        elapsed = time.perf_counter() - t0
    return Figure(ops=ops, seconds=round(elapsed, 3), ops_s=ops / elapsed, clients=1, cpu_ms_per_op=cpu.per_op(ops))


async def run_concurrent(
    cycle: Callable[[int, int], Awaitable[None]],
    *,
    clients: int,
    warmup: float,
    seconds: float,
    server_pid: int | None,
) -> Figure:
    """``clients`` asyncio tasks each await ``cycle(client, i)`` in a loop; cycles started in
    the timed window count once finished (the window ends when the last task stops)."""
    loop = asyncio.get_running_loop()
    counts = [0] * clients
    phase = {"timing": False, "stop": False}

    async def client(c: int) -> None:
        i = 0
        while not phase["stop"]:
            timed = phase["timing"]
            await cycle(c, i)
            i += 1
            if timed:
                counts[c] += 1

    tasks = [asyncio.create_task(client(c)) for c in range(clients)]
    await asyncio.sleep(warmup)
    with _Cpu(server_pid) as cpu:
        t0 = loop.time()
        phase["timing"] = True
        await asyncio.sleep(seconds)
        phase["stop"] = True
        await asyncio.gather(*tasks)
        elapsed = loop.time() - t0
    ops = sum(counts)
    return Figure(
        ops=ops, seconds=round(elapsed, 3), ops_s=ops / elapsed, clients=clients, cpu_ms_per_op=cpu.per_op(ops)
    )


# -- the peers ----------------------------------------------------------------------------------


def apothic_figures(address: dict[str, Any], opts: argparse.Namespace) -> dict[str, Figure]:
    """Queue cycle and Dict CAS on Apothic, sequential and concurrent."""
    import apothic

    os.environ["APOTHIC_BASE_URL"] = address["base_url"]
    os.environ["APOTHIC_API_KEY"] = address["api_key"]
    pid, w, s, n = address["pid"], opts.warmup, opts.seconds, opts.clients
    out: dict[str, Figure] = {}
    tag = f"{os.getpid()}-{int(time.time())}"

    q = apothic.Queue.from_name(f"bench-q-{tag}")

    def queue_cycle(i: int) -> None:
        q.put(i)
        claims = q.claim(wait_s=5.0)
        q.ack(*claims)
        if len(claims) != 1:
            raise AssertionError(f"claim after put returned {len(claims)} items")

    out["queue_seq"] = run_sequential(queue_cycle, warmup=w, seconds=s, server_pid=pid)

    d = apothic.Dict.from_name(f"bench-d-{tag}")

    def cas(key: str, i: int) -> None:
        entry = d.get_entry(key)
        d.put(key, i, if_version=0 if entry is None else entry.version)

    out["dict_seq"] = run_sequential(lambda i: cas("seq", i), warmup=w, seconds=s, server_pid=pid)

    async def concurrent() -> None:
        qc = apothic.Queue.from_name(f"bench-qc-{tag}")

        async def queue_cycle_aio(c: int, i: int) -> None:
            await qc.aio.put(i)
            claims = await qc.aio.claim(wait_s=5.0)
            if claims:
                await qc.aio.ack(*claims)

        out["queue_conc"] = await _profiled(
            opts, "apothic-queue", pid,
            run_concurrent(queue_cycle_aio, clients=n, warmup=w, seconds=s, server_pid=pid),
        )  # fmt: skip

        async def cas_aio(c: int, i: int) -> None:
            key = f"k{c}"
            entry = await d.aio.get_entry(key)
            await d.aio.put(key, i, if_version=0 if entry is None else entry.version)

        out["dict_conc"] = await _profiled(
            opts, "apothic-dict", pid, run_concurrent(cas_aio, clients=n, warmup=w, seconds=s, server_pid=pid)
        )
        # Closed before asyncio.run closes the loop, which gRPC's poller would otherwise still call.
        from apothic._lazy import get_client

        await get_client().close()

    asyncio.run(concurrent())
    return out


async def _profiled(opts: argparse.Namespace, name: str, pid: int, coro: Awaitable[Figure]) -> Figure:
    """Awaits ``coro``, under py-spy on ``pid`` when ``--profile`` is given (summary printed to stderr)."""
    if opts.profile is None:
        return await coro
    from benchmarks import _profile

    with _profile.pyspy({name: pid}, opts.profile) as files:
        t0 = time.perf_counter()
        fig = await coro
        elapsed = time.perf_counter() - t0
    if files[name].exists():
        summary = _profile.summarize(files[name], seconds=elapsed)
        (opts.profile / f"{name}-summary.txt").write_text(summary + "\n")
        print(f"\n{name} (runtime process, py-spy):\n{summary}", file=sys.stderr)
    return fig


def redis_figures(port: int, pid: int, opts: argparse.Namespace) -> dict[str, Figure]:
    """The reliable-queue cycle LPUSH + BLMOVE + LREM, sequential and concurrent."""
    import redis
    import redis.asyncio as aredis

    w, s, n = opts.warmup, opts.seconds, opts.clients
    r = redis.Redis(port=port)
    out: dict[str, Figure] = {}

    def cycle(i: int) -> None:
        v = f"s{i}"
        r.lpush("q", v)
        got = r.blmove("q", "processing", 5, "RIGHT", "LEFT")
        if got is None:
            raise AssertionError("BLMOVE after LPUSH timed out")
        r.lrem("processing", 1, got)  # type: ignore[arg-type]  # bytes is accepted

    out["queue_seq"] = run_sequential(cycle, warmup=w, seconds=s, server_pid=pid)
    r.close()

    async def concurrent() -> None:
        ar = aredis.Redis(port=port, max_connections=4 * n)

        async def cycle_aio(c: int, i: int) -> None:
            await ar.lpush("qc", f"{c}-{i}")
            got = await ar.blmove("qc", "processing-c", 5, "RIGHT", "LEFT")
            if got is not None:
                await ar.lrem("processing-c", 1, got)  # type: ignore[arg-type]

        out["queue_conc"] = await run_concurrent(cycle_aio, clients=n, warmup=w, seconds=s, server_pid=pid)
        await ar.aclose()

    asyncio.run(concurrent())
    return out


def etcd_figures(port: int, pid: int, opts: argparse.Namespace) -> dict[str, Figure]:
    """Range then Txn(compare mod_revision, put), sequential and concurrent."""
    import grpc

    w, s, n = opts.warmup, opts.seconds, opts.clients
    out: dict[str, Figure] = {}
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as ch:
        rng = ch.unary_unary(_Etcd.RANGE)
        txn = ch.unary_unary(_Etcd.TXN)

        def cas(key: bytes, i: int) -> None:
            rev = _Etcd.mod_revision(rng(_Etcd.range_req(key)))
            if not _Etcd.succeeded(txn(_Etcd.cas_req(key, rev, str(i).encode()))):
                raise AssertionError("uncontended etcd txn failed its compare")

        out["dict_seq"] = run_sequential(lambda i: cas(b"seq", i), warmup=w, seconds=s, server_pid=pid)

    async def concurrent() -> None:
        async with grpc.aio.insecure_channel(target) as ach:
            arng = ach.unary_unary(_Etcd.RANGE)
            atxn = ach.unary_unary(_Etcd.TXN)

            async def cas_aio(c: int, i: int) -> None:
                key = f"k{c}".encode()
                rev = _Etcd.mod_revision(await arng(_Etcd.range_req(key)))
                if not _Etcd.succeeded(await atxn(_Etcd.cas_req(key, rev, str(i).encode()))):
                    raise AssertionError("etcd txn on a client's own key failed its compare")

            out["dict_conc"] = await run_concurrent(cas_aio, clients=n, warmup=w, seconds=s, server_pid=pid)

    asyncio.run(concurrent())
    return out


# -- report -----------------------------------------------------------------------------------

ROWS = [
    ("queue_seq", "Queue put+claim+ack, 1 client (cycles/s)", "redis", "LPUSH+BLMOVE+LREM"),
    ("queue_conc", "Queue put+claim+ack, {n} clients (cycles/s)", "redis", "LPUSH+BLMOVE+LREM"),
    ("dict_seq", "Dict CAS, 1 client (CAS/s)", "etcd", "Range+Txn"),
    ("dict_conc", "Dict CAS, {n} clients, own keys (CAS/s)", "etcd", "Range+Txn"),
]


def verdicts(results: dict[str, dict[str, Figure]]) -> dict[str, dict[str, Any]]:
    """apothic/peer ratio and target per figure (None where the peer was not measured)."""
    out = {}
    for key, _, peer, _ in ROWS:
        a, p = results["apothic"].get(key), results.get(peer, {}).get(key)
        if a is None or p is None:
            continue
        ratio = a.ops_s / p.ops_s
        target = QUEUE_TARGET if key.startswith("queue") else DICT_TARGET
        out[key] = {"peer": peer, "ratio": ratio, "target": target, "met": ratio >= target}
    return out


def measure_floors(tmp: Path, tries: int) -> dict[str, float] | None:
    """Runs :mod:`benchmarks._floors` (``tries`` per floor) in a process of its own; None (with
    a message) when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._floors", "--dir", str(tmp), "--n", str(tries)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"measuring the floors failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    floors: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return floors


def ceilings(floors: dict[str, float], results: dict[str, dict[str, Figure]]) -> dict[str, dict[str, Any]]:
    """The most sequential cycles per second the floors allow, beside what was measured.

    A Queue cycle is three mutations (each one round trip and one durable commit); a Dict CAS
    is a read (one round trip) and a mutation.
    """
    rpc, commit = floors["rpc_ms"], floors["commit_ms"]
    shapes = {"queue_seq": 3 * (rpc + commit), "dict_seq": 2 * rpc + commit}
    bare = {"queue_seq": floors.get("bare_queue_ms"), "dict_seq": floors.get("bare_dict_ms")}
    out = {}
    for key, floor_ms in shapes.items():
        peer = "redis" if key.startswith("queue") else "etcd"
        row: dict[str, Any] = {"floor_ms": round(floor_ms, 4), "ceiling_ops_s": round(1e3 / floor_ms, 1)}
        measured, p = results.get("apothic", {}).get(key), results.get(peer, {}).get(key)
        if measured is not None:
            row["apothic_ms"] = round(1e3 / measured.ops_s, 4)
        if (bare_ms := bare[key]) is not None:
            row["bare_ms"] = round(bare_ms, 4)
        if p is not None:
            row["ceiling_ratio"] = round(1e3 / floor_ms / p.ops_s, 3)
            if bare_ms is not None:
                row["bare_ratio"] = round(1e3 / bare_ms / p.ops_s, 3)
        out[key] = row
    return out


def print_report(
    header: list[str], results: dict[str, dict[str, Figure]], n: int, floors: dict[str, float] | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    v = verdicts(results)
    table = Table()
    for name, justify in [("metric", "left"), ("apothic", "right"), ("peer", "left"), ("peer ops/s", "right"),
                          ("apothic/peer", "right"), ("target", "left"), ("server CPU ms/op", "right")]:  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, label, peer, how in ROWS:
        a, p = results["apothic"].get(key), results.get(peer, {}).get(key)
        if a is None:
            continue
        verdict = v.get(key)
        target = "within 3x" if key.startswith("queue") else "≥ etcd"
        table.add_row(
            label.format(n=n),
            f"{a.ops_s:,.0f}",
            f"{peer} {how}",
            "-" if p is None else f"{p.ops_s:,.0f}",
            "-" if verdict is None else f"{verdict['ratio']:.2f}x",
            "-" if verdict is None else f"{target}: {'met' if verdict['met'] else 'NOT met'}",
            f"{a.cpu_ms_per_op['server']:.3f} | " + ("-" if p is None else f"{p.cpu_ms_per_op['server']:.3f}"),
        )
    console = Console(width=max(150, Console().width))
    console.print("\n".join(header), highlight=False)
    console.print(table)
    console.print(
        "Dict CAS = apothic d.get_entry(k) + d.put(k, v, if_version=version); etcd Range(k) + "
        "Txn(compare mod_revision(k) == rev, then Put). server CPU ms/op = apothic's runtime process | the peer's "
        "server, user+system CPU over the timed window per cycle.",
        highlight=False,
    )
    if floors is None:
        return
    console.print(
        f"Sequential floors on this machine (medians, no Apothic code): one gRPC round trip between two Python "
        f"processes {floors['rpc_ms']:.3f} ms; one durable embedded SurrealDB commit {floors['commit_ms']:.3f} ms; "
        f"fdatasync of 200 bytes {floors['fsync_ms']:.3f} ms.",
        highlight=False,
    )
    floor_table = Table()
    columns = ("sequential", "floor ms/cycle", "ceiling cycles/s", "ceiling/peer", "bare service ms/cycle",
               "bare service/peer", "apothic ms/cycle")  # fmt: skip
    for name in columns:
        floor_table.add_column(name, justify="left" if name == "sequential" else "right")
    for key, row in ceilings(floors, results).items():
        floor_table.add_row(
            "Queue cycle: 3 x (round trip + commit)" if key == "queue_seq" else "Dict CAS: 2 round trips + commit",
            f"{row['floor_ms']:.3f}",
            f"{row['ceiling_ops_s']:,.0f}",
            f"{row['ceiling_ratio']:.2f}x" if "ceiling_ratio" in row else "-",
            f"{row['bare_ms']:.3f}" if "bare_ms" in row else "-",
            f"{row['bare_ratio']:.2f}x" if "bare_ratio" in row else "-",
            f"{row['apothic_ms']:.3f}" if "apothic_ms" in row else "-",
        )
    console.print(floor_table)
    console.print(
        "floor = the sum of the parts measured alone; bare service = the same cycle against a grpc.aio server that "
        "only answers, after one durable commit per write (medians).",
        highlight=False,
    )


def peer_figures(
    tmp: Path, opts: argparse.Namespace, results: dict[str, dict[str, Figure]], versions: dict[str, str | None]
) -> None:
    """Starts Redis, then etcd, each alone, and adds their figures and versions (a missing one is skipped)."""
    try:
        import redis
    except ImportError:
        print("the `redis` client is not installed; skipping Redis (`pip install 'apothic[bench]'`)", file=sys.stderr)
    else:
        with redis_server(tmp) as srv:
            if srv is not None:
                versions["redis"] = redis.Redis(port=srv[0]).info("server")["redis_version"]
                results["redis"] = redis_figures(srv[0], srv[1], opts)
    with etcd_server(tmp) as srv:
        if srv is not None:
            ver = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split()
            versions["etcd"] = ver[2] if len(ver) > 2 else ""
            results["etcd"] = etcd_figures(srv[0], srv[1], opts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.primitives", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per figure (default: 8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each figure (default: 1)")
    parser.add_argument("--clients", type=int, default=CONCURRENCY, help=f"concurrent clients (default: {CONCURRENCY})")
    parser.add_argument(
        "--db-url", help="the Apothic runtime's SurrealDB URL (default: surrealkv://<temp dir>, on disk; or mem://)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy on the runtime during Apothic's concurrent figures"
    )
    parser.add_argument("--no-peers", action="store_true", help="measure Apothic and the floors only (a smoke test)")
    parser.add_argument("--floor-tries", type=int, default=2000, help="tries per floor (default: 2000)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.clients < 1 or args.floor_tries < 1:
        parser.error("--seconds must be positive, --warmup at least 0, --clients and --floor-tries at least 1")

    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, dict[str, Figure]] = {}
    versions: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="apothic-primitives-") as tmp_name:
        tmp = Path(tmp_name)
        # One server at a time, so that none shares the two cores with another.
        if not args.no_peers:
            peer_figures(tmp, args, results, versions)
        db_url = args.db_url or f"surrealkv://{tmp / 'apothic'}"
        with runtime_process(db_url) as address:
            results["apothic"] = apothic_figures(address, args)
        versions["apothic"] = dist_version("apothic")
        floors = measure_floors(tmp, args.floor_tries)
    wall_s = time.perf_counter() - t_start

    out: dict[str, Any] = {
        "benchmark": "primitives",
        "date": started.isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "options": {"seconds": args.seconds, "warmup": args.warmup, "clients": args.clients, "db_url": db_url},
        "versions": versions,
        "source": source_state(),
        "results": {peer: {k: asdict(f) for k, f in figs.items()} for peer, figs in results.items()},
        "verdicts": verdicts(results),
        "floors": floors,
        "ceilings": ceilings(floors, results) if floors is not None else None,
    }
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return
    load = f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    header = [
        f"issue 4 primitives, {started.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"apothic store {db_url.split('://')[0]}://; {args.seconds:g} s per figure after {args.warmup:g} s warm-up; "
        f"took {wall_s:.0f} s; 1-min load average {load}",
    ]
    if source := out["source"]:
        header.append(f"source: {source}")
    print_report(header, results, args.clients, floors)


if __name__ == "__main__":
    main()
