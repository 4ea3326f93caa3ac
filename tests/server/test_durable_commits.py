"""Acknowledged means durable: the control plane flushes each commit to the disk (fsync)
before it answers the call that made it.

A killed control plane loses nothing either way (the kernel still holds its writes); the
flush is what lets an acknowledged write survive a machine crash, which a test cannot cause.
So this counts the flushes the control plane (``apothic server`` on ``surrealkv://``) makes
while a client waits for one acknowledged queue put after another, with ``strace``; and
checks that the count tells the two apart by running the same with the flushes turned off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import apothic
from apothic.testing import unique_name
from tests.server.plane_process import PlaneProcess, free_port

PUTS = 40

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"),
    reason="strace is not installed (scripts/docker-setup.sh installs it)",
)


def _flushes_during_puts(tmp_path: Path, env: dict[str, str]) -> int:
    """The fsync/fdatasync calls the control plane makes while ``PUTS`` sequential puts are
    acknowledged."""
    tmp_path.mkdir()
    plane = PlaneProcess(tmp_path / "state", free_port(), tmp_path / "server.log", env=env)
    plane.start()
    try:
        q = apothic.Queue.from_name(unique_name("durable"), client=plane.config)
        q.put("warm-up")  # the queue exists and the connection is open before counting
        assert plane.proc is not None
        out = tmp_path / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(plane.proc.pid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        attached = tracer.stderr.readline()  # "strace: Process N attached" once it traces
        assert "attached" in attached, f"strace did not attach: {attached!r}"
        for i in range(PUTS):
            q.put(i)
        tracer.send_signal(signal.SIGINT)  # detaches, writes the summary, ends by the signal
        tracer.wait(30)
        summary = out.read_text()  # empty when there was no such call
        calls = 0
        for line in summary.splitlines():
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync") and parts[0] != "total":
                calls += int(parts[3])
        return calls
    finally:
        plane.stop()


def test_each_acknowledged_write_is_flushed_before_its_answer(tmp_path: Path) -> None:
    assert _flushes_during_puts(tmp_path / "on", {}) >= PUTS


def test_flushes_are_counted_so_turning_them_off_shows(tmp_path: Path) -> None:
    # The engine's own default, which the control plane overrides: commits reach the
    # operating system but are not flushed one by one.
    assert _flushes_during_puts(tmp_path / "off", {"SURREAL_SYNC_DATA": "false"}) < PUTS // 2
