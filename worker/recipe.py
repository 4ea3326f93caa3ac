"""What a worker builds an image from, and what a build leaves behind.

A :class:`Recipe` is the worker's copy of an ``ImageSpec``: a base and ordered steps, named
by the content id the control plane gave it. An :class:`ImageBuilder` turns a recipe into a
:class:`BuiltImage` (a virtualenv for the process executor, a Docker image for the docker
executor) or raises :class:`BuildFailed` naming the step that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from apothic._proto.v1 import types_pb2 as pb

#: The index :class:`BuildFailed` and log lines use for the base (steps count from 0).
BASE_STEP = -1


@dataclass(frozen=True)
class PipInstall:
    packages: tuple[str, ...]
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    pre: bool = False
    no_index: bool = False

    def describe(self) -> str:
        return f"pip_install({', '.join(repr(p) for p in self.packages)})"


@dataclass(frozen=True)
class AptInstall:
    packages: tuple[str, ...]

    def describe(self) -> str:
        return f"apt_install({', '.join(repr(p) for p in self.packages)})"


@dataclass(frozen=True)
class Env:
    vars: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return f"env({', '.join(k for k, _ in self.vars)})"


@dataclass(frozen=True)
class Workdir:
    path: str

    def describe(self) -> str:
        return f"workdir({self.path!r})"


@dataclass(frozen=True)
class RunCommands:
    commands: tuple[str, ...]

    def describe(self) -> str:
        first = self.commands[0] if self.commands else ""
        more = f" and {len(self.commands) - 1} more" if len(self.commands) > 1 else ""
        return f"run_commands({first!r}{more})"


@dataclass(frozen=True)
class LocalFiles:
    context_sha256: str
    #: Absolute, or relative to the workdir.
    remote_path: str
    #: The directory goes on the function's ``sys.path``.
    python_path: bool = False

    def describe(self) -> str:
        what = "add_local_python_source" if self.python_path else "add_local_files"
        return f"{what}(-> {self.remote_path!r})"


Step = PipInstall | AptInstall | Env | Workdir | RunCommands | LocalFiles


@dataclass(frozen=True)
class Recipe:
    """An image to build. Exactly one base: ``python_version`` (Debian slim; empty means the
    worker's own version), ``registry_tag`` or ``dockerfile``."""

    image_id: str
    steps: tuple[Step, ...] = ()
    python_version: str = ""
    registry_tag: str = ""
    dockerfile: str = ""
    dockerfile_context: str = ""

    @property
    def base_kind(self) -> str:
        """``debian_slim``, ``registry`` or ``dockerfile``."""
        if self.registry_tag:
            return "registry"
        if self.dockerfile:
            return "dockerfile"
        return "debian_slim"

    def describe_base(self) -> str:
        if self.registry_tag:
            return f"from_registry({self.registry_tag!r})"
        if self.dockerfile:
            return "from_dockerfile(...)"
        return f"debian_slim(python_version={self.python_version or None!r})"

    def describe(self, step: int) -> str:
        """A human name for step ``step`` (:data:`BASE_STEP` for the base)."""
        return self.describe_base() if step == BASE_STEP else self.steps[step].describe()

    def contexts(self) -> set[str]:
        """The SHA-256s of every archive the recipe names."""
        out = {s.context_sha256 for s in self.steps if isinstance(s, LocalFiles)}
        if self.dockerfile_context:
            out.add(self.dockerfile_context)
        return out


def _step(step: pb.ImageStep) -> Step:
    which = step.WhichOneof("step")
    if which == "pip_install":
        p = step.pip_install
        return PipInstall(
            tuple(p.packages), p.index_url, tuple(p.extra_index_urls), tuple(p.find_links), p.pre, p.no_index
        )
    if which == "apt_install":
        return AptInstall(tuple(step.apt_install.packages))
    if which == "env":
        return Env(tuple(sorted(step.env.vars.items())))
    if which == "workdir":
        return Workdir(step.workdir)
    if which == "run_commands":
        return RunCommands(tuple(step.run_commands.commands))
    if which == "local_files":
        f = step.local_files
        return LocalFiles(f.context_sha256, f.remote_path, f.python_path)
    raise ValueError(f"unknown image step {which!r}")


def recipe_from_pb(spec: pb.ImageSpec) -> Recipe:
    """The worker's copy of an image spec."""
    base = spec.WhichOneof("base")
    return Recipe(
        image_id=spec.image_id,
        steps=tuple(_step(s) for s in spec.steps),
        python_version=spec.debian_slim.python_version if base == "debian_slim" else "",
        registry_tag=spec.registry_tag if base == "registry_tag" else "",
        dockerfile=spec.dockerfile.dockerfile if base == "dockerfile" else "",
        dockerfile_context=spec.dockerfile.context_sha256 if base == "dockerfile" else "",
    )


@dataclass(frozen=True)
class BuiltImage:
    """A built image, as a container start needs it."""

    image_id: str
    executor: str
    #: The interpreter that runs the container (a path on the host or inside the image).
    python: str
    #: Environment the image sets (its ``env`` steps, and ``PATH``/``VIRTUAL_ENV`` for a venv).
    env: tuple[tuple[str, str], ...] = ()
    #: The container's working directory; empty means the source directory.
    workdir: str = ""
    #: Directories put on ``sys.path`` after the app's source (``add_local_python_source``).
    python_path: tuple[str, ...] = ()
    #: The Docker image (docker executor only).
    docker_image: str = ""
    #: Where the image lives on the worker (a venv's root; docker: empty).
    root: str = ""


class BuildFailed(Exception):
    """A build step failed. ``step`` is its index (:data:`BASE_STEP` for the base)."""

    def __init__(self, step: int, description: str, error: str, log_tail: str = "") -> None:
        super().__init__(f"step {step} {description}: {error}" if step >= 0 else f"the base {description}: {error}")
        self.step = step
        self.description = description
        self.error = error
        self.log_tail = log_tail


#: Receives build output: (step index, line).
BuildLog = Callable[[int, str], None]


class ImageBuilder(Protocol):
    """Builds images for one executor kind."""

    executor: str

    async def build(self, recipe: Recipe, contexts: Mapping[str, bytes], log: BuildLog) -> BuiltImage:
        """Builds ``recipe`` (``contexts``: archives by SHA-256) and returns the result.

        Raises:
            BuildFailed: a step failed; the message names it and the fix.
        """
        ...

    def cached(self, recipe: Recipe) -> BuiltImage | None:
        """The image when this worker has already built it, else None."""
        ...
