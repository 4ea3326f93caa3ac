"""Issue 5: cold starts on images (process and docker executors) and a 100 MB volume
commit and reload, each beside its floor or peer, in one run.

Run it from the repository root::

    python -m benchmarks.environments            # about a minute (more with docker)
    python -m benchmarks.environments --json
    python -m benchmarks.environments --cold 3 --volume-mb 20   # a smoke test

What is measured (a local runtime in this process, ``mem://`` store, one worker per executor):

1. Cold start: the app is deployed again (a new deployment, so a new container) and its
   first ``remote()`` is timed to the result, ``--cold`` times, for a function without an
   image (the process executor forks it from a pre-imported zygote), on a cached image (built
   before the timing starts), and on a fresh image (a new ``env`` value each time, so the
   image is built inside the timing: deploy + build + first call). The floors beside them:
   a fresh ``python -c "import apothic._container.__main__"`` (what a container must at
   least import) and ``docker run --rm`` of the base image.
2. Volume: one call writes ``--volume-mb`` MB (4 files) into a mounted volume and times
   ``vol.commit()``; then it deletes the local copies and times ``vol.reload()``. The peer:
   the same bytes put to and got from an S3-compatible server on loopback (moto's server,
   when ``moto`` and ``boto3`` are installed), as 4 objects.

The docker rows run when the Docker daemon answers and ``apothic-base:bookworm`` exists
(``bash scripts/docker-setup.sh``); otherwise they are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import apothic
from apothic.runtime import LocalRuntime
from benchmarks._common import source_state

BASE_IMAGE = "apothic-base:bookworm"


@dataclass(frozen=True)
class Row:
    """One figure: its median and spread in milliseconds, or a note when it was skipped."""

    name: str
    median_ms: float | None
    min_ms: float | None = None
    max_ms: float | None = None
    note: str = ""


def _row(name: str, samples: list[float], note: str = "") -> Row:
    return Row(name, statistics.median(samples), min(samples), max(samples), note)


def _docker_ready() -> str:
    """ "" when docker runs and the base image exists; else why not."""
    try:
        out = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"docker is not available ({exc})"
    if out.returncode != 0:
        return f"{BASE_IMAGE} is missing (bash scripts/docker-setup.sh)"
    return ""


def _docker_tags() -> set[str]:
    out = subprocess.run(
        ["docker", "images", "apothic-img", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    )
    return set(out.stdout.split())


def _probe() -> str:
    return "ok"


def cold_starts(runtime: LocalRuntime, executor: str, count: int) -> list[Row]:
    """Cold starts on ``runtime`` (whose workers use ``executor``)."""
    rows: list[Row] = []
    cached = apothic.Image.debian_slim().env({"BENCH": "cached"})
    variants: list[tuple[str, Any]] = []
    if executor == "process":
        variants.append(("no image (zygote)", None))
    variants.append(("cached image", cached))
    variants.append(("fresh image (build + start)", "fresh"))
    for label, image in variants:
        samples = []
        for i in range(count + 1):
            img = apothic.Image.debian_slim().env({"NONCE": uuid.uuid4().hex}) if image == "fresh" else image
            app = apothic.App(f"bench-cold-{executor}", client=runtime.config)
            app.function(name="probe", image=img, serialized=True)(_probe)
            started = time.perf_counter()
            app.deploy()
            if image != "fresh":
                started = time.perf_counter()  # the deploy of a cached image is not the cold start
            assert app.functions["probe"].remote() == "ok"
            elapsed = (time.perf_counter() - started) * 1000
            app.stop()
            if i > 0 or image == "fresh":  # the first round of a cached variant warms its build
                samples.append(elapsed)
        rows.append(_row(f"cold start, {executor}: {label}", samples[:count]))
    return rows


def floors(count: int, docker: bool) -> list[Row]:
    """What a container must at least pay: a fresh interpreter importing the runtime, and
    a bare ``docker run``."""
    rows = []
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import apothic._container.__main__"], check=True)
        samples.append((time.perf_counter() - started) * 1000)
    rows.append(_row("floor: python -c 'import apothic._container.__main__'", samples))
    if docker:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            subprocess.run(["docker", "run", "--rm", "--network", "host", BASE_IMAGE, "true"], check=True)
            samples.append((time.perf_counter() - started) * 1000)
        rows.append(_row(f"floor: docker run --rm {BASE_IMAGE} true", samples))
    return rows


def volume_round_trip(runtime: LocalRuntime, megabytes: int) -> list[Row]:
    """``commit()`` and ``reload()`` of ``megabytes`` MB from inside a function."""
    name = f"bench-vol-{uuid.uuid4().hex[:8]}"
    vol = apothic.Volume.from_name(name, client=runtime.config)
    mount = f"/tmp/apothic-bench-{uuid.uuid4().hex[:8]}"
    app = apothic.App("bench-volume", client=runtime.config)
    per_file = megabytes * 1024 * 1024 // 4

    def round_trip() -> tuple[float, float]:
        import shutil
        import time as t

        for i in range(4):
            with open(f"{mount}/blob{i}.bin", "wb") as fh:
                fh.write(os.urandom(per_file))
        started = t.perf_counter()
        vol.commit()
        commit_ms = (t.perf_counter() - started) * 1000
        for i in range(4):
            os.unlink(f"{mount}/blob{i}.bin")
        started = t.perf_counter()
        vol.reload()
        reload_ms = (t.perf_counter() - started) * 1000
        assert sum(os.path.getsize(f"{mount}/blob{i}.bin") for i in range(4)) == 4 * per_file
        shutil.rmtree(mount, ignore_errors=True)
        return commit_ms, reload_ms

    app.function(name="round_trip", volumes={mount: vol}, serialized=True, timeout_s=600)(round_trip)
    app.deploy()
    try:
        commit_ms, reload_ms = app.functions["round_trip"].remote()
    finally:
        app.stop()
        apothic.Volume.delete(name, client=runtime.config)
    return [
        Row(f"volume commit, {megabytes} MB (4 files)", commit_ms),
        Row(f"volume reload, {megabytes} MB (4 files)", reload_ms),
    ]


def s3_peer(megabytes: int) -> list[Row]:
    """The same bytes through an S3-compatible server on loopback (moto), as 4 objects."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        note = "skipped: pip install 'moto[server]' boto3"
        return [Row("peer: S3 put (moto)", None, note=note), Row("peer: S3 get (moto)", None, note=note)]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="bench")
        blobs = [os.urandom(megabytes * 1024 * 1024 // 4) for _ in range(4)]
        started = time.perf_counter()
        for i, blob in enumerate(blobs):
            s3.put_object(Bucket="bench", Key=f"blob{i}.bin", Body=blob)
        put_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for i in range(4):
            assert len(s3.get_object(Bucket="bench", Key=f"blob{i}.bin")["Body"].read()) == len(blobs[i])
        get_ms = (time.perf_counter() - started) * 1000
    finally:
        server.stop()
    return [Row(f"peer: S3 put, {megabytes} MB (moto)", put_ms), Row(f"peer: S3 get, {megabytes} MB (moto)", get_ms)]


@contextlib.contextmanager
def _runtime(executor: str) -> Iterator[LocalRuntime]:
    with tempfile.TemporaryDirectory(prefix="apothic-bench-") as tmp:
        runtime = LocalRuntime(state_dir=tmp, executor=executor).start()
        try:
            yield runtime
        finally:
            runtime.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cold", type=int, default=5, help="cold starts per variant")
    parser.add_argument("--volume-mb", type=int, default=100, help="megabytes committed and reloaded")
    parser.add_argument("--json", action="store_true", help="print JSON")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    docker_note = _docker_ready()
    rows: list[Row] = []
    with _runtime("process") as runtime:
        rows += cold_starts(runtime, "process", opts.cold)
        rows += volume_round_trip(runtime, opts.volume_mb)
    rows += s3_peer(opts.volume_mb)
    if docker_note:
        rows.append(Row("cold start, docker", None, note=f"skipped: {docker_note}"))
    else:
        before = _docker_tags()
        try:
            with _runtime("docker") as runtime:
                rows += cold_starts(runtime, "docker", opts.cold)
        finally:
            # The fresh-image rounds made one image each: leave no litter behind.
            made = sorted(_docker_tags() - before)
            if made:
                subprocess.run(["docker", "rmi", "-f", *made], capture_output=True, check=False)
    rows += floors(opts.cold, not docker_note)
    header = (
        f"issue 5 environments, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; source {source_state()}; took {time.monotonic() - started:.0f} s"
    )
    if opts.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header)
    for col in ("figure", "median ms", "min ms", "max ms", "note"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    for r in rows:

        def fmt(v: float | None) -> str:
            return f"{v:,.1f}" if v is not None else "-"

        table.add_row(r.name, fmt(r.median_ms), fmt(r.min_ms), fmt(r.max_ms), r.note)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
