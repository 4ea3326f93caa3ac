"""Images on the real runtime with the process executor: built at deploy with uv, cached by
content, their files, environment and workdir seen by the function, and a failing step
failing the deploy with its name and output."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import apothic
from apothic._proto.v1 import image_service_pb2 as i_pb
from apothic._proto.v1 import image_service_pb2_grpc as i_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.exceptions import ImageBuildError, InvalidConfigError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

PKG = "apothic_demo_pkg"


def make_wheel(folder: Path, name: str = PKG, version: str = "1.0") -> Path:
    """A tiny pure-Python wheel, so installs need no index (``find_links`` + ``no_index``)."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


@contextlib.contextmanager
def deployed(app: apothic.App, **kwargs: object) -> Iterator[apothic.App]:
    app.deploy(**kwargs)  # type: ignore[arg-type]
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder)
    return folder


@pytest.fixture
def helper_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"imghelper_{unique_name('m').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("GREETING = 'hello from a local module'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_image_steps_reach_the_function_and_builds_are_reused(
    apothic_runtime: LocalRuntime, wheels: Path, tmp_path: Path, helper_module: str
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("payload 42")
    image = (
        apothic.Image.debian_slim()
        .pip_install(f"{PKG}==1.0", find_links=wheels, no_index=True)
        .env({"IMAGE_MODE": "test"})
        .workdir("/app")
        .add_local_file(data, "data.txt")
        .add_local_python_source(helper_module)
        .run_commands("echo built-by-run > marker.txt")
    )
    app = apothic.App(unique_name("img"), client=apothic_runtime.config)

    @app.function(image=image, env={"FROM_FUNCTION": "yes"})
    def probe() -> dict[str, str]:
        import importlib
        import os

        import apothic_demo_pkg

        helper = importlib.import_module(helper_module)
        return {
            "version": apothic_demo_pkg.VERSION,
            "mode": os.environ["IMAGE_MODE"],
            "function_env": os.environ["FROM_FUNCTION"],
            "cwd": os.getcwd(),
            "data": open("data.txt").read(),
            "marker": open("marker.txt").read().strip(),
            "helper": helper.GREETING,
        }

    seen: list[object] = []
    with deployed(app, progress=seen.append):
        out = probe.remote()
    assert out["version"] == "1.0"
    assert out["mode"] == "test" and out["function_env"] == "yes"
    assert out["cwd"].endswith("/app")
    assert out["data"] == "payload 42"
    assert out["marker"] == "built-by-run"
    assert out["helper"] == "hello from a local module"
    lines = [e for e in seen if isinstance(e, apothic.ImageBuildLine)]
    results = [e for e in seen if isinstance(e, apothic.ImageBuildResult)]
    assert any("apothic-demo-pkg==1.0" in line.line for line in lines), lines[-5:]
    assert [(r.executor, r.ok, r.cached) for r in results] == [("process", True, False)]

    # The same content again: answered from the record, nothing runs.
    seen.clear()
    with deployed(app, progress=seen.append):
        assert probe.remote()["version"] == "1.0"
    results = [e for e in seen if isinstance(e, apothic.ImageBuildResult)]
    assert [(r.ok, r.cached) for r in results] == [(True, True)]
    assert not [e for e in seen if isinstance(e, apothic.ImageBuildLine)]

    # Changed local bytes make a new image.
    data.write_text("payload 43")
    seen.clear()
    with deployed(app, progress=seen.append):
        assert probe.remote()["data"] == "payload 43"
    results = [e for e in seen if isinstance(e, apothic.ImageBuildResult)]
    assert [(r.ok, r.cached) for r in results] == [(True, False)]


def _failing_deploy(runtime: LocalRuntime, image: apothic.Image) -> ImageBuildError:
    app = apothic.App(unique_name("imgbad"), client=runtime.config)

    @app.function(image=image)
    def f() -> int:
        return 1

    with pytest.raises(ImageBuildError) as info:
        app.deploy()
    assert app.deployment_id is None
    return info.value


def test_a_package_that_does_not_exist_fails_the_deploy(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    image = apothic.Image.debian_slim().pip_install("no-such-package-xyz==9.9", find_links=tmp_path, no_index=True)
    err = _failing_deploy(apothic_runtime, image)
    assert err.step == 0 and err.executor == "process"
    assert "step 0" in str(err) and "pip_install('no-such-package-xyz==9.9')" in str(err)
    assert "no-such-package-xyz" in err.log_tail


def test_a_failing_command_names_its_step_and_output(apothic_runtime: LocalRuntime) -> None:
    image = apothic.Image.debian_slim().env({"A": "1"}).run_commands("echo about-to-fail", "exit 3")
    err = _failing_deploy(apothic_runtime, image)
    assert err.step == 1
    assert "`exit 3` exited with code 3" in str(err)
    assert "about-to-fail" in err.log_tail


def test_steps_the_process_executor_cannot_honour_say_so(apothic_runtime: LocalRuntime, tmp_path: Path) -> None:
    err = _failing_deploy(apothic_runtime, apothic.Image.from_registry("python:3.11-slim"))
    assert err.step == -1 and "docker executor" in str(err)
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    err = _failing_deploy(apothic_runtime, apothic.Image.from_dockerfile(dockerfile))
    assert "docker executor" in str(err)
    err = _failing_deploy(apothic_runtime, apothic.Image.debian_slim().apt_install("no-such-apt-package-xyz"))
    assert "no-such-apt-package-xyz is not installed on this worker" in str(err)
    assert "--executor docker" in str(err)


def test_apt_packages_already_on_the_worker_are_accepted(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("imgapt"), client=apothic_runtime.config)

    @app.function(image=apothic.Image.debian_slim().apt_install("coreutils"))
    def f() -> str:
        return "ok"

    with deployed(app):
        assert f.remote() == "ok"


def test_bad_images_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="absolute"):
        apothic.Image.debian_slim().workdir("relative")
    with pytest.raises(InvalidConfigError, match="at least one package"):
        apothic.Image.debian_slim().pip_install()
    with pytest.raises(InvalidConfigError, match="3.11"):
        apothic.Image.debian_slim(python_version="three")
    with pytest.raises(InvalidConfigError, match="not a file"):
        apothic.Image.debian_slim().add_local_file(tmp_path / "missing.txt", "/x")
    with pytest.raises(InvalidConfigError, match="no local module"):
        apothic.Image.debian_slim().add_local_python_source("no_such_module_xyz")
    with pytest.raises(InvalidConfigError, match="apothic.Image"):
        apothic.App("x").function(image="debian")(lambda: 1)


def test_the_build_rpc_validates_its_input(apothic_runtime: LocalRuntime) -> None:
    channel = grpc.insecure_channel(apothic_runtime.address)
    stub = i_grpc.ImageServiceStub(channel)
    metadata = (("authorization", f"Bearer {apothic_runtime.api_key}"),)

    def build(spec: pb.ImageSpec, contexts: list[pb.ImageContext] | None = None) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.BuildImage(i_pb.BuildImageRequest(image=spec, contexts=contexts or []), metadata=metadata))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return info.value

    step = pb.ImageStep(pip_install=pb.ImagePipInstall(packages=["--index-url=http://evil"]))
    assert "looks like an option" in build(pb.ImageSpec(steps=[step])).details()
    step = pb.ImageStep(workdir="relative/dir")
    assert "must be absolute" in build(pb.ImageSpec(steps=[step])).details()
    step = pb.ImageStep(local_files=pb.ImageLocalFiles(context_sha256="ab" * 32, remote_path="x"))
    assert "does not carry" in build(pb.ImageSpec(steps=[step])).details()
    bad = pb.ImageContext(sha256="cd" * 32, data=b"not matching")
    assert "do not match" in build(pb.ImageSpec(), [bad]).details()
    assert "unknown kind" in build(pb.ImageSpec(steps=[pb.ImageStep()])).details()
    channel.close()


def test_containers_on_an_image_fork_from_that_images_zygote(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("imgzyg"), client=apothic_runtime.config)

    @app.function(image=apothic.Image.debian_slim().env({"ZYGOTE_TEST": "1"}))
    def parent() -> tuple[str, str, str]:
        import os
        import sys

        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode()
        return cmdline, sys.executable, os.environ["ZYGOTE_TEST"]

    with deployed(app):
        cmdline, executable, value = parent.remote()
    assert "apothic.worker.zygote" in cmdline, cmdline
    assert "/images/im-" in executable and cmdline.startswith(executable.rsplit("/bin/", 1)[0])
    assert value == "1"


def test_a_worker_that_joins_later_builds_the_image_when_it_first_needs_it(tmp_path: Path) -> None:
    runtime = LocalRuntime(workers=0).start()
    try:
        runtime._call(runtime.add_worker("workers:early"))
        data = tmp_path / "note.txt"
        data.write_text("carried to the late worker")
        image = apothic.Image.debian_slim().workdir("/srv").add_local_file(data, "note.txt")
        app = apothic.App(unique_name("imglate"), client=runtime.config)

        @app.function(image=image, labels={"role": "late"})
        def read_note() -> tuple[str, str]:
            import os

            return open("note.txt").read() if os.path.exists("note.txt") else "", os.environ["APOTHIC_SOURCE_DIR"]

        seen: list[object] = []
        with deployed(app, progress=seen.append):
            # Built once, on the only worker there is; it cannot run the function.
            assert [r.ok for r in seen if isinstance(r, apothic.ImageBuildResult)] == [True]
            runtime._call(runtime.add_worker("workers:late", labels={"role": "late"}))
            note, source = read_note.remote()
        assert note == "carried to the late worker"
        assert "workers_late" in source
    finally:
        runtime.stop()
