"""File operations of a sandbox, confined to its root directory.

One rule: a path is resolved against the root (a relative path from the root, an absolute
one as it is) with every symbolic link followed, and a path that ends up outside the root
(``../../etc/passwd``, a link pointing out) is refused with :class:`AgentFailure`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Largest file read or written in one call.
MAX_FILE_BYTES = 32 * 1024 * 1024


class AgentFailure(Exception):
    """A request failed in a way the caller should hear about.

    Attributes:
        code: the gRPC status code name it maps to (``"NOT_FOUND"``…).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Entry:
    """One entry of a directory listing."""

    name: str
    is_dir: bool
    size: int
    modified_at: float


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve(root: Path, path: str) -> Path:
    """``path`` inside ``root``, symbolic links followed.

    Raises:
        AgentFailure: INVALID_ARGUMENT when the path escapes the root or holds a NUL byte.
    """
    if "\0" in path:
        raise AgentFailure("INVALID_ARGUMENT", "a path cannot contain a NUL byte")
    base = str(root)
    candidate = os.path.normpath(os.path.join(base, path or "."))
    if not _within(candidate, base):
        raise AgentFailure("INVALID_ARGUMENT", f"path {path!r} escapes the sandbox's root directory; it is refused")
    real = os.path.realpath(candidate)
    if not _within(real, base):
        raise AgentFailure(
            "INVALID_ARGUMENT",
            f"path {path!r} leads outside the sandbox's root directory through a symbolic link; it is refused",
        )
    return Path(real)


def read(root: Path, path: str) -> bytes:
    """A whole file's bytes."""
    target = resolve(root, path)
    try:
        if target.stat().st_size > MAX_FILE_BYTES:
            raise AgentFailure("INVALID_ARGUMENT", f"{path!r} is larger than {MAX_FILE_BYTES:,} bytes")
        return target.read_bytes()
    except FileNotFoundError:
        raise AgentFailure("NOT_FOUND", f"no file {path!r} in the sandbox") from None
    except IsADirectoryError:
        raise AgentFailure("INVALID_ARGUMENT", f"{path!r} is a directory, not a file") from None
    except PermissionError as exc:
        raise AgentFailure("INVALID_ARGUMENT", f"{path!r} cannot be read: {exc.strerror}") from None


def write(root: Path, path: str, data: bytes, *, append: bool = False, make_parents: bool = False) -> None:
    """Writes (or appends to) a file."""
    if len(data) > MAX_FILE_BYTES:
        raise AgentFailure("INVALID_ARGUMENT", f"at most {MAX_FILE_BYTES:,} bytes can be written in one call")
    target = resolve(root, path)
    if target == root:
        raise AgentFailure("INVALID_ARGUMENT", "the sandbox's root is a directory, not a file")
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "ab" if append else "wb") as fh:
            fh.write(data)
    except FileNotFoundError:
        raise AgentFailure("NOT_FOUND", f"the directory of {path!r} does not exist (pass make_parents)") from None
    except IsADirectoryError:
        raise AgentFailure("INVALID_ARGUMENT", f"{path!r} is a directory, not a file") from None
    except (NotADirectoryError, PermissionError) as exc:
        raise AgentFailure("INVALID_ARGUMENT", f"{path!r} cannot be written: {exc.strerror}") from None


def list_dir(root: Path, path: str) -> list[Entry]:
    """A directory's entries, sorted by name."""
    target = resolve(root, path)
    try:
        names = sorted(os.listdir(target))
    except FileNotFoundError:
        raise AgentFailure("NOT_FOUND", f"no directory {path!r} in the sandbox") from None
    except NotADirectoryError:
        raise AgentFailure("INVALID_ARGUMENT", f"{path!r} is a file, not a directory") from None
    out = []
    for name in names:
        try:
            st = (target / name).lstat()
        except FileNotFoundError:
            continue  # removed meanwhile
        out.append(Entry(name, os.path.isdir(target / name), st.st_size, st.st_mtime))
    return out


def make_dir(root: Path, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
    """Makes a directory."""
    target = resolve(root, path)
    try:
        target.mkdir(parents=parents, exist_ok=exist_ok)
    except FileExistsError:
        raise AgentFailure("ALREADY_EXISTS", f"{path!r} already exists in the sandbox") from None
    except FileNotFoundError:
        raise AgentFailure("NOT_FOUND", f"the parent of {path!r} does not exist (pass parents)") from None
    except NotADirectoryError:
        raise AgentFailure("INVALID_ARGUMENT", f"a parent of {path!r} is a file") from None


def remove(root: Path, path: str, *, recursive: bool = False) -> None:
    """Removes a file or a directory (a non-empty one only with ``recursive``); a symbolic
    link is removed itself, never what it points to."""
    link = os.path.normpath(os.path.join(str(root), path or "."))
    if os.path.islink(link) and _within(link, str(root)):
        resolve(root, os.path.dirname(link))  # the directory holding it must be inside too
        os.unlink(link)
        return
    target = resolve(root, path)
    if target == root:
        raise AgentFailure("INVALID_ARGUMENT", "the sandbox's root directory cannot be removed")
    if not target.exists():
        raise AgentFailure("NOT_FOUND", f"no path {path!r} in the sandbox")
    if target.is_dir():
        if recursive:
            shutil.rmtree(target)
            return
        try:
            target.rmdir()
        except OSError:
            raise AgentFailure("INVALID_ARGUMENT", f"directory {path!r} is not empty (pass recursive)") from None
        return
    target.unlink()
