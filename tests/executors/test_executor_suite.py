"""One suite, every executor: calls, environment, errors, volumes and limits behave the same
on the process and docker executors (``executor_runtime`` is parametrized over both)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import apothic
from apothic.exceptions import FunctionTimeoutError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name, wait_for


class Boom(Exception):
    """Raised in a container; importable on both ends (this module ships with the app)."""


@contextmanager
def _deployed(app: apothic.App) -> Iterator[apothic.App]:
    app.deploy()
    try:
        yield app
    finally:
        app.stop()


def _executor(runtime: LocalRuntime) -> str:
    return runtime.executor


def test_plain_call(executor_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("plain"), client=executor_runtime.config)

    @app.function(timeout_s=60)
    def square(x: int) -> tuple[int, str]:
        return x * x, os.environ.get("APOTHIC_DOCKER_PYTHON", "")

    with _deployed(app):
        value, docker_python = square.remote(7)
        assert value == 49
        # The docker executor runs the image's own python3 with the worker's packages mounted.
        assert docker_python == ("image" if _executor(executor_runtime) == "docker" else "")
        assert [square.remote(i)[0] for i in range(3)] == [0, 1, 4]  # a warm container is reused


def test_env_and_secrets_are_in_the_environment(executor_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("envsec"), client=executor_runtime.config)
    secret = apothic.Secret.from_dict({"API_TOKEN": "t0k3n", "SHARED": "from-secret"})

    @app.function(timeout_s=60, env={"MODE": "suite", "SHARED": "from-env"}, secrets=[secret])
    def read_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("MODE", "API_TOKEN", "SHARED")}

    with _deployed(app):
        assert read_env.remote() == {"MODE": "suite", "API_TOKEN": "t0k3n", "SHARED": "from-secret"}


def test_an_exception_comes_back_as_its_type(executor_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("raises"), client=executor_runtime.config)

    @app.function(timeout_s=60)
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.function(timeout_s=60)
    def fail_custom() -> None:
        raise Boom("custom")

    with _deployed(app):
        with pytest.raises(ValueError, match="bad input"):
            fail.remote("bad input")
        with pytest.raises(Boom, match="custom"):
            fail_custom.remote()


def test_a_mounted_volume_is_written_and_read_back(executor_runtime: LocalRuntime, tmp_path: Path) -> None:
    config = executor_runtime.config
    vol = apothic.Volume.from_name(unique_name("vol"), client=config)
    vol.put_file(b"seeded by the caller", "seed.txt")
    mount = str(tmp_path / "mnt")
    app = apothic.App(unique_name("volume"), client=config)

    @app.function(timeout_s=60, volumes={mount: vol})
    def write(text: str) -> str:
        seed = (Path(mount) / "seed.txt").read_text()
        (Path(mount) / "out.txt").write_text(text)
        vol.commit()
        return seed

    @app.function(timeout_s=60, volumes={mount: vol})
    def read() -> str:
        vol.reload()
        return (Path(mount) / "out.txt").read_text()

    try:
        with _deployed(app):
            assert write.remote("written in a container") == "seeded by the caller"
            assert vol.read_file("out.txt") == b"written in a container"
            assert read.remote() == "written in a container"
    finally:
        apothic.Volume.delete(vol.name, client=config)


def _cgroup_limits() -> dict[str, int]:
    """The memory limit (bytes) and CPU quota (micro-cores per core: quota/period * 1e6) of
    the calling process's cgroup, v2 or v1 (-1: none)."""
    out = {"memory": -1, "cpu": -1}
    if Path("/sys/fs/cgroup/memory.max").exists():  # v2
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        out["memory"] = -1 if raw == "max" else int(raw)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        out["cpu"] = -1 if quota == "max" else int(int(quota) * 1_000_000 / int(period))
    else:  # v1
        raw_mem = int(Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").read_text())
        out["memory"] = -1 if raw_mem >= 1 << 60 else raw_mem
        cpu = Path("/sys/fs/cgroup/cpu")
        quota_us = int((cpu / "cpu.cfs_quota_us").read_text())
        period_us = int((cpu / "cpu.cfs_period_us").read_text())
        out["cpu"] = -1 if quota_us < 0 else int(quota_us * 1_000_000 / period_us)
    return out


def test_a_vast_local_volume_keeps_its_files_on_the_host(executor_runtime: LocalRuntime) -> None:
    config = executor_runtime.config
    name = unique_name("vl")
    apothic.Volume.create(name, backend="vast_local", client=config)
    vol = apothic.Volume.from_name(name, client=config)
    mount = f"/tmp/apothic-suite-{name}"
    app = apothic.App(unique_name("vlsuite"), client=config)

    @app.function(timeout_s=60, volumes={mount: vol})
    def append(line: str) -> str:
        with open(f"{mount}/log.txt", "a") as fh:
            fh.write(line + "\n")
        return open(f"{mount}/log.txt").read()

    with _deployed(app):
        assert append.remote("one") == "one\n"
    with _deployed(app):  # a new deployment, a new container: the files are still there
        assert append.remote("two") == "one\ntwo\n"
    host_dirs = list((executor_runtime.state_dir / "hosts").glob(f"*/vast_local/*/{name}"))
    assert len(host_dirs) == 1 and (host_dirs[0] / "log.txt").read_text() == "one\ntwo\n"


def test_cpu_and_memory_limits(executor_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("limits"), client=executor_runtime.config)
    limits = _cgroup_limits  # shipped by value with the function

    @app.function(timeout_s=60, cpu=0.5, memory_mb=256)
    def limited() -> dict[str, int]:
        return limits()

    with _deployed(app):
        seen = limited.remote()
    if _executor(executor_runtime) == "docker":
        assert seen == {"memory": 256 * 1024 * 1024, "cpu": 500_000}
    else:
        assert set(seen) == {"memory", "cpu"}  # the process executor runs it, unconfined


def test_a_timed_out_call_stops_its_container(executor_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("timeout"), client=executor_runtime.config)

    @app.function(timeout_s=1)
    def sleepy(seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds

    with _deployed(app):
        with pytest.raises(FunctionTimeoutError, match="timeout"):
            sleepy.remote(30)
        assert sleepy.remote(0) == 0  # a fresh container serves the next call


def test_containers_are_removed_after_they_exit(executor_runtime: LocalRuntime) -> None:
    worker = executor_runtime.workers[0]
    app = apothic.App(unique_name("cleanup"), client=executor_runtime.config)

    @app.function(timeout_s=60)
    def hostname() -> str:
        return socket.gethostname()

    def labelled() -> list[str]:
        if executor_runtime.executor != "docker":
            return []
        label = f"label=apothic.worker={worker.launcher.worker_id}"  # type: ignore[attr-defined]
        out = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, timeout=30)
        return out.stdout.split()

    with _deployed(app):
        assert hostname.remote() == socket.gethostname()  # docker: the host's network namespace
        assert worker.containers.containers
        if executor_runtime.executor == "docker":
            assert labelled(), "a running container carries the worker's label"
    # A docker start takes ~0.5 s, so a pre-warmed container is often still starting when the
    # stop arrives: it must be killed as soon as it has started, not left running.
    wait_for(lambda: not worker.containers.containers, timeout=15, what="the stopped app's containers to exit")
    wait_for(lambda: not labelled(), timeout=30, what="the exited containers to be removed")
