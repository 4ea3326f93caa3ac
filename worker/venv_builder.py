"""The process executor's images: a virtualenv per image, built with ``uv``.

An image lives in ``<state_dir>/images/<image_id>/``: ``venv/`` (the interpreter the
function runs on), ``root/`` (the image's files: its workdir and local files) and
``built.json``, written last, which marks the build complete. A directory without it is
a build that did not finish and is built again.

What each step does here:

* ``debian_slim(python_version=V)``: a venv on an interpreter of version V already on the
  worker (found by ``uv``; nothing is downloaded); the worker's own version by default.
* ``pip_install`` / ``uv_pip_install``: ``uv pip install`` into the venv.
* ``env``, ``workdir``: the function's environment and working directory. The image's
  filesystem is ``root/``: ``workdir("/app")`` runs the function in ``root/app``.
* ``add_local_file`` / ``add_local_dir`` / ``add_local_python_source``: unpacked under
  ``root/`` (relative paths: under the workdir); python sources go on ``sys.path``.
* ``run_commands``: run by ``sh`` in the workdir, with the venv first on ``PATH``.
* ``apt_install``: accepted only when every package is already installed on the worker
  (it never installs system packages); ``from_registry`` and ``from_dockerfile`` need the
  docker executor. Both fail the build with an error that says so.

The container runtime (``apothic`` and its dependencies) comes from the worker's own
environment, added after the venv's packages on ``sys.path`` (so the image's pins win);
an image on another Python version gets its own copies installed by ``uv``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import os
import shutil
import site
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path, PurePosixPath

import apothic
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

#: Output lines kept for a failed step's error.
TAIL_LINES = 40
#: The container runtime's dependencies, installed into an image on another Python version.
RUNTIME_PACKAGES = ("grpcio", "protobuf", "cloudpickle")


def uv_binary() -> str:
    """The ``uv`` executable (the ``uv`` package's, else one on ``PATH``)."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        from uv import find_uv_bin

        return str(find_uv_bin())
    found = shutil.which("uv")
    if found is None:
        raise BuildFailed(BASE_STEP, "the process executor", "uv is not installed on this worker: pip install uv")
    return found


def _worker_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _runtime_pth(same_python: bool) -> str:
    """A ``.pth`` that adds the worker's packages after the venv's own."""
    apothic_root = str(Path(apothic.__file__).resolve().parent.parent)
    if not same_python:
        return f"{apothic_root}\n"
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + f"\n{apothic_root}\n"


class _Step:
    """Runs one step's commands, keeping the tail of their output."""

    def __init__(self, recipe: Recipe, index: int, log: BuildLog) -> None:
        self.recipe = recipe
        self.index = index
        self.log = log
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def say(self, line: str) -> None:
        self.tail.append(line)
        self.log(self.index, line)

    def fail(self, error: str) -> BuildFailed:
        return BuildFailed(self.index, self.recipe.describe(self.index), error, "\n".join(self.tail))

    async def run(self, argv: list[str], *, env: Mapping[str, str], cwd: Path, what: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                cwd=str(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise self.fail(f"could not run {what}: {exc}") from None
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                self.say(raw.decode(errors="replace").rstrip("\n"))
            code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            raise
        if code != 0:
            raise self.fail(f"{what} exited with code {code}")


class VenvBuilder:
    """Builds images as virtualenvs under ``<state_dir>/images``.

    Args:
        state_dir: the worker's state directory.
        uv_cache: uv's cache (shared by every image); default ``<state_dir>/uv-cache``.
    """

    executor = "process"

    def __init__(self, state_dir: Path, *, uv_cache: Path | None = None) -> None:
        self.root = state_dir / "images"
        self.uv_cache = uv_cache or state_dir / "uv-cache"

    def _dir(self, recipe: Recipe) -> Path:
        if not recipe.image_id or "/" in recipe.image_id or recipe.image_id.startswith("."):
            raise ValueError(f"bad image id {recipe.image_id!r}")
        return self.root / recipe.image_id

    def cached(self, recipe: Recipe) -> BuiltImage | None:
        """The image when it was built here before."""
        marker = self._dir(recipe) / "built.json"
        try:
            doc = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        for key in ("env", "python_path"):
            doc[key] = tuple(tuple(x) if isinstance(x, list) else x for x in doc.get(key, ()))
        return BuiltImage(**doc)

    async def build(self, recipe: Recipe, contexts: Mapping[str, bytes], log: BuildLog) -> BuiltImage:
        """Builds ``recipe`` into its directory (see the module docstring).

        Raises:
            BuildFailed: a step failed or cannot run on the process executor.
        """
        base = _Step(recipe, BASE_STEP, log)
        if recipe.registry_tag or recipe.dockerfile:
            raise base.fail(
                f"{recipe.describe_base()} needs the docker executor: run a docker worker "
                "(`apothic worker --executor docker`), or use apothic.Image.debian_slim() on the process executor"
            )
        missing = recipe.contexts() - set(contexts)
        if missing:
            raise base.fail(f"the build context {sorted(missing)[0]} was not sent with the build")
        target = self._dir(recipe)
        if target.exists():
            shutil.rmtree(target)  # an unfinished build
        target.mkdir(parents=True)
        started = time.monotonic()
        venv = target / "venv"
        files = target / "root"
        files.mkdir()
        uv = uv_binary()
        env = {k: v for k, v in os.environ.items() if not k.startswith("APOTHIC_")}
        env.update(UV_CACHE_DIR=str(self.uv_cache), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
        version = recipe.python_version or _worker_python()
        python = sys.executable if version == _worker_python() else version
        base.say(f"creating a virtualenv on Python {version}")
        await base.run([uv, "venv", "--python", python, "--seed", str(venv)], env=env, cwd=target, what="uv venv")
        vpython = str(venv / "bin" / "python")
        same = await self._same_python(vpython)
        if not same:
            await base.run(
                [uv, "pip", "install", "--python", vpython, *self._runtime_pins()],
                env=env,
                cwd=target,
                what="installing the container runtime",
            )
        site_dir = Path(await self._site_packages(vpython))
        (site_dir / "_apothic_runtime.pth").write_text(_runtime_pth(same))

        image_env: dict[str, str] = {}
        workdir = ""
        python_path: list[str] = []
        path_var = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        for index, step in enumerate(recipe.steps):
            run = _Step(recipe, index, log)
            cwd = self._host_path(files, workdir) if workdir else files
            if isinstance(step, PipInstall):
                await run.run(
                    [uv, "pip", "install", "--python", vpython, *self._pip_args(step)],
                    env=env,
                    cwd=cwd,
                    what="uv pip install",
                )
            elif isinstance(step, AptInstall):
                await self._check_apt(run, step)
            elif isinstance(step, Env):
                image_env.update(step.vars)
            elif isinstance(step, Workdir):
                workdir = step.path
                self._host_path(files, workdir).mkdir(parents=True, exist_ok=True)
            elif isinstance(step, RunCommands):
                cmd_env = {**env, **image_env, "PATH": path_var, "VIRTUAL_ENV": str(venv)}
                for command in step.commands:
                    run.say(f"$ {command}")
                    await run.run(["/bin/sh", "-c", command], env=cmd_env, cwd=cwd, what=f"`{command}`")
            elif isinstance(step, LocalFiles):
                remote = step.remote_path
                dest = self._host_path(files, remote) if remote.startswith("/") else self._host_path(cwd, remote)
                self._unpack(run, contexts[step.context_sha256], dest)
                if step.python_path:
                    python_path.append(str(dest))
        built = BuiltImage(
            image_id=recipe.image_id,
            executor=self.executor,
            python=vpython,
            env=tuple(sorted({**image_env, "PATH": path_var, "VIRTUAL_ENV": str(venv)}.items())),
            workdir=str(self._host_path(files, workdir)) if workdir else "",
            python_path=tuple(python_path),
            root=str(target),
        )
        base.say(f"built {recipe.image_id} in {time.monotonic() - started:.1f}s")
        (target / "built.json").write_text(json.dumps(asdict(built)))
        return built

    @staticmethod
    def _host_path(files: Path, path: str) -> Path:
        """Where an image path lives on the host: under ``files`` (``root/`` for an absolute
        path, the workdir for a relative one)."""
        parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
        if ".." in parts:
            raise ValueError(f"image path {path!r} must not contain '..'")
        return files.joinpath(*parts)

    @staticmethod
    def _unpack(run: _Step, data: bytes, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(dest, filter="data")
                count = len(tar.getnames())
        except (tarfile.TarError, OSError) as exc:
            raise run.fail(f"could not unpack the local files: {exc}") from None
        run.say(f"added {count} entries at {dest}")

    @staticmethod
    def _pip_args(step: PipInstall) -> list[str]:
        args: list[str] = []
        if step.index_url:
            args += ["--index-url", step.index_url]
        for url in step.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in step.find_links:
            args += ["--find-links", link]
        if step.no_index:
            args.append("--no-index")
        if step.pre:
            args += ["--prerelease", "allow"]
        return [*args, *step.packages]

    @staticmethod
    def _runtime_pins() -> list[str]:
        pins = []
        for name in RUNTIME_PACKAGES:
            try:
                pins.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pins.append(name)
        return pins

    @staticmethod
    async def _probe(python: str, code: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return out.decode().strip()

    async def _same_python(self, python: str) -> bool:
        version = await self._probe(python, "import sys; print('%d.%d' % sys.version_info[:2])")
        return version == _worker_python()

    async def _site_packages(self, python: str) -> str:
        return await self._probe(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")

    @staticmethod
    async def _check_apt(run: _Step, step: AptInstall) -> None:
        if shutil.which("dpkg-query") is None:
            raise run.fail(
                "the process executor does not install system packages and this worker has no dpkg to check them: "
                "run a docker worker (`apothic worker --executor docker`)"
            )
        missing = []
        for package in step.packages:
            proc = await asyncio.create_subprocess_exec(
                "dpkg-query",
                "-W",
                "-f=${Status}",
                package,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
            if b"install ok installed" not in out:
                missing.append(package)
        if missing:
            raise run.fail(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed on this worker, and the "
                "process executor does not install system packages: install them on the worker's host, or run a "
                "docker worker (`apothic worker --executor docker`)"
            )
        run.say(f"already installed on this worker: {', '.join(step.packages)}")
