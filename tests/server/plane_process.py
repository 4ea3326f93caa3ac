"""A control plane (and workers) in subprocesses, for tests that kill it: ``apothic server``
on one ``surrealkv://`` state directory, restarted on the same port so clients reconnect."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from apothic.config import ClientConfig
from apothic.testing import wait_for


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PlaneProcess:
    """``apothic server`` as a subprocess; its output goes to ``log_path``.

    Args:
        state_dir: the state directory (the database and the API key file live there).
        port: the gRPC port, the same across restarts.
        log_path: where the server's output is appended.
        env: variables added to the server's environment.
    """

    def __init__(self, state_dir: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = env or {}
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key = ""
        self.starts = 0
        self._log_start = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> ClientConfig:
        return ClientConfig(base_url=self.address, api_key=self.api_key)

    def start(self) -> None:
        """Starts the server and waits until it serves."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "apothic.cli.main", "server"]
                + ["--state-dir", str(self.state_dir), "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        self.starts += 1
        wait_for(self._serving, timeout=60, interval=0.05, what="the control plane to serve")
        self.api_key = (self.state_dir / "api-key").read_text().strip()

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the control plane exited with {self.proc.returncode}:\n{self.output()}")
        # The server prints its address once it serves and its API key file is written.
        return "control plane at" in self.output(since_start=True)

    def output(self, *, since_start: bool = False) -> str:
        """What the server printed (since its last start)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start if since_start else 0)
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: the graceful shutdown (health NOT_SERVING, writes flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_worker(plane: PlaneProcess, state_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``apothic worker`` dialing ``plane`` (it reconnects by itself after a restart)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "apothic.cli.main", "worker", "--base-url", plane.address]
            + ["--api-key", plane.api_key, "--state-dir", str(state_dir), "--worker-id", "workers:resume"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def client_rows(paths: list[Path]) -> list[list[str]]:
    """The lines client processes have written to ``paths`` so far, each split on whitespace
    (a file not written yet counts as empty, blank lines are skipped)."""
    rows = []
    for path in paths:
        if path.exists():
            rows += [line.split() for line in path.read_text().splitlines() if line.strip()]
    return rows


def start_client(plane: PlaneProcess, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python ARGS...`` as a client of ``plane`` (its address and API key in the
    environment); its output goes to ``log_path``."""
    env = {**os.environ, "APOTHIC_BASE_URL": plane.address, "APOTHIC_API_KEY": plane.api_key}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def end(proc: subprocess.Popen[bytes]) -> None:
    """Stops a child process (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
