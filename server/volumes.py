"""Volumes: named trees of files per account, kept by the control plane.

A file's content is stored once per distinct content as ``<state_dir>/volumes/blobs/<sha256>``
(written to a temporary name, then renamed, so a blob is whole or absent); its row in the
store names the blob. Every committed change to a volume's files bumps its ``version``.

Blobs live on the control plane's disk, so one state directory serves one control plane:
replicas sharing a database do not share volume contents. A blob no file names any more is
deleted once the change that dropped it committed; a put of the same content meanwhile
pins the blob (see :meth:`VolumeManager._pin`), so a file never names a missing blob.

Concurrent writes to one path: the last to commit wins. The checks that a path is not a
directory (or under a file) run before the write, not in its transaction: two racing puts of
``a`` and ``a/b`` can both land, and listing then shows ``a`` as a file and a directory.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import os
import posixpath
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from apothic.server.deployments import validate_name
from apothic.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from apothic.server.models import utcnow
from apothic.server.store_base import StoreWriteError
from apothic.server.store_volumes import VOLUME_GONE, FileRow, VolumeRow

if TYPE_CHECKING:
    from apothic.server.models import FunctionSpecRecord
    from apothic.server.store import Store

log = logging.getLogger("apothic.server.volumes")

#: Backends: files kept by the control plane, or on the disk of the host that first mounts it.
PORTABLE = "portable"
VAST_LOCAL = "vast_local"
BACKENDS = (PORTABLE, VAST_LOCAL)

#: Largest file a volume takes, in bytes.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255


@dataclass(frozen=True)
class VolumeInfo:
    """A volume's state."""

    name: str
    version: int
    file_count: int
    total_bytes: int
    created_at: datetime
    updated_at: datetime
    backend: str = PORTABLE
    pinned_host: str = ""


@dataclass(frozen=True)
class FileEntry:
    """A file of a volume, or a directory (``is_dir``; no size, hash or time)."""

    path: str
    is_dir: bool
    size: int = 0
    sha256: str = ""
    mtime: datetime | None = None


def _info(row: VolumeRow) -> VolumeInfo:
    return VolumeInfo(
        row.name,
        row.version,
        row.file_count,
        row.total_bytes,
        row.created_at,
        row.updated_at,
        row.backend,
        row.pinned_host,
    )


def _entry(row: FileRow) -> FileEntry:
    return FileEntry(path=row.path, is_dir=False, size=row.size, sha256=row.sha256, mtime=row.mtime)


def mount_ref(function: str, name: str, mount_path: str) -> str:
    """A function spec's reference to a volume it mounts: ``"<name>:<mount path>"``.

    Raises:
        InvalidArgument: a bad volume name, or a mount path that is not a normalized
            absolute directory path (the root excluded).
    """
    validate_name("volume", name)
    if (
        not mount_path.startswith("/")
        or mount_path == "/"
        or posixpath.normpath(mount_path) != mount_path
        or "\x00" in mount_path
    ):
        raise InvalidArgument(
            f"function {function!r}: mount path {mount_path!r} of volume {name!r} must be a normalized absolute path"
        )
    return f"{name}:{mount_path}"


def split_mount_ref(ref: str) -> tuple[str, str]:
    """``(name, mount path)`` of a :func:`mount_ref`."""
    name, _, path = ref.partition(":")
    return name, path


def normalize_path(path: str, *, allow_root: bool = False) -> str:
    """The canonical form of a path inside a volume: relative, '/'-separated, no ``.`` or
    ``..`` parts, no empty parts. One trailing '/' is dropped.

    Raises:
        InvalidArgument: the path is absolute, climbs out with ``..``, is not normalized,
            is too long, or is empty where a file is needed. The message names the path.
    """
    shown = repr(path[:MAX_PATH_CHARS])

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"volume path {shown} is invalid: {why}")

    if len(path) > MAX_PATH_CHARS:
        raise bad(f"it is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path or "\\" in path:
        raise bad("it contains a NUL or a backslash; use '/' to separate directories")
    if path.startswith("/"):
        raise bad("absolute paths are not allowed; give a path relative to the volume's root")
    trimmed = path[:-1] if path.endswith("/") else path
    if not trimmed:
        if allow_root:
            return ""
        raise bad("it is empty; name a file")
    for part in trimmed.split("/"):
        if part == "..":
            raise bad("'..' would leave the volume")
        if part in ("", "."):
            raise bad("it is not normalized (empty or '.' parts)")
        if len(part) > MAX_PART_CHARS:
            raise bad(f"a part is longer than {MAX_PART_CHARS} characters")
    return trimmed


class VolumeManager:
    """Creates, lists and deletes volumes, and reads and writes their files.

    Args:
        store: where volume and file rows live.
        root: the directory blobs go under (``<state_dir>/volumes``); :meth:`set_root` sets
            it when it is known only at start.
    """

    def __init__(self, store: Store, root: Path | None = None) -> None:
        self.store = store
        self._root = root
        #: Content hashes being written by a put that has not committed yet.
        self._pinned: Counter[str] = Counter()
        #: Bumped by every pin: a collection that raced any put skips (leaving, at worst, an
        #: unreferenced blob on disk, never a file without its blob).
        self._pin_serial = 0
        #: vast_local volumes: (account, name) -> the host they live on ("" until first mounted).
        self._local: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Reads where the vast_local volumes live (at start)."""
        self._local = {(r.account, r.name): r.pinned_host for r in await self.store.local_volumes()}

    def set_root(self, root: Path) -> None:
        """Sets the directory blobs go under."""
        self._root = root

    @property
    def blob_dir(self) -> Path:
        """``<root>/blobs``, where contents live by SHA-256."""
        if self._root is None:
            raise RuntimeError("the volume manager has no state directory; call set_root() first")
        return self._root / "blobs"

    async def _volume(self, account: str, name: str) -> VolumeRow:
        validate_name("volume", name)
        row = await self.store.get_volume(account, name)
        if row is None:
            raise NotFound(f"volume {name!r} not found; create it with `apothic volume create {name}`")
        return row

    async def create(
        self, account: str, name: str, *, exist_ok: bool, backend: str = PORTABLE
    ) -> tuple[VolumeInfo, bool]:
        """Creates a volume, or returns the existing one with ``exist_ok``.

        Returns:
            The volume and whether this call created it.

        Raises:
            InvalidArgument: bad name or backend.
            AlreadyExists: the volume exists and ``exist_ok`` is false.
            FailedPrecondition: it exists with another backend than the one asked for (an
                empty ``backend`` takes any, and creates a portable one).
        """
        validate_name("volume", name)
        requested, backend = backend, backend or PORTABLE
        if backend not in BACKENDS:
            raise InvalidArgument(f"volume backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        existing = await self.store.get_volume(account, name)
        if existing is None:
            try:
                await self.store.create_volume(account, name, utcnow(), backend)
            except StoreWriteError:
                if await self.store.get_volume(account, name) is None:
                    raise
            else:
                if backend == VAST_LOCAL:
                    self._local.setdefault((account, name), "")
                return await self.get(account, name), True
        if not exist_ok:
            raise AlreadyExists(f"volume {name!r} already exists")
        info = await self.get(account, name)
        if requested and info.backend != requested:
            raise FailedPrecondition(f"volume {name!r} exists as a {info.backend} volume, not {backend}")
        return info, False

    def _portable(self, account: str, name: str) -> None:
        """Refuses file calls on a vast_local volume: its files are on its host."""
        if (account, name) in self._local:
            host = self._local[(account, name)]
            where = f"host {host!r}" if host else "the host that first mounts it"
            raise FailedPrecondition(
                f"volume {name!r} is a vast_local volume: its files live on {where}, not on the control plane; "
                "read and write them from a function that mounts it"
            )

    def local_volume(self, account: str, refs: Sequence[str]) -> str | None:
        """The vast_local volume among a function's mounts, if any."""
        for name, _ in map(split_mount_ref, refs):
            if (account, name) in self._local:
                return name
        return None

    def host_for(self, account: str, spec: FunctionSpecRecord) -> str | None:
        """The host a function must run on: its vast_local volume's, once pinned."""
        name = self.local_volume(account, spec.volumes)
        return (self._local.get((account, name)) or None) if name else None

    def placed(self, account: str, spec: FunctionSpecRecord, host: str) -> None:
        """A container of ``spec`` was placed on ``host``: its vast_local volume lives there now."""
        name = self.local_volume(account, spec.volumes)
        if name and host:
            self.pin(account, name, host)

    def pinned_host(self, account: str, name: str) -> str:
        """The host a vast_local volume lives on ("" while it is not pinned)."""
        return self._local.get((account, name), "")

    def pin(self, account: str, name: str, host: str) -> None:
        """Pins a vast_local volume to the host its first container runs on."""
        if self._local.get((account, name), None) != "":
            return
        self._local[(account, name)] = host
        log.info("vast_local volume %s of %s now lives on host %s", name, account, host)
        task = asyncio.create_task(self.store.pin_volume(account, name, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_mounts(self, account: str, function: str, refs: Sequence[str]) -> None:
        """Checks that every volume a function mounts exists (at deploy), and that no two
        share a mount path.

        Raises:
            NotFound: a mounted volume does not exist; the message names it.
            InvalidArgument: two volumes share a mount path.
        """
        paths: set[str] = set()
        local: list[str] = []
        for name, path in map(split_mount_ref, refs):
            if path in paths:
                raise InvalidArgument(f"function {function!r} mounts two volumes at {path!r}")
            paths.add(path)
            row = await self.store.get_volume(account, name)
            if row is None:
                raise NotFound(
                    f"function {function!r} mounts volume {name!r}, which does not exist; "
                    f"create it with `apothic volume create {name}`"
                )
            if row.backend == VAST_LOCAL:
                local.append(name)
        if len(local) > 1:
            raise InvalidArgument(
                f"function {function!r} mounts {len(local)} vast_local volumes ({', '.join(local)}): each pins the "
                "function to the host it lives on, so a function may mount one; make the others portable"
            )

    async def get(self, account: str, name: str) -> VolumeInfo:
        """One volume.

        Raises:
            InvalidArgument: bad name.
            NotFound: no such volume.
        """
        return _info(await self._volume(account, name))

    async def list(self, account: str) -> list[VolumeInfo]:
        """An account's volumes, by name."""
        return [_info(row) for row in await self.store.list_volumes(account)]

    async def delete(self, account: str, name: str) -> None:
        """Deletes a volume and its files.

        Raises:
            InvalidArgument: bad name.
            NotFound: no such volume.
        """
        await self._volume(account, name)
        await self._collect(await self.store.delete_volume(account, name))
        self._local.pop((account, name), None)

    async def list_files(
        self, account: str, name: str, path: str, *, recursive: bool
    ) -> tuple[builtins.list[FileEntry], int]:
        """The entries under a directory (or the one file at ``path``), and the version read.

        Raises:
            InvalidArgument: bad name or path.
            NotFound: no such volume, or nothing at ``path``.
        """
        prefix = normalize_path(path, allow_root=True)
        volume = await self._volume(account, name)
        self._portable(account, name)
        rows = await self.store.list_volume_files(account, name, prefix)
        if prefix and not rows:
            raise NotFound(f"volume {name!r} has no file or directory {prefix!r}")
        if len(rows) == 1 and rows[0].path == prefix:
            return [_entry(rows[0])], volume.version
        if recursive:
            return [_entry(r) for r in rows], volume.version
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, FileEntry] = {}
        for row in rows:
            rest = row.path[len(base) :]
            child, sep, _ = rest.partition("/")
            if sep:
                entries.setdefault(base + child, FileEntry(path=base + child, is_dir=True))
            else:
                entries[row.path] = _entry(row)
        return [entries[k] for k in sorted(entries)], volume.version

    async def put_file(self, account: str, name: str, path: str, content: bytes) -> tuple[FileEntry, int]:
        """Writes one file (replacing any at that path) and bumps the volume's version.

        Returns:
            The file and the volume's version once the write committed.

        Raises:
            InvalidArgument: bad name or path, or the path is a directory or under a file.
            NotFound: no such volume.
            ResourceExhausted: the content is over :data:`MAX_FILE_BYTES`.
        """
        path = normalize_path(path)
        validate_name("volume", name)
        if len(content) > MAX_FILE_BYTES:
            raise ResourceExhausted(
                f"file {path!r} is {len(content):,} bytes; a volume file holds at most {MAX_FILE_BYTES:,}"
            )
        await self._volume(account, name)
        self._portable(account, name)
        if any(r.path != path for r in await self.store.list_volume_files(account, name, path)):
            raise InvalidArgument(f"volume path {path!r} is a directory of volume {name!r}; name a file")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if await self.store.get_volume_file(account, name, parent) is not None:
                raise InvalidArgument(f"volume path {path!r} is under {parent!r}, a file of volume {name!r}")
        sha = hashlib.sha256(content).hexdigest()
        row = FileRow(path=path, sha256=sha, size=len(content), mtime=utcnow())
        previous = await self.store.get_volume_file(account, name, path)
        with self._pin(sha):
            await asyncio.to_thread(self._write_blob, sha, content)
            try:
                await self.store.put_volume_file(account, name, row)
            except StoreWriteError as exc:
                raise self._gone(name, exc) from None
        if previous is not None and previous.sha256 != sha:
            await self._collect([previous.sha256])
        version = (await self._volume(account, name)).version
        return _entry(row), version

    async def get_file(self, account: str, name: str, path: str) -> tuple[FileEntry, bytes]:
        """One file and its content.

        Raises:
            InvalidArgument: bad name or path.
            NotFound: no such volume or file.
        """
        path = normalize_path(path)
        await self._volume(account, name)
        self._portable(account, name)
        row = await self.store.get_volume_file(account, name, path)
        if row is None:
            raise NotFound(f"volume {name!r} has no file {path!r}")
        try:
            content = await asyncio.to_thread((self.blob_dir / row.sha256).read_bytes)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"the content of {path!r} in volume {name!r} is missing from {self.blob_dir}; "
                "was the state directory changed? Put the file again"
            ) from None
        return _entry(row), content

    async def remove_file(self, account: str, name: str, path: str, *, recursive: bool) -> tuple[int, int]:
        """Removes a file, or every file under a directory with ``recursive``.

        Returns:
            How many files were removed, and the volume's version after the change.

        Raises:
            InvalidArgument: bad name or path.
            NotFound: no such volume, or nothing at ``path``.
            FailedPrecondition: ``path`` is a directory and ``recursive`` is false.
        """
        prefix = normalize_path(path, allow_root=recursive)
        await self._volume(account, name)
        self._portable(account, name)
        rows = await self.store.list_volume_files(account, name, prefix)
        if not rows:
            raise NotFound(f"volume {name!r} has no file or directory {prefix!r}")
        if not (len(rows) == 1 and rows[0].path == prefix) and not recursive:
            raise FailedPrecondition(
                f"{prefix!r} is a directory of volume {name!r}; pass recursive=True (--recursive) to remove it"
            )
        try:
            await self.store.remove_volume_files(account, name, [r.path for r in rows], utcnow())
        except StoreWriteError as exc:
            raise self._gone(name, exc) from None
        await self._collect(sorted({r.sha256 for r in rows}))
        return len(rows), (await self._volume(account, name)).version

    # -- blobs ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _pin(self, sha: str) -> Iterator[None]:
        """Keeps ``sha``'s blob from being collected until the write naming it committed."""
        self._pinned[sha] += 1
        self._pin_serial += 1
        try:
            yield
        finally:
            self._pinned[sha] -= 1
            if not self._pinned[sha]:
                del self._pinned[sha]

    def _write_blob(self, sha: str, content: bytes) -> None:
        path = self.blob_dir / sha
        if path.exists():
            return  # same content, already stored
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{sha}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    async def _collect(self, shas: builtins.list[str]) -> None:
        """Deletes the blobs no file names any more."""
        for sha in shas:
            serial = self._pin_serial
            if sha in self._pinned or await self.store.blob_referenced(sha):
                continue
            # A put of this content that started during the query may have committed by
            # now: skip. No await between this check and the unlink.
            if sha not in self._pinned and self._pin_serial == serial:
                with contextlib.suppress(FileNotFoundError):
                    (self.blob_dir / sha).unlink()

    @staticmethod
    def _gone(name: str, exc: StoreWriteError) -> Exception:
        if VOLUME_GONE in str(exc):
            return NotFound(f"volume {name!r} was deleted during the change")
        return exc
