"""``Image``: the environment a function runs in, built once per content and reused.

An image is a base and a chain of steps; every method returns a new image, so images
compose like values::

    image = (
        apothic.Image.debian_slim(python_version="3.11")
        .pip_install("pandas==2.2.3")
        .env({"MODE": "prod"})
        .workdir("/app")
        .add_local_dir("assets", "assets")
    )

    @app.function(image=image)
    def report() -> str: ...

The deploy builds each image on the workers (their executor decides how: a cached
virtualenv for ``process``, a Docker image for ``docker``), streams the build's output, and
fails with the failing step and its output when a step fails. An image with the same
content (local files by their bytes) is never built twice on a worker.
"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from apothic.exceptions import InvalidConfigError

#: Where ``add_local_python_source`` puts modules by default (on ``sys.path`` either way).
PYTHON_SOURCE_PATH = "/root"
_FIXED_MTIME = 315532800  # 1980-01-01: archives of the same files are the same bytes


@dataclass(frozen=True)
class _Pip:
    packages: tuple[str, ...]
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    pre: bool = False
    no_index: bool = False
    uv: bool = False


@dataclass(frozen=True)
class _Apt:
    packages: tuple[str, ...]


@dataclass(frozen=True)
class _Env:
    vars: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Workdir:
    path: str


@dataclass(frozen=True)
class _Run:
    commands: tuple[str, ...]


@dataclass(frozen=True)
class _Local:
    """Local files, read when the app deploys: ``(local path, path in the archive)`` pairs."""

    entries: tuple[tuple[str, str], ...]
    remote_path: str
    python_path: bool = False


_Step = _Pip | _Apt | _Env | _Workdir | _Run | _Local


@dataclass(frozen=True)
class BuildContext:
    """A tar archive an image's step names, with its SHA-256."""

    sha256: str
    data: bytes


def _inside_container() -> bool:
    """True when this process is a container importing the app: local files are not there,
    and the image was built already, so the ``add_local_*`` steps are not checked again."""
    return bool(os.environ.get("APOTHIC_CONTAINER_ID"))


def _flatten(what: str, items: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(what, item))
            continue
        if not isinstance(item, str) or not item.strip():
            raise InvalidConfigError(f"{what}: each entry must be a non-empty string, got {item!r}")
        out.append(item.strip())
    return tuple(out)


def _check_abs(what: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidConfigError(f"{what} must be an absolute path like '/app', got {path!r}")
    if ".." in PurePosixPath(path).parts:
        raise InvalidConfigError(f"{what} must not contain '..', got {path!r}")
    return str(PurePosixPath(path))


def _check_remote(what: str, path: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidConfigError(f"{what} must be a path in the image, got {path!r}")
    if ".." in PurePosixPath(path).parts:
        raise InvalidConfigError(f"{what} must not contain '..', got {path!r}")
    return str(PurePosixPath(path))


def _tar(entries: tuple[tuple[str, str], ...]) -> bytes:
    """A deterministic tar of ``(local path, archive name)`` pairs (directories recursed)."""
    files: dict[str, Path] = {}
    for local, name in entries:
        src = Path(local)
        if src.is_dir():
            for path in sorted(src.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    rel = path.relative_to(src).as_posix()
                    files[f"{name}/{rel}" if name else rel] = path
        elif src.is_file():
            files[name or src.name] = src
        else:
            raise InvalidConfigError(f"image: the local path {local!r} no longer exists")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name].read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _FIXED_MTIME
            info.mode = 0o755 if os.access(files[name], os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Image:
    """A container image definition. Build one with :meth:`debian_slim`,
    :meth:`from_registry` or :meth:`from_dockerfile`, then chain steps.

    Which steps each executor honours: the docker executor honours every one. The process
    executor (the default) builds a virtualenv with ``uv``: ``pip_install``,
    ``uv_pip_install``, ``env``, ``workdir``, ``run_commands`` and the ``add_local_*``
    steps work (absolute image paths live under the image's own directory there, and the
    function runs in the workdir, so paths relative to the workdir behave the same on both
    executors); ``apt_install`` succeeds only when the packages are already installed on the
    worker; ``from_registry`` and ``from_dockerfile`` fail the build with an error that
    says to use a docker worker.
    """

    python_version: str = ""
    registry_tag: str = ""
    dockerfile: str = ""
    dockerfile_context: str = ""
    steps: tuple[_Step, ...] = field(default=())

    def __repr__(self) -> str:
        return f"Image({self.describe()})"

    def describe(self) -> str:
        """A one-line summary: the base and its steps."""
        if self.registry_tag:
            base = f"from_registry({self.registry_tag!r})"
        elif self.dockerfile:
            base = "from_dockerfile(...)"
        else:
            base = f"debian_slim({self.python_version!r})" if self.python_version else "debian_slim()"
        return ".".join([base, *(type(s).__name__.lstrip("_").lower() for s in self.steps)])

    # -- bases -------------------------------------------------------------------------

    @staticmethod
    def debian_slim(python_version: str | None = None) -> Image:
        """A Debian slim image with Python ``python_version`` ("3.11"; default: the worker's).

        Raises:
            InvalidConfigError: the version is not like "3.11".
        """
        if python_version is not None:
            parts = str(python_version).split(".")
            if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts) and parts[0] == "3"):
                raise InvalidConfigError(f"python_version must look like '3.11', got {python_version!r}")
            python_version = ".".join(parts[:2])
        return Image(python_version=python_version or "")

    @staticmethod
    def from_registry(tag: str) -> Image:
        """An image by its Docker tag (``"python:3.11-slim"``). The docker executor uses a copy
        already present on the worker; the process executor cannot run it."""
        if not isinstance(tag, str) or not tag.strip() or any(c.isspace() for c in tag.strip()):
            raise InvalidConfigError(f"from_registry needs an image tag like 'python:3.11-slim', got {tag!r}")
        return Image(registry_tag=tag.strip())

    @staticmethod
    def from_dockerfile(path: str | os.PathLike[str], *, context_dir: str | os.PathLike[str] | None = None) -> Image:
        """An image built from a Dockerfile (docker executor only); ``context_dir`` (default:
        the Dockerfile's directory) is sent as its build context when the app deploys.

        Raises:
            InvalidConfigError: the Dockerfile or the context directory does not exist.
        """
        file = Path(path)
        if _inside_container():
            return Image(dockerfile=str(file))
        if not file.is_file():
            raise InvalidConfigError(f"from_dockerfile: {str(file)!r} is not a file")
        context = Path(context_dir) if context_dir is not None else file.parent
        if not context.is_dir():
            raise InvalidConfigError(f"from_dockerfile: context_dir {str(context)!r} is not a directory")
        return Image(dockerfile=file.read_text(), dockerfile_context=str(context.resolve()))

    # -- steps -------------------------------------------------------------------------

    def _then(self, step: _Step) -> Image:
        return replace(self, steps=(*self.steps, step))

    def pip_install(
        self,
        *packages: str | list[str],
        index_url: str | None = None,
        extra_index_url: str | list[str] | None = None,
        find_links: str | os.PathLike[str] | list[str] | None = None,
        pre: bool = False,
        no_index: bool = False,
    ) -> Image:
        """Installs Python packages (``"requests==2.32.3"``, ``"pkg>=1"``); built with ``uv``.

        Args:
            packages: requirement strings, or lists of them.
            index_url: the package index to use instead of PyPI.
            extra_index_url: more indexes.
            find_links: local directories (on the worker) or URLs with wheels.
            pre: allow pre-releases.
            no_index: never use an index: only ``find_links``.

        Raises:
            InvalidConfigError: no packages, or an empty name.
        """
        return self._then(self._pip(packages, index_url, extra_index_url, find_links, pre, no_index, uv=False))

    def uv_pip_install(
        self,
        *packages: str | list[str],
        index_url: str | None = None,
        extra_index_url: str | list[str] | None = None,
        find_links: str | os.PathLike[str] | list[str] | None = None,
        pre: bool = False,
        no_index: bool = False,
    ) -> Image:
        """Same as :meth:`pip_install` (both install with ``uv``); kept for Modal parity."""
        return self._then(self._pip(packages, index_url, extra_index_url, find_links, pre, no_index, uv=True))

    @staticmethod
    def _pip(
        packages: tuple[Any, ...],
        index_url: str | None,
        extra: str | list[str] | None,
        links: str | os.PathLike[str] | list[str] | None,
        pre: bool,
        no_index: bool,
        *,
        uv: bool,
    ) -> _Pip:
        names = _flatten("pip_install", packages)
        if not names:
            raise InvalidConfigError("pip_install needs at least one package")
        extras = (extra,) if isinstance(extra, str) else tuple(extra or ())
        link_list = [links] if isinstance(links, (str, os.PathLike)) else list(links or [])
        paths = [os.fspath(link) for link in link_list]
        resolved = tuple(str(Path(link).resolve()) if Path(link).exists() else link for link in paths)
        return _Pip(
            names, index_url or "", _flatten("extra_index_url", extras), resolved, bool(pre), bool(no_index), uv
        )

    def apt_install(self, *packages: str | list[str]) -> Image:
        """Installs Debian packages (docker executor; the process executor accepts packages
        already installed on the worker)."""
        names = _flatten("apt_install", packages)
        if not names:
            raise InvalidConfigError("apt_install needs at least one package")
        return self._then(_Apt(names))

    def env(self, vars: Mapping[str, str]) -> Image:
        """Sets environment variables for later steps and for the function."""
        if not isinstance(vars, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in vars.items()):
            raise InvalidConfigError(f"env must be a dict of strings to strings, got {vars!r}")
        if any(not k or "=" in k for k in vars):
            raise InvalidConfigError(f"env: variable names must be non-empty and contain no '=', got {list(vars)}")
        return self._then(_Env(tuple(sorted(vars.items()))))

    def workdir(self, path: str) -> Image:
        """The working directory (absolute) for later steps and for the function."""
        return self._then(_Workdir(_check_abs("workdir", path)))

    def run_commands(self, *commands: str | list[str]) -> Image:
        """Runs shell commands in order; the build fails at the first that exits non-zero."""
        cmds = _flatten("run_commands", commands)
        if not cmds:
            raise InvalidConfigError("run_commands needs at least one command")
        return self._then(_Run(cmds))

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copies a local file into the image (read when the app deploys). ``remote_path`` is
        absolute, or relative to the workdir; ending in ``/`` keeps the file's name."""
        src = Path(local_path)
        if _inside_container():
            return self._then(_Local((), str(remote_path)))
        if not src.is_file():
            raise InvalidConfigError(f"add_local_file: {str(src)!r} is not a file")
        remote = _check_remote("add_local_file remote_path", remote_path)
        if remote_path.endswith("/"):
            return self._then(_Local(((str(src.resolve()), src.name),), remote))
        parent, name = str(PurePosixPath(remote).parent), PurePosixPath(remote).name
        return self._then(_Local(((str(src.resolve()), name),), parent))

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copies a local directory's files into ``remote_path`` (absolute, or relative to the
        workdir), read when the app deploys."""
        src = Path(local_path)
        if _inside_container():
            return self._then(_Local((), str(remote_path)))
        if not src.is_dir():
            raise InvalidConfigError(f"add_local_dir: {str(src)!r} is not a directory")
        return self._then(_Local(((str(src.resolve()), ""),), _check_remote("add_local_dir remote_path", remote_path)))

    def add_local_python_source(self, *modules: str, remote_path: str = PYTHON_SOURCE_PATH) -> Image:
        """Ships local Python modules or packages by import name and puts them on the
        function's ``sys.path`` (found without importing them).

        Raises:
            InvalidConfigError: a module cannot be found, or is not plain source files.
        """
        names = _flatten("add_local_python_source", modules)
        if _inside_container():
            return self._then(_Local((), remote_path, python_path=True))
        if not names:
            raise InvalidConfigError("add_local_python_source needs at least one module name")
        entries = []
        for name in names:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is None or spec.origin in (None, "built-in", "frozen"):
                raise InvalidConfigError(f"add_local_python_source: no local module named {name!r}")
            origin = Path(spec.origin)  # type: ignore[arg-type]
            if spec.submodule_search_locations:
                entries.append((str(origin.parent), name.replace(".", "/")))
            elif origin.suffix == ".py":
                entries.append((str(origin), name.replace(".", "/") + ".py"))
            else:
                raise InvalidConfigError(f"add_local_python_source: {name!r} is not Python source ({origin.name})")
        return self._then(_Local(tuple(entries), _check_abs("remote_path", remote_path), python_path=True))

    # -- deploy ------------------------------------------------------------------------

    def _build_contexts(self) -> tuple[dict[int, BuildContext], BuildContext | None]:
        """Reads the local files now: one archive per ``add_local_*`` step (by step index)
        and the Dockerfile's context."""
        import hashlib

        def ctx(data: bytes) -> BuildContext:
            return BuildContext(hashlib.sha256(data).hexdigest(), data)

        steps = {i: ctx(_tar(s.entries)) for i, s in enumerate(self.steps) if isinstance(s, _Local)}
        docker = ctx(_tar(((self.dockerfile_context, ""),))) if self.dockerfile else None
        return steps, docker
