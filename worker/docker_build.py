"""The docker executor's images: a real Docker image per recipe, built with aiodocker.

An image is tagged ``apothic-img:<image_id>`` and built in two parts:

* the base: ``debian_slim()`` is the locally built ``apothic-base:bookworm`` (Debian 12,
  Python 3.11; ``scripts/docker-setup.sh`` makes it) and its ``python_version`` must be the
  worker's own (the default); ``from_registry(tag)`` must already be
  on the worker (there is no registry to pull from); ``from_dockerfile`` builds the user's
  Dockerfile with its context as ``apothic-img:<image_id>-base``;
* the steps, one Dockerfile instruction group each, on top of the base: ``pip_install`` runs
  ``uv pip install --system`` (the worker's ``uv`` binary is copied in; ``find_links`` that
  are directories on the worker are copied in too), ``apt_install`` runs ``apt-get``,
  ``env``/``workdir`` become ``ENV``/``WORKDIR``, ``run_commands`` one ``RUN`` per command,
  local files a ``COPY``. Builds use the host network, so PyPI and Debian's mirror are
  reachable where the worker can reach them (``uv`` also gets the CA bundle the worker's
  ``SSL_CERT_FILE`` names, for a TLS-inspecting proxy). A failed instruction is traced back to its step
  through the builder's ``Step N/M`` lines.

The container runtime (``apothic``, grpcio, protobuf, cloudpickle) is never installed in the
image. When the image's ``python3`` has the worker's major.minor, the worker's site-packages
and apothic's source root are bind-mounted read-only and appended to ``sys.path`` after the
image's own packages (so the image's pins win). Otherwise the worker's own Python
installation is bind-mounted at the same path and runs the function ("managed CPython"); its
``pip_install`` steps are then installed by ``uv`` on the worker for that interpreter and
copied into the image. :attr:`BuiltImage.env` records which (``APOTHIC_DOCKER_PYTHON``).

A build that finished is recorded in ``<state_dir>/docker-images/<image_id>.json`` so
:meth:`DockerBuilder.cached` answers without asking the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import os
import re
import shlex
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from apothic.worker.recipe import (
    BASE_STEP,
    AptInstall,
    BuildFailed,
    BuildLog,
    BuiltImage,
    Env,
    LocalFiles,
    PipInstall,
    Recipe,
    RunCommands,
    Workdir,
)
from apothic.worker.venv_builder import uv_binary

#: The image ``debian_slim()`` starts from (made by ``scripts/docker-setup.sh``).
BASE_IMAGE = "apothic-base:bookworm"
#: Where built images are tagged: ``apothic-img:<image_id>``.
IMAGE_REPO = "apothic-img"
#: Image label naming the recipe an image was built from.
IMAGE_LABEL = "apothic.image"
#: Output lines kept for a failed step's error.
TAIL_LINES = 40
#: Where managed-CPython images keep their ``pip_install`` packages.
MANAGED_PACKAGES = "/opt/apothic/packages"
#: Where ``find_links`` directories copied from the worker land in the image.
LINKS_DIR = "/opt/apothic/find-links"
#: Where a build finds the CA bundle the worker trusts (``SSL_CERT_FILE``).
CA_FILE = "/opt/apothic/ca.pem"
#: ``image`` (the image's python3 runs with the worker's packages mounted) or ``managed``.
PYTHON_MODE_VAR = "APOTHIC_DOCKER_PYTHON"

#: The error when the daemon cannot be reached.
NO_DAEMON = (
    "could not reach the Docker daemon: start it (`bash scripts/docker-setup.sh` as root installs and starts it)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : ")
_PROBE = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2])"


def worker_python() -> str:
    """The worker's Python, ``major.minor``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def image_tag(image_id: str) -> str:
    """The tag an image is built under."""
    if not image_id or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_id):
        raise ValueError(f"bad image id {image_id!r}")
    return f"{IMAGE_REPO}:{image_id}"


def records_dir(state_dir: Path) -> Path:
    """Where finished builds are recorded."""
    return state_dir / "docker-images"


def forget(state_dir: Path, image_id: str) -> None:
    """Drops the record of a build (its image is gone from the daemon)."""
    with contextlib.suppress(OSError, ValueError):
        (records_dir(state_dir) / f"{image_id}.json").unlink()


async def stream_build(
    docker: aiodocker.Docker, context: bytes, *, tag: str, dockerfile: str, labels: Mapping[str, str]
) -> AsyncIterator[dict[str, Any]]:
    """Streams a classic ``docker build`` of ``context`` on the host network.

    aiodocker's ``images.build`` has no ``networkmode`` parameter, so this sends the same
    request itself (the Engine API's ``POST /build``) through the client's query helper.
    """
    params = {
        "t": tag,
        "dockerfile": dockerfile,
        "networkmode": "host",
        "rm": "1",
        "forcerm": "1",
        "labels": json.dumps(dict(labels)),
    }
    async with docker._query(  # noqa: SLF001 - see the docstring
        "build",
        "POST",
        params=params,
        data=context,
        headers={"content-type": "application/x-tar"},
        timeout=None,
    ) as response:
        async for raw in response.content:
            raw = raw.strip()
            if raw:
                with contextlib.suppress(ValueError):
                    yield json.loads(raw)


class _Context:
    """A build context: a tar archive built in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w")

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        self._tar.addfile(info, io.BytesIO(data))

    def add_path(self, name: str, path: Path) -> None:
        self._tar.add(str(path), arcname=name)

    def add_archive(self, prefix: str, data: bytes) -> int:
        """Copies the members of the tar archive ``data`` under ``prefix``; returns how many."""
        self.add_dir(prefix)
        count = 0
        with tarfile.open(fileobj=io.BytesIO(data)) as src:
            for member in src.getmembers():
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                    continue
                member.name = f"{prefix}/{name}"
                self._tar.addfile(member, src.extractfile(member) if member.isfile() else None)
                count += 1
        return count

    def add_dir(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        self._tar.addfile(info)

    def close(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


@dataclass
class _Plan:
    """A Dockerfile in the making: its lines and which recipe step owns each instruction."""

    lines: list[str]
    owners: list[int]

    def add(self, step: int, line: str) -> None:
        self.lines.append(line)
        self.owners.append(step)


def _run(command: str) -> str:
    """``RUN`` in exec form: the command reaches ``sh -c`` exactly as written."""
    return "RUN " + json.dumps(["/bin/sh", "-c", command])


class _Log:
    """A build's log: lines go to the caller and the tail is kept per step."""

    def __init__(self, recipe: Recipe, log: BuildLog) -> None:
        self.recipe = recipe
        self.log = log
        self.step = BASE_STEP
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def at(self, step: int) -> None:
        if step != self.step:
            self.step = step
            self.tail.clear()

    def say(self, line: str, step: int | None = None) -> None:
        if step is not None:
            self.at(step)
        self.tail.append(line)
        self.log(self.step, line)

    def fail(self, error: str, step: int | None = None) -> BuildFailed:
        index = self.step if step is None else step
        return BuildFailed(index, self.recipe.describe(index), error, "\n".join(self.tail))


class DockerBuilder:
    """Builds recipes into Docker images (see the module docstring).

    Args:
        state_dir: the worker's state directory (build records live under it).
        base_image: the image ``debian_slim()`` starts from.
    """

    executor = "docker"

    def __init__(self, state_dir: Path, *, base_image: str = BASE_IMAGE) -> None:
        self.state_dir = state_dir
        self.base_image = base_image
        self._records = records_dir(state_dir)
        self._built: dict[str, BuiltImage] = {}
        #: The python3 version of base images probed so far, by image id.
        self._pythons: dict[str, str] = {}

    # -- the cache -------------------------------------------------------------------

    def cached(self, recipe: Recipe) -> BuiltImage | None:
        """The image when this worker built it before (and has not seen it vanish since)."""
        path = self._records / f"{recipe.image_id}.json"
        if not path.exists():
            self._built.pop(recipe.image_id, None)
            return None
        built = self._built.get(recipe.image_id)
        if built is not None:
            return built
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        for key in ("env", "python_path"):
            doc[key] = tuple(tuple(x) if isinstance(x, list) else x for x in doc.get(key, ()))
        built = self._built[recipe.image_id] = BuiltImage(**doc)
        return built

    def _record(self, built: BuiltImage) -> None:
        self._records.mkdir(parents=True, exist_ok=True)
        tmp = self._records / f".{built.image_id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(built)))
        tmp.rename(self._records / f"{built.image_id}.json")
        self._built[built.image_id] = built

    # -- building --------------------------------------------------------------------

    async def build(self, recipe: Recipe, contexts: Mapping[str, bytes], log: BuildLog) -> BuiltImage:
        """Builds ``recipe`` into ``apothic-img:<image_id>``.

        Raises:
            BuildFailed: the base or a step failed; the error names it and the fix.
        """
        out = _Log(recipe, log)
        missing = recipe.contexts() - set(contexts)
        if missing:
            raise out.fail(f"the build context {sorted(missing)[0]} was not sent with the build")
        tag = image_tag(recipe.image_id)
        started = time.monotonic()
        try:
            async with aiodocker.Docker() as docker:
                base = await self._base(docker, recipe, contexts, out)
                python, workdir = await self._inspect_base(docker, base, recipe, out)
                managed = python != worker_python()
                out.say(
                    f"the image's python3 is {python or 'missing'}; "
                    + (
                        f"the worker's Python {worker_python()} runs the function (mounted from {sys.base_prefix})"
                        if managed
                        else "the worker's packages are mounted for the container runtime"
                    ),
                    BASE_STEP,
                )
                built = await self._steps(docker, recipe, contexts, out, base, tag, managed, workdir)
        except DockerError as exc:
            if exc.status == 900:  # aiodocker's "cannot connect"
                raise out.fail(f"{NO_DAEMON} ({exc.message})") from None
            raise out.fail(f"the Docker daemon refused the build: {exc.message}") from None
        except OSError as exc:
            raise out.fail(f"{NO_DAEMON} ({exc})") from None
        out.say(f"built {tag} in {time.monotonic() - started:.1f}s", BASE_STEP)
        self._record(built)
        return built

    async def _base(self, docker: aiodocker.Docker, recipe: Recipe, contexts: Mapping[str, bytes], out: _Log) -> str:
        """The image the steps go on (built first for ``from_dockerfile``)."""
        out.at(BASE_STEP)
        if recipe.registry_tag:
            if not await self._present(docker, recipe.registry_tag):
                raise out.fail(
                    f"image {recipe.registry_tag} is not present on this worker and no registry is reachable: "
                    f"docker pull/load it first (`docker pull {recipe.registry_tag}` or `docker load`)"
                )
            out.say(f"using {recipe.registry_tag}, present on this worker")
            return recipe.registry_tag
        if recipe.dockerfile:
            ctx = _Context()
            if recipe.dockerfile_context:
                try:
                    ctx.add_archive(".", contexts[recipe.dockerfile_context])
                except (tarfile.TarError, OSError) as exc:
                    raise out.fail(f"could not read the Dockerfile's context: {exc}") from None
            ctx.add_bytes(".apothic.Dockerfile", recipe.dockerfile.encode())
            base_tag = image_tag(f"{recipe.image_id}-base")
            await self._run_build(docker, ctx.close(), base_tag, ".apothic.Dockerfile", recipe, out, None)
            return base_tag
        version = recipe.python_version or worker_python()
        if not await self._present(docker, self.base_image):
            raise out.fail(
                f"the base image {self.base_image} is not on this worker: run `bash scripts/docker-setup.sh` "
                "(as root) to build it"
            )
        if version != worker_python():
            raise out.fail(
                f"Python {version} is not available on this worker: the docker executor runs functions on the "
                f"worker's Python ({worker_python()}), in the image's python3 when it matches and in the worker's own "
                "interpreter, mounted, otherwise; use python_version=None, or run a worker on Python "
                f"{version} for this image"
            )
        out.say(f"using {self.base_image}")
        return self.base_image

    @staticmethod
    async def _present(docker: aiodocker.Docker, name: str) -> bool:
        try:
            await docker.images.inspect(name)
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _inspect_base(self, docker: aiodocker.Docker, base: str, recipe: Recipe, out: _Log) -> tuple[str, str]:
        """The base image's ``python3`` version (empty: none) and working directory."""
        info = await docker.images.inspect(base)
        workdir = (info.get("Config") or {}).get("WorkingDir") or "/"
        labels = (info.get("Config") or {}).get("Labels") or {}
        if base == self.base_image and labels.get("apothic.python"):
            # Only the base image itself: images built FROM it inherit the label.
            return str(labels["apothic.python"]), workdir
        known = self._pythons.get(info["Id"])
        if known is not None:
            return known, workdir
        container = await docker.containers.create(
            {
                "Image": base,
                "Entrypoint": ["python3", "-c", _PROBE],
                "Cmd": [],
                "HostConfig": {"NetworkMode": "none"},
                "Labels": {"apothic.probe": recipe.image_id},
            }
        )
        try:
            try:
                await container.start()
            except DockerError:
                return "", workdir  # no python3 in the image
            await container.wait()
            lines = await container.log(stdout=True, stderr=False)
        finally:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
        version = "".join(lines).strip()
        version = self._pythons[info["Id"]] = version if re.fullmatch(r"\d+\.\d+", version) else ""
        return version, workdir

    async def _steps(
        self,
        docker: aiodocker.Docker,
        recipe: Recipe,
        contexts: Mapping[str, bytes],
        out: _Log,
        base: str,
        tag: str,
        managed: bool,
        base_workdir: str,
    ) -> BuiltImage:
        plan = _Plan([f"FROM {base}"], [BASE_STEP])
        ctx = _Context()
        env: dict[str, str] = {}
        workdir = base_workdir
        workdir_set = False
        python_path: list[str] = [MANAGED_PACKAGES] if managed and self._has_pip(recipe) else []
        uv_env = "UV_NO_PROGRESS=1 UV_PYTHON_DOWNLOADS=never"
        if self._has_pip(recipe) and not managed:
            uv = uv_binary()
            ctx.add_path(".apothic/uv", Path(uv))
            plan.add(BASE_STEP, "COPY .apothic/uv /usr/local/bin/uv")
            # The CA bundle the worker trusts (a TLS-inspecting proxy's, say) is uv's too.
            ca = os.environ.get("SSL_CERT_FILE", "")
            if ca and os.path.isfile(ca):
                ctx.add_path(".apothic/ca.pem", Path(ca))
                plan.add(BASE_STEP, f"COPY .apothic/ca.pem {CA_FILE}")
                uv_env += f" SSL_CERT_FILE={CA_FILE}"
        with tempfile.TemporaryDirectory(prefix="apothic-build-") as scratch:
            for index, step in enumerate(recipe.steps):
                out.at(index)
                if isinstance(step, PipInstall):
                    if managed:
                        await self._managed_pip(step, index, Path(scratch), ctx, plan, out)
                    else:
                        self._image_pip(step, index, ctx, plan, out, uv_env)
                elif isinstance(step, AptInstall):
                    packages = " ".join(shlex.quote(p) for p in step.packages)
                    plan.add(
                        index,
                        _run(
                            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                            f"--no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
                        ),
                    )
                elif isinstance(step, Env):
                    env.update(step.vars)
                    plan.add(index, "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in step.vars))
                elif isinstance(step, Workdir):
                    workdir = str(PurePosixPath(workdir) / step.path)
                    workdir_set = True
                    plan.add(index, "WORKDIR " + json.dumps(workdir)[1:-1])
                elif isinstance(step, RunCommands):
                    for command in step.commands:
                        plan.add(index, _run(command))
                elif isinstance(step, LocalFiles):
                    dest = str(PurePosixPath(workdir) / step.remote_path)
                    try:
                        count = ctx.add_archive(f".apothic/files/{index}", contexts[step.context_sha256])
                    except (tarfile.TarError, OSError) as exc:
                        raise out.fail(f"could not read the local files: {exc}") from None
                    out.say(f"adding {count} entries at {dest}")
                    plan.add(index, "COPY " + json.dumps([f".apothic/files/{index}/", dest.rstrip("/") + "/"]))
                    if step.python_path:
                        python_path.append(dest)
            ctx.add_bytes(".apothic/Dockerfile", ("\n".join(plan.lines) + "\n").encode())
            await self._run_build(docker, ctx.close(), tag, ".apothic/Dockerfile", recipe, out, plan)
        python = _managed_python() if managed else "python3"
        image_env = {**env, PYTHON_MODE_VAR: "managed" if managed else "image"}
        return BuiltImage(
            image_id=recipe.image_id,
            executor=self.executor,
            python=python,
            env=tuple(sorted(image_env.items())),
            workdir=workdir if workdir_set else "",
            python_path=tuple(python_path),
            docker_image=tag,
        )

    @staticmethod
    def _has_pip(recipe: Recipe) -> bool:
        return any(isinstance(s, PipInstall) for s in recipe.steps)

    @staticmethod
    def _pip_args(step: PipInstall, link: Callable[[int, str], str]) -> list[str]:
        """``uv pip install`` arguments; ``link(n, path)`` places a local ``find_links`` entry."""
        args: list[str] = []
        if step.index_url:
            args += ["--index-url", step.index_url]
        for url in step.extra_index_urls:
            args += ["--extra-index-url", url]
        for n, entry in enumerate(step.find_links):
            local = Path(entry.removeprefix("file://"))
            args += ["--find-links", link(n, str(local)) if "://" not in str(local) and local.exists() else entry]
        if step.no_index:
            args.append("--no-index")
        if step.pre:
            args += ["--prerelease", "allow"]
        return [*args, *step.packages]

    def _image_pip(self, step: PipInstall, index: int, ctx: _Context, plan: _Plan, out: _Log, uv_env: str) -> None:
        """A ``RUN uv pip install --system`` into the image's python3."""

        def link(n: int, path: str) -> str:
            name = f"{index}-{n}"
            ctx.add_path(f".apothic/links/{name}", Path(path))
            plan.add(index, "COPY " + json.dumps([f".apothic/links/{name}", f"{LINKS_DIR}/{name}"]))
            out.say(f"copying find_links {path} from the worker into the image")
            return f"{LINKS_DIR}/{name}"

        args = " ".join(shlex.quote(a) for a in self._pip_args(step, link))
        plan.add(
            index,
            _run(f"{uv_env} uv pip install --system --break-system-packages --no-cache --python python3 {args}"),
        )

    async def _managed_pip(
        self, step: PipInstall, index: int, scratch: Path, ctx: _Context, plan: _Plan, out: _Log
    ) -> None:
        """Installs for the worker's interpreter (the one that runs the function) on the
        worker, and copies the result into the image."""
        target = scratch / f"pip-{index}"
        args = self._pip_args(step, lambda _n, path: path)
        argv = [uv_binary(), "pip", "install", "--python", sys.executable, "--target", str(target), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("APOTHIC_")}
        env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        async for raw in proc.stdout:
            out.say(raw.decode(errors="replace").rstrip("\n"))
        code = await proc.wait()
        if code != 0:
            raise out.fail(f"uv pip install (on the worker, for the worker's Python) exited with code {code}")
        ctx.add_path(f".apothic/pip/{index}", target)
        plan.add(index, "COPY " + json.dumps([f".apothic/pip/{index}/", MANAGED_PACKAGES + "/"]))

    async def _run_build(
        self,
        docker: aiodocker.Docker,
        context: bytes,
        tag: str,
        dockerfile: str,
        recipe: Recipe,
        out: _Log,
        plan: _Plan | None,
    ) -> None:
        """Runs one build, streaming its output; a failure names the step it happened in."""
        out.at(BASE_STEP)
        partial = ""
        async for item in stream_build(
            docker, context, tag=tag, dockerfile=dockerfile, labels={IMAGE_LABEL: recipe.image_id}
        ):
            if "error" in item or "errorDetail" in item:
                detail = item.get("errorDetail") or {}
                message = str(detail.get("message") or item.get("error") or "the build failed").strip()
                out.say(message)
                raise out.fail(_explain(message))
            text = item.get("stream")
            if not isinstance(text, str):
                continue
            partial += text
            *lines, partial = partial.split("\n")
            for line in lines:
                line = _ANSI.sub("", line)
                match = _STEP_LINE.match(line)
                if match and plan is not None:
                    number = int(match.group(1)) - 1
                    out.at(plan.owners[number] if number < len(plan.owners) else out.step)
                if line.strip():
                    out.say(line.rstrip())
        if partial.strip():
            out.say(partial.rstrip())


def _explain(message: str) -> str:
    """The daemon's error, with the fix for the common cases."""
    failed = re.search(r"The command '(?:/bin/sh -c )?(.*)' returned a non-zero code: (\d+)", message, re.S)
    if failed:
        return f"`{failed.group(1)}` exited with code {failed.group(2)}"
    return message


def _managed_python() -> str:
    """The worker's interpreter, as a path under :data:`sys.base_prefix` (which is mounted)."""
    exe = Path(sys.executable).resolve()
    base = Path(sys.base_prefix).resolve()
    if exe.is_relative_to(base):
        return str(exe)
    candidate = base / "bin" / f"python{worker_python()}"
    return str(candidate if candidate.exists() else base / "bin" / "python3")


def runtime_mounts() -> list[str]:
    """Host directories a container needs read-only for the runtime: the worker's
    site-packages and apothic's source root (and, for managed CPython, its installation)."""
    import site

    import apothic

    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    dirs.append(str(Path(apothic.__file__).resolve().parent.parent))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]
