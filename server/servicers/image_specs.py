"""Checks an ``ImageSpec`` from a client and names it by its content."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from apothic._proto.v1 import types_pb2 as pb
from apothic.server.errors import InvalidArgument
from apothic.server.store import Store

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PYTHON = re.compile(r"^3\.\d{1,2}$")


def image_id(spec: pb.ImageSpec) -> str:
    """``im-`` + the SHA-256 of the spec's deterministic bytes (its own id left out)."""
    copy = pb.ImageSpec()
    copy.CopyFrom(spec)
    copy.image_id = ""
    return "im-" + hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:32]


def _names(what: str, names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        raise InvalidArgument(f"{what} needs at least one package")
    for name in names:
        if not name or name != name.strip() or "\n" in name:
            raise InvalidArgument(f"{what}: {name!r} is not a package name")
        if name.startswith("-"):
            raise InvalidArgument(f"{what}: {name!r} looks like an option; use the step's keyword arguments instead")


def _path(what: str, path: str, *, absolute: bool) -> None:
    if not path or "\0" in path or ".." in PurePosixPath(path).parts:
        raise InvalidArgument(f"{what} {path!r} must be a path without '..'")
    if absolute and not path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r} must be absolute, like '/app'")


def checked(spec: pb.ImageSpec, contexts: set[str]) -> pb.ImageSpec:
    """The spec with its base defaulted and its ``image_id`` set.

    Args:
        spec: the client's spec.
        contexts: SHA-256s of the archives available (sent with the request or stored).

    Raises:
        InvalidArgument: a malformed base or step, or an archive that is not available.
    """
    out = pb.ImageSpec()
    out.CopyFrom(spec)
    base = out.WhichOneof("base")
    if base is None:
        out.debian_slim.CopyFrom(pb.ImageDebianSlim())
    elif base == "debian_slim":
        version = out.debian_slim.python_version
        if version and not _PYTHON.match(version):
            raise InvalidArgument(f"image: python_version must look like '3.11', got {version!r}")
    elif base == "registry_tag":
        tag = out.registry_tag
        if not tag or any(c.isspace() for c in tag) or tag.startswith("-"):
            raise InvalidArgument(f"image: {tag!r} is not an image tag")
    elif base == "dockerfile":
        if not out.dockerfile.dockerfile.strip():
            raise InvalidArgument("image: the Dockerfile is empty")
        _context("the Dockerfile's context", out.dockerfile.context_sha256, contexts)
    for i, step in enumerate(out.steps):
        which = step.WhichOneof("step")
        what = f"image step {i}"
        if which == "pip_install":
            _names(f"{what} (pip_install)", step.pip_install.packages)
        elif which == "apt_install":
            _names(f"{what} (apt_install)", step.apt_install.packages)
        elif which == "env":
            for key in step.env.vars:
                if not key or "=" in key or "\0" in key:
                    raise InvalidArgument(f"{what} (env): {key!r} is not a variable name")
        elif which == "workdir":
            _path(f"{what} (workdir)", step.workdir, absolute=True)
        elif which == "run_commands":
            if not step.run_commands.commands or not all(c.strip() for c in step.run_commands.commands):
                raise InvalidArgument(f"{what} (run_commands) needs non-empty commands")
        elif which == "local_files":
            _path(f"{what} (local files)", step.local_files.remote_path, absolute=False)
            _context(what, step.local_files.context_sha256, contexts)
        else:
            raise InvalidArgument(f"{what} is empty or of an unknown kind")
    out.image_id = image_id(out)
    return out


def _context(what: str, sha: str, contexts: set[str]) -> None:
    if not _SHA256.match(sha):
        raise InvalidArgument(f"{what} names a bad archive digest {sha!r}")
    if sha not in contexts:
        raise InvalidArgument(f"{what} names archive {sha[:12]}…, which the request does not carry")


def named_contexts(spec: pb.ImageSpec) -> tuple[str, ...]:
    """The SHA-256s of every archive the spec names, sorted."""
    shas = {s.local_files.context_sha256 for s in spec.steps if s.WhichOneof("step") == "local_files"}
    if spec.WhichOneof("base") == "dockerfile":
        shas.add(spec.dockerfile.context_sha256)
    return tuple(sorted(shas))


async def prepare(store: Store, specs: list[pb.ImageSpec], sent: Iterable[pb.ImageContext]) -> list[pb.ImageSpec]:
    """Checks images a request names (see :func:`checked`) and stores the archives it sent
    for them; archives stored by an earlier request need not be sent again.

    Raises:
        InvalidArgument: a malformed spec, an archive whose bytes do not match its digest,
            or one that is neither sent nor stored.
    """
    archives: dict[str, bytes] = {}
    for ctx in sent:
        if hashlib.sha256(ctx.data).hexdigest() != ctx.sha256:
            raise InvalidArgument(f"image archive {ctx.sha256[:12]}…: its bytes do not match its SHA-256")
        archives[ctx.sha256] = ctx.data
    named = {sha for spec in specs for sha in named_contexts(spec)}
    available = set(archives) | await store.stored_archives(sorted(named - set(archives)))
    out = [checked(spec, available) for spec in specs]
    await store.save_archives({sha: data for sha, data in archives.items() if sha in named})
    return out
