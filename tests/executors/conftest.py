"""The executor suite: the same tests against every executor kind.

``executor_runtime`` is a started :class:`~apothic.runtime.LocalRuntime` per executor
(``process``, ``docker``), each started once per session. The docker one needs a running
Docker daemon and the base image (``bash scripts/docker-setup.sh``): without them its tests
are skipped, unless ``CI`` is set, where a missing daemon is a failure.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator

import pytest

from apothic.runtime import LocalRuntime
from apothic.worker.docker_build import BASE_IMAGE

EXECUTORS = ["process", "docker"]


@functools.cache
def docker_problem() -> str:
    """Why the docker executor cannot run here ("" when it can)."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` could not run ({exc})"
    if info.returncode != 0:
        return f"`docker info` failed: {(info.stderr or info.stdout).strip()[-300:]}"
    image = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=30)
    if image.returncode != 0:
        return f"the base image {BASE_IMAGE} is missing"
    return ""


def require_docker() -> None:
    """Skips the test (fails it when ``CI`` is set) unless Docker is usable."""
    problem = docker_problem()
    if not problem:
        return
    message = (
        f"the docker executor needs a Docker daemon and {BASE_IMAGE}: {problem} (run `bash scripts/docker-setup.sh`)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


_runtimes: dict[str, LocalRuntime] = {}


@pytest.fixture(scope="session")
def _executor_runtimes() -> Iterator[dict[str, LocalRuntime]]:
    try:
        yield _runtimes
    finally:
        for runtime in _runtimes.values():
            runtime.stop()
        _runtimes.clear()


@pytest.fixture(scope="session", params=EXECUTORS)
def executor_runtime(request: pytest.FixtureRequest, _executor_runtimes: dict[str, LocalRuntime]) -> LocalRuntime:
    """A started runtime whose worker uses the executor named by the param."""
    executor: str = request.param
    if executor == "docker":
        require_docker()
    runtime = _executor_runtimes.get(executor)
    if runtime is None:
        runtime = _executor_runtimes[executor] = LocalRuntime(db_url="mem://", workers=1, executor=executor).start()
    return runtime


@pytest.fixture(scope="session")
def docker_runtime(_executor_runtimes: dict[str, LocalRuntime]) -> LocalRuntime:
    """The docker executor's runtime (shared with ``executor_runtime``)."""
    require_docker()
    runtime = _executor_runtimes.get("docker")
    if runtime is None:
        runtime = _executor_runtimes["docker"] = LocalRuntime(db_url="mem://", workers=1, executor="docker").start()
    return runtime
