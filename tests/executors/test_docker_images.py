"""The docker executor's images, built with :class:`DockerBuilder` on the real daemon: each
step's effect inside the image, build failures naming their step, the three kinds of base,
and the container runtime (image python3 with the worker's packages mounted, or the
worker's own CPython) started by :class:`DockerLauncher`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import apothic
from apothic.exceptions import ImageBuildError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name
from apothic.worker.docker_build import BASE_IMAGE, DockerBuilder, image_tag
from apothic.worker.docker_launch import DockerLauncher
from apothic.worker.process import LaunchOptions
from apothic.worker.recipe import (
    BASE_STEP,
    AptInstall,
    BuildFailed,
    BuiltImage,
    Env,
    LocalFiles,
    PipInstall,
    Recipe,
    RunCommands,
    Workdir,
)
from tests.executors.conftest import require_docker

RUN = uuid.uuid4().hex[:8]

#: Runs in a container started by DockerLauncher: imports the container runtime, then reports
#: what it sees over the worker's socket.
PROBE = """
import json, os, socket, sys
sys.path[0:0] = [p for p in os.environ.get("APOTHIC_PYTHON_PATH", "").split(os.pathsep) if p]  # as the container does
import cloudpickle, google.protobuf, grpc
import apothic._container.runner
import tzdata, tinypkg
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["APOTHIC_CONTAINER_SOCKET"])
sock.sendall(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "tinypkg": tinypkg.WHERE,
    "tzdata_from_image": hasattr(tzdata, "IMAGE_PIN"),
    "grpc": grpc.__file__,
    "cwd": os.getcwd(),
    "greeting": os.environ.get("GREETING"),
    "home": os.environ.get("HOME"),
}).encode())
sock.close()
"""


def _wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: apothic-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in contents.items():
            data = text.encode()
            zf.writestr(zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0)), data)  # same bytes every run
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return path


def _tar(files: dict[str, str]) -> tuple[str, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def _docker_run(image: str, command: str) -> str:
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


class Logs:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, step: int, line: str) -> None:
        self.lines.append((step, line))

    def of(self, step: int) -> str:
        return "\n".join(line for s, line in self.lines if s == step)


@pytest.fixture(scope="module")
def images() -> list[str]:
    """Tags built by this module. They are kept (stable names, overwritten by the next run)
    so that the daemon's layer cache makes the next run's builds fast."""
    require_docker()
    return []


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links directory: ``tinypkg`` and a ``tzdata`` that shadows the worker's."""
    directory = tmp_path_factory.mktemp("wheels")
    _wheel(directory, "tinypkg", "0.1", {"tinypkg/__init__.py": "WHERE = 'installed from a local wheel'\n"})
    _wheel(directory, "tzdata", "9999.0", {"tzdata/__init__.py": "IMAGE_PIN = True\n"})
    return directory


@pytest.fixture
def builder(tmp_path: Path) -> DockerBuilder:
    return DockerBuilder(tmp_path / "state")


def _id(name: str, images: list[str]) -> str:
    image_id = f"im-test-{name}"
    images.append(image_tag(image_id))
    return image_id


async def _probe(state_dir: Path, image: BuiltImage) -> dict[str, Any]:
    """Starts the probe in ``image`` through DockerLauncher and returns its report."""
    launcher = DockerLauncher(env={"PATH": "/host/only", "HOME": "/host/home"}, state_dir=state_dir, worker_id=RUN)
    try:
        env = {"PATH": "/host/only", "HOME": "/host/home", "APOTHIC_CONTAINER_ID": f"probe-{RUN}"}
        # What the container manager adds for an image (see ProcessContainer.start).
        env["APOTHIC_PYTHON_PATH"] = os.pathsep.join(image.python_path)
        launched = await launcher.launch({**env, **dict(image.env)}, module="probe", options=LaunchOptions(image=image))
        loop = asyncio.get_running_loop()
        data = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(launched.channel, 65536), 60):
            data += chunk
        launched.channel.close()
        code = await asyncio.wait_for(launched.process.wait(), 60)
        assert code == 0, (await launched.process.stderr_tail()).decode()
        assert launched.process.returncode == 0
        return json.loads(data) if data else {"stderr": (await launched.process.stderr_tail()).decode()}
    finally:
        await launcher.close()


async def test_steps_build_an_image_and_the_runtime_runs_in_it(
    builder: DockerBuilder, images: list[str], wheels: Path, tmp_path: Path
) -> None:
    sha, archive = _tar({"probe.py": PROBE, "lib/helper.py": "X = 1\n"})
    recipe = Recipe(
        image_id=_id("steps", images),
        steps=(
            PipInstall(("tinypkg", "tzdata"), find_links=(str(wheels),), no_index=True),
            AptInstall(("jq",)),
            Env((("GREETING", "hello from the image"),)),
            Workdir("/app"),
            RunCommands(("echo built > marker.txt", "jq --version > jq.txt")),
            LocalFiles(sha, ".", python_path=True),
        ),
    )
    logs = Logs()
    built = await builder.build(recipe, {sha: archive}, logs)
    assert built.docker_image == image_tag(recipe.image_id) and built.executor == "docker"
    assert built.python == "python3" and ("APOTHIC_DOCKER_PYTHON", "image") in built.env
    assert ("GREETING", "hello from the image") in built.env
    assert built.workdir == "/app" and built.python_path == ("/app",)
    # Each step's log has its own instructions (their output too, unless the layer was cached).
    assert "uv pip install" in logs.of(0) and "apt-get install" in logs.of(1) and "marker.txt" in logs.of(4)
    assert "built" in logs.of(BASE_STEP)
    assert builder.cached(recipe) == built
    assert DockerBuilder(builder.state_dir).cached(recipe) == built  # from the record on disk

    out = _docker_run(built.docker_image, "pwd; cat marker.txt jq.txt; echo $GREETING; ls lib")
    assert out.splitlines()[0:3] == ["/app", "built", out.splitlines()[2]] and out.splitlines()[2].startswith("jq-")
    assert "hello from the image" in out and "helper.py" in out

    report = await _probe(tmp_path / "worker", built)
    assert report.get("version") == "3.11" and report["executable"] == "/usr/bin/python3", report
    assert report["tinypkg"] == "installed from a local wheel"
    assert report["tzdata_from_image"] is True  # the image's packages win over the worker's
    assert report["grpc"].startswith(sys.prefix)  # the runtime comes from the worker, mounted
    assert report["cwd"] == "/app" and report["greeting"] == "hello from the image"
    assert report["home"] != "/host/home"  # the worker's own variables stay on the worker


async def test_a_failing_command_names_its_step(builder: DockerBuilder, images: list[str]) -> None:
    recipe = Recipe(
        image_id=_id("fails", images),
        steps=(Env((("A", "1"),)), RunCommands(("echo about to fail", "exit 7")), RunCommands(("echo never",))),
    )
    with pytest.raises(BuildFailed) as failed:
        await builder.build(recipe, {}, Logs())
    assert failed.value.step == 1
    assert "run_commands('echo about to fail' and 1 more)" in str(failed.value)
    assert "`exit 7` exited with code 7" in str(failed.value)
    assert "about to fail" in failed.value.log_tail and "never" not in failed.value.log_tail
    assert builder.cached(recipe) is None


async def test_a_missing_registry_image_fails_clearly(builder: DockerBuilder, images: list[str]) -> None:
    recipe = Recipe(image_id=_id("missing", images), registry_tag=f"apothic-absent:{RUN}")
    with pytest.raises(BuildFailed) as failed:
        await builder.build(recipe, {}, Logs())
    assert failed.value.step == BASE_STEP
    assert (
        f"image apothic-absent:{RUN} is not present on this worker and no registry is reachable: "
        "docker pull/load it first"
    ) in str(failed.value)


async def test_debian_slim_on_another_python_fails_clearly(builder: DockerBuilder, images: list[str]) -> None:
    recipe = Recipe(image_id=_id("py39", images), python_version="3.9")
    with pytest.raises(BuildFailed, match="Python 3.9 is not available on this worker") as failed:
        await builder.build(recipe, {}, Logs())
    assert failed.value.step == BASE_STEP and "debian_slim(python_version='3.9')" in str(failed.value)


async def test_a_present_registry_image_is_used(builder: DockerBuilder, images: list[str]) -> None:
    recipe = Recipe(image_id=_id("registry", images), registry_tag=BASE_IMAGE, steps=(Env((("FROM_TAG", "yes"),)),))
    built = await builder.build(recipe, {}, Logs())
    assert _docker_run(built.docker_image, "echo $FROM_TAG").strip() == "yes"


async def test_from_dockerfile_with_a_context(builder: DockerBuilder, images: list[str]) -> None:
    sha, archive = _tar({"hello.txt": "from the context\n"})
    dockerfile = f"FROM {BASE_IMAGE}\nCOPY hello.txt /opt/hello.txt\nRUN test -s /opt/hello.txt\n"
    recipe = Recipe(
        image_id=_id("dockerfile", images),
        dockerfile=dockerfile,
        dockerfile_context=sha,
        steps=(RunCommands(("cp /opt/hello.txt /opt/copied.txt",)),),
    )
    logs = Logs()
    built = await builder.build(recipe, {sha: archive}, logs)
    assert "COPY hello.txt /opt/hello.txt" in logs.of(BASE_STEP)
    assert _docker_run(built.docker_image, "cat /opt/copied.txt") == "from the context\n"

    broken = Recipe(image_id=_id("dockerfile-broken", images), dockerfile=f"FROM {BASE_IMAGE}\nRUN exit 4\n")
    with pytest.raises(BuildFailed) as failed:
        await builder.build(broken, {}, Logs())
    assert failed.value.step == BASE_STEP and "from_dockerfile" in str(failed.value)
    assert "`exit 4` exited with code 4" in str(failed.value)


async def test_an_image_without_the_workers_python_runs_the_workers_cpython(
    builder: DockerBuilder, images: list[str], wheels: Path, tmp_path: Path
) -> None:
    sha, archive = _tar({"probe.py": PROBE})
    recipe = Recipe(
        image_id=_id("managed", images),
        dockerfile=f"FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/python3 /usr/bin/python3.11\n",
        steps=(
            PipInstall(("tinypkg", "tzdata"), find_links=(str(wheels),), no_index=True),
            Workdir("/srv"),
            LocalFiles(sha, "."),
        ),
    )
    built = await builder.build(recipe, {sha: archive}, Logs())
    assert ("APOTHIC_DOCKER_PYTHON", "managed") in built.env
    assert Path(built.python).resolve().is_relative_to(Path(sys.base_prefix).resolve())
    report = await _probe(tmp_path / "worker", built)
    assert report.get("executable") == built.python, report
    assert report["tinypkg"] == "installed from a local wheel" and report["tzdata_from_image"] is True
    assert report["cwd"] == "/srv"


@pytest.fixture(autouse=True)
def _no_leftover_containers() -> Iterator[None]:
    yield
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=apothic.worker={RUN}"], capture_output=True, text=True
    ).stdout.split()
    assert not left, f"containers left behind: {left}"


async def test_a_container_that_exits_before_connecting_reports_its_stderr(tmp_path: Path, images: list[str]) -> None:
    # /bin/sh as the "interpreter": it cannot run the bootstrap and exits at once.
    image = BuiltImage(image_id="im-default", executor="docker", python="/bin/sh", docker_image=BASE_IMAGE)
    launcher = DockerLauncher(env={}, state_dir=tmp_path / "worker", worker_id=RUN)
    try:
        launched = await launcher.launch({"APOTHIC_CONTAINER_ID": f"early-{RUN}"}, options=LaunchOptions(image=image))
        assert await asyncio.get_running_loop().sock_recv(launched.channel, 10) == b""  # closed: nothing to read
        assert await asyncio.wait_for(launched.process.wait(), 60) == 2
        assert b"import" in await launched.process.stderr_tail()  # sh's complaint about the Python code
    finally:
        await launcher.close()


def test_an_sdk_image_deploys_on_a_docker_worker(docker_runtime: LocalRuntime, tmp_path: Path) -> None:
    """The whole path: apothic.Image at deploy, the build's output streamed back, the
    function running in the built image; and a failing step failing the deploy."""
    note = tmp_path / "note.txt"
    note.write_text("copied in")
    image = (
        apothic.Image.debian_slim()
        .apt_install("jq")
        .env({"STAGE": "docker"})
        .workdir("/work")
        .add_local_file(note, "note.txt")
        .run_commands("echo built > built.txt")
    )
    app = apothic.App(unique_name("sdkimg"), client=docker_runtime.config)

    @app.function(image=image, timeout_s=60)
    def inspect_image() -> dict[str, str]:
        import os
        import shutil

        return {
            "jq": shutil.which("jq") or "",
            "stage": os.environ["STAGE"],
            "cwd": os.getcwd(),
            "note": open("note.txt").read(),
            "built": open("built.txt").read().strip(),
        }

    seen: list[object] = []
    app.deploy(progress=seen.append)
    try:
        out = inspect_image.remote()
    finally:
        app.stop()
    assert out == {"jq": "/usr/bin/jq", "stage": "docker", "cwd": "/work", "note": "copied in", "built": "built"}
    results = [e for e in seen if isinstance(e, apothic.ImageBuildResult)]
    assert [(r.executor, r.ok) for r in results] == [("docker", True)]

    bad = apothic.App(unique_name("sdkbad"), client=docker_runtime.config)

    @bad.function(image=apothic.Image.debian_slim().run_commands("echo about-to-fail", "exit 5"))
    def never() -> int:
        return 1

    with pytest.raises(ImageBuildError) as info:
        bad.deploy()
    assert info.value.executor == "docker" and info.value.step == 0
    assert "exited with code 5" in str(info.value) and "about-to-fail" in info.value.log_tail
