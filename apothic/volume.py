"""Volumes: named trees of files kept by the control plane, per account.

``Volume.from_name("data")`` is a handle on a volume (created on first use unless
``create_if_missing=False``). Files go in with :meth:`Volume.put_file` and come back with
:meth:`Volume.read_file`; :meth:`Volume.listdir` lists a directory and
:meth:`Volume.remove_file` removes files. Paths are relative to the volume's root and
'/'-separated; absolute paths and ``..`` are refused. A file holds at most 32 MiB.

Every committed change bumps the volume's ``version`` (see :meth:`Volume.info`). The
control plane stores each distinct content once.

Mounting: ``@app.function(volumes={"/data": vol})`` (or ``volumes=[vol.mounted_at("/data")]``)
downloads the volume's files into ``/data`` when a container starts. Inside the function,
:meth:`Volume.commit` uploads the files that changed since the last sync (new, changed and
deleted ones) and :meth:`Volume.reload` brings in the files that changed remotely; the
container commits once more when it stops (not when it is killed or crashes). Concurrent
commits from several containers are applied file by file: the last writer of a file wins.
With the process executor the mount path is a directory on the worker's machine: the
worker must be able to create it, containers on one machine that mount at the same path
share that directory, and files already in it are kept (the next commit uploads them).

Example::

    vol = apothic.Volume.from_name("models")
    vol.put_file("weights.bin", "v1/weights.bin")
    assert vol.read_file("v1/weights.bin") == Path("weights.bin").read_bytes()
    print([e.path for e in vol.listdir("v1")])
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apothic._files import files_under
from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, NotFoundError, UsageError

if TYPE_CHECKING:
    from apothic.cloud_bucket import CloudBucketMount
    from apothic.secret import Secret

__all__ = ["FileEntry", "Volume", "VolumeInfo"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


#: Where a volume's files live: the control plane, or the host that first mounts it.
BACKENDS = ("portable", "vast_local")


@dataclass(frozen=True)
class VolumeInfo:
    """A volume's state.

    Attributes:
        name: the volume's name.
        version: bumped by every committed change to its files; starts at 0.
        file_count: how many files it holds.
        total_bytes: the sum of its files' sizes.
        created_at: when it was created.
        updated_at: when its files last changed.
        backend: ``portable`` (files kept by the control plane) or ``vast_local`` (files kept
            on the disk of the host that first mounts it).
        pinned_host: the host a vast_local volume lives on ("" until first mounted).
    """

    name: str
    version: int
    file_count: int
    total_bytes: int
    created_at: datetime | None
    updated_at: datetime | None
    backend: str = "portable"
    pinned_host: str = ""


@dataclass(frozen=True)
class FileEntry:
    """One entry of :meth:`Volume.listdir`: a file, or a directory.

    Attributes:
        path: relative to the volume's root, '/'-separated.
        is_dir: whether it is a directory (then ``size``, ``sha256`` and ``mtime`` are unset).
        size: the file's size in bytes.
        sha256: hex SHA-256 of the file's content.
        mtime: when the file was last written.
    """

    path: str
    is_dir: bool
    size: int = 0
    sha256: str = ""
    mtime: datetime | None = None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidConfigError(
            f"volume name {name!r} is invalid: use 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def _check_mount_path(path: object) -> str | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
        raise InvalidConfigError(f"mount path {path!r} is invalid: give a normalized absolute path such as '/data'")
    return path


async def _content(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return await asyncio.to_thread(Path(source).read_bytes)
    raise InvalidConfigError(f"put_file takes a local path or bytes, got {type(source).__name__}")


class _VolumeAio:
    """The async forms of :class:`Volume`'s methods (``await vol.aio.read_file(...)``…)."""

    def __init__(self, vol: Volume) -> None:
        self._vol = vol

    async def _client(self) -> Any:
        vol = self._vol
        client = get_client(vol._config)
        if vol._create_if_missing and not vol._hydrated:
            await client.create_volume(vol.name, exist_ok=True)
            vol._hydrated = True
        return client

    async def info(self) -> VolumeInfo:
        """Returns the volume's state (see :meth:`Volume.info`)."""
        return await (await self._client()).get_volume(self._vol.name)  # type: ignore[no-any-return]

    async def put_file(
        self, local_path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview, remote_path: str
    ) -> FileEntry:
        """Writes one file (see :meth:`Volume.put_file`)."""
        content = await _content(local_path_or_bytes)
        entry, _ = await (await self._client()).put_volume_file(self._vol.name, remote_path, content)
        return entry  # type: ignore[no-any-return]

    async def read_file(self, path: str) -> bytes:
        """Returns one file's content (see :meth:`Volume.read_file`)."""
        return await (await self._client()).get_volume_file(self._vol.name, path)  # type: ignore[no-any-return]

    async def listdir(self, path: str = "", recursive: bool = False) -> list[FileEntry]:
        """Lists a directory (see :meth:`Volume.listdir`)."""
        client = await self._client()
        return await client.list_volume_files(self._vol.name, path, recursive=recursive)  # type: ignore[no-any-return]

    async def remove_file(self, path: str, recursive: bool = False) -> int:
        """Removes a file or a directory's files (see :meth:`Volume.remove_file`)."""
        client = await self._client()
        return await client.remove_volume_file(self._vol.name, path, recursive=recursive)  # type: ignore[no-any-return]

    async def commit(self) -> int:
        """Uploads the mount path's changes (see :meth:`Volume.commit`)."""
        mount = _mount_of(self._vol.name)
        return await mount.upload(self._vol._config)

    async def reload(self) -> int:
        """Brings the mount path up to date (see :meth:`Volume.reload`)."""
        mount = _mount_of(self._vol.name)
        return await mount.download(self._vol._config)


class _CreateVolume:
    """``Volume.create(name)``; ``await Volume.create.aio(name)`` is the async form."""

    async def aio(
        self,
        name: str,
        *,
        exist_ok: bool = False,
        backend: str | None = None,
        client: ClientConfig | None = None,
    ) -> VolumeInfo:
        """Creates an empty volume.

        Args:
            name: 1-63 letters, digits, ``-`` or ``_``, starting with a letter or digit.
            exist_ok: return the existing volume instead of failing.
            backend: ``portable`` (the default: the control plane keeps the files; containers
                download them and ``commit()`` uploads changes) or ``vast_local`` (the files stay
                on the disk of the host whose worker first mounts it, and every later container
                of a function that mounts it runs on that host; a function mounts at most one).
                With ``exist_ok`` and no backend, an existing volume of either kind is returned.
            client: the control plane to use (the configured one when None).

        Returns:
            The volume.

        Raises:
            InvalidConfigError: a bad name or backend (checked before anything is sent).
            AlreadyExistsError: the volume exists and ``exist_ok`` is false.
            FailedPreconditionError: it exists with another backend.
        """
        if backend is not None and backend not in BACKENDS:
            raise InvalidConfigError(f"volume backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        info, _ = await get_client(client).create_volume(_check_name(name), exist_ok=exist_ok, backend=backend or "")
        return info  # type: ignore[no-any-return]

    def __call__(
        self,
        name: str,
        *,
        exist_ok: bool = False,
        backend: str | None = None,
        client: ClientConfig | None = None,
    ) -> VolumeInfo:
        """Creates an empty volume (see :meth:`aio`)."""
        return run_sync(
            self.aio(name, exist_ok=exist_ok, backend=backend, client=client),
            "Volume.create()",
            async_form="await Volume.create.aio(...)",
        )


class _DeleteVolume:
    """``Volume.delete(name)``; ``await Volume.delete.aio(name)`` is the async form."""

    async def aio(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a volume and all its files.

        Args:
            name: the volume's name.
            client: the control plane to use (the configured one when None).

        Raises:
            NotFoundError: no such volume.
        """
        await get_client(client).delete_volume(_check_name(name))

    def __call__(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a volume and all its files (see :meth:`aio`)."""
        run_sync(self.aio(name, client=client), "Volume.delete()", async_form="await Volume.delete.aio(...)")


class _ListVolumes:
    """``Volume.list()``; ``await Volume.list.aio()`` is the async form."""

    async def aio(self, *, client: ClientConfig | None = None) -> list[VolumeInfo]:
        """Lists this account's volumes by name.

        Args:
            client: the control plane to use (the configured one when None).
        """
        return await get_client(client).list_volumes()  # type: ignore[no-any-return]

    def __call__(self, *, client: ClientConfig | None = None) -> list[VolumeInfo]:
        """Lists this account's volumes by name (see :meth:`aio`)."""
        return run_sync(self.aio(client=client), "Volume.list()", async_form="await Volume.list.aio()")


class Volume:
    """A named volume of files kept by the control plane. Get one with :meth:`from_name`.

    Every blocking method has an async form on ``.aio`` (``await vol.aio.read_file(...)``).
    ``Volume.create(name)``, ``Volume.delete(name)`` and ``Volume.list()`` manage volumes by
    name.

    Attributes:
        name: the volume's name.
    """

    #: ``Volume.create(name, exist_ok=False)``: creates an empty volume.
    create = _CreateVolume()
    #: ``Volume.delete(name)``: deletes a volume and its files.
    delete = _DeleteVolume()
    #: ``Volume.list()``: the account's volumes.
    list = _ListVolumes()

    def __init__(
        self,
        name: str,
        *,
        create_if_missing: bool = True,
        mount_path_default: str | None = None,
        client: ClientConfig | None = None,
    ) -> None:
        self.name = _check_name(name)
        self._create_if_missing = create_if_missing
        self._mount_path_default = _check_mount_path(mount_path_default)
        self._config = client
        self._hydrated = False
        self.aio = _VolumeAio(self)

    @staticmethod
    def cloud(
        bucket_name: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        secret: Secret | None = None,
        read_only: bool = False,
        mount_path_default: str | None = None,
    ) -> CloudBucketMount:
        """A volume whose files live in an S3-compatible bucket instead of on the control
        plane: the same as :class:`apothic.CloudBucketMount` (files under ``prefix`` appear at
        the mount path; what a call writes there reaches the bucket before its result).

        Example::

            data = apothic.Volume.cloud("datasets", endpoint_url="http://minio:9000",
                                        secret=apothic.Secret.from_name("s3"))

            @app.function(volumes={"/data": data})
            def train(): ...

        Raises:
            InvalidConfigError: a bad bucket name, endpoint or prefix.
        """
        from apothic.cloud_bucket import CloudBucketMount

        return CloudBucketMount(
            bucket_name,
            endpoint_url=endpoint_url,
            prefix=prefix,
            secret=secret,
            read_only=read_only,
            mount_path=mount_path_default,
        )

    @classmethod
    def from_name(
        cls,
        name: str,
        create_if_missing: bool = True,
        *,
        mount_path_default: str | None = None,
        client: ClientConfig | None = None,
    ) -> Volume:
        """A handle on the named volume; nothing is sent until its first use.

        Args:
            name: 1-63 letters, digits, ``-`` or ``_``, starting with a letter or digit.
            create_if_missing: create the volume on first use when it does not exist;
                otherwise calls on a missing volume raise ``NotFoundError``.
            mount_path_default: the absolute directory the volume appears at in functions
                that list it in ``volumes=[...]`` (see :meth:`mounted_at`).
            client: the control plane to use (the configured one when None).

        Raises:
            InvalidConfigError: a bad name or mount path (checked before anything is sent).
        """
        return cls(name, create_if_missing=create_if_missing, mount_path_default=mount_path_default, client=client)

    @property
    def mount_path_default(self) -> str | None:
        """The absolute path given as ``mount_path_default``, if any."""
        return self._mount_path_default

    def __repr__(self) -> str:
        return f"Volume({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Volume):
            return NotImplemented
        return self.name == other.name and self._config == other._config

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self) -> tuple[object, ...]:
        # A function shipped by value may hold a Volume: its pickle must not carry the
        # client configuration (an API key); the copy uses the configuration where it lands.
        return (_unpickled, (self.name, self._create_if_missing, self._mount_path_default))

    def mounted_at(self, path: str) -> Volume:
        """This volume, to be mounted at ``path`` (``@app.function(volumes=[vol.mounted_at("/data")])``).

        Args:
            path: a normalized absolute directory path.

        Raises:
            InvalidConfigError: the path is not a normalized absolute path.
        """
        return Volume(
            self.name, create_if_missing=self._create_if_missing, mount_path_default=path, client=self._config
        )

    def commit(self) -> int:
        """Uploads the changes made under this volume's mount path since the last sync: new
        and changed files are written, deleted ones removed. Only inside a function that
        mounts the volume.

        Returns:
            How many files were written or removed.

        Raises:
            UsageError: the volume is not mounted in this process.
        """
        return run_sync(self.aio.commit(), "volume.commit()")

    def reload(self) -> int:
        """Brings the mount path up to date with the volume: files changed or added remotely
        since the last sync are downloaded (overwriting local changes to them), files
        removed remotely are deleted. Only inside a function that mounts the volume.

        Returns:
            How many files were downloaded or deleted.

        Raises:
            UsageError: the volume is not mounted in this process.
        """
        return run_sync(self.aio.reload(), "volume.reload()")

    def info(self) -> VolumeInfo:
        """Returns the volume's state: version, file count, total size and times.

        Raises:
            NotFoundError: the volume does not exist (and ``create_if_missing`` is false).
        """
        return run_sync(self.aio.info(), "volume.info()")

    def put_file(
        self, local_path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview, remote_path: str
    ) -> FileEntry:
        """Writes one file, replacing any file at ``remote_path``, and bumps the version.

        Args:
            local_path_or_bytes: a local file to upload (``str`` or path-like), or the
                content itself (``bytes``).
            remote_path: where it goes, relative to the volume's root (``"a/b.txt"``).

        Returns:
            The file as stored.

        Raises:
            InvalidArgumentError: the path is absolute, climbs out with ``..``, is not
                normalized, or is a directory.
            ResourceExhaustedError: the content is over the per-file limit (32 MiB).
            NotFoundError: the volume does not exist (and ``create_if_missing`` is false).
            FileNotFoundError: the local file does not exist.
        """
        return run_sync(self.aio.put_file(local_path_or_bytes, remote_path), "volume.put_file()")

    def read_file(self, path: str) -> bytes:
        """Returns one file's content.

        Args:
            path: the file, relative to the volume's root.

        Raises:
            NotFoundError: no such file or volume.
            InvalidArgumentError: a bad path.
        """
        return run_sync(self.aio.read_file(path), "volume.read_file()")

    def listdir(self, path: str = "", recursive: bool = False) -> builtins.list[FileEntry]:
        """Lists a directory: its files and subdirectories, or with ``recursive`` every file
        below it. A path naming a file lists that file.

        Args:
            path: a directory relative to the volume's root (``""``: the root).
            recursive: every file below ``path`` instead of its direct children.

        Returns:
            Entries sorted by path.

        Raises:
            NotFoundError: no such volume, or nothing at ``path``.
            InvalidArgumentError: a bad path.
        """
        return run_sync(self.aio.listdir(path, recursive), "volume.listdir()")

    def remove_file(self, path: str, recursive: bool = False) -> int:
        """Removes a file, or every file under a directory with ``recursive``.

        Args:
            path: the file or directory, relative to the volume's root.
            recursive: allow removing a directory (``""`` with it empties the volume).

        Returns:
            How many files were removed.

        Raises:
            NotFoundError: no such volume, or nothing at ``path``.
            FailedPreconditionError: ``path`` is a directory and ``recursive`` is false.
        """
        return run_sync(self.aio.remove_file(path, recursive), "volume.remove_file()")


@dataclass
class _Mount:
    """A volume mounted in this container: its directory and, per file, the content hash
    as last downloaded or committed."""

    name: str
    root: Path
    synced: dict[str, str] = field(default_factory=dict)

    async def download(self, config: ClientConfig | None) -> int:
        client = get_client(config)
        entries = await client.list_volume_files(self.name, "", recursive=True)
        remote = {e.path: e.sha256 for e in entries if not e.is_dir}
        changed = 0
        for path in set(self.synced) - set(remote):
            (self.root / path).unlink(missing_ok=True)
            changed += 1
        for path, sha in remote.items():
            local = self.root / path
            if self.synced.get(path) == sha and local.is_file():
                continue
            content = await client.get_volume_file(self.name, path)
            local.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(local.write_bytes, content)
            changed += 1
        self.synced = remote
        return changed

    async def upload(self, config: ClientConfig | None) -> int:
        client = get_client(config)
        changed = 0
        local = files_under(self.root)
        for path, file in sorted(local.items()):
            content = await asyncio.to_thread(file.read_bytes)
            sha = hashlib.sha256(content).hexdigest()
            if self.synced.get(path) != sha:
                await client.put_volume_file(self.name, path, content)
                self.synced[path] = sha
                changed += 1
        for path in sorted(set(self.synced) - set(local)):
            try:
                await client.remove_volume_file(self.name, path, recursive=False)
            except NotFoundError:
                pass  # removed remotely too
            del self.synced[path]
            changed += 1
        return changed


#: The volumes mounted in this process (a container), by name.
@dataclass
class _LocalMount:
    """A vast_local volume in this container: a directory on this host's disk, so there is
    nothing to download or commit."""

    name: str
    root: Path

    async def download(self, config: ClientConfig | None) -> int:
        return 0

    async def upload(self, config: ClientConfig | None) -> int:
        return 0


_MOUNTS: dict[str, _Mount | _LocalMount] = {}


def _mount_of(name: str) -> _Mount | _LocalMount:
    mount = _MOUNTS.get(name)
    if mount is None:
        raise UsageError(
            f"volume {name!r} is not mounted here; mount it with @app.function(volumes={{'/path': vol}}) "
            "and call commit()/reload() inside that function"
        )
    return mount


def _mount_all(spec: dict[str, str]) -> None:
    """Mounts volumes, ``{mount path: volume name}`` (the container's start, before the
    user's code is imported): creates each directory and downloads the files."""
    for path, name in spec.items():
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        mount = _MOUNTS[name] = _Mount(name, root)
        run_sync(mount.download(None), "mount volumes")


def _link_local(spec: dict[str, str]) -> None:
    """Mounts vast_local volumes, ``{mount path: directory on this host}``: the mount path
    becomes a link to the directory (or already is it: a Docker bind mount).

    Raises:
        UsageError: the mount path exists as something else that is not empty.
    """
    for path, host_dir in spec.items():
        link, target = Path(path), Path(host_dir)
        target.mkdir(parents=True, exist_ok=True)
        _MOUNTS[target.name] = _LocalMount(target.name, link)
        for _ in range(3):  # another container of the function may be making the same link
            if link.is_symlink() and link.resolve() == target.resolve():
                break
            if link.exists() and (os.path.ismount(link) or link.resolve() == target.resolve()):
                break
            if link.is_symlink():
                link.unlink(missing_ok=True)
            elif link.is_dir() and not any(link.iterdir()):
                with contextlib.suppress(OSError):
                    link.rmdir()
            elif link.exists():
                raise UsageError(
                    f"vast_local volume {target.name!r} cannot be mounted at {path!r}: something that is not empty is "
                    "already there on this host; mount it at another path"
                )
            link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                link.symlink_to(target, target_is_directory=True)


def _commit_mounts() -> list[str]:
    """Commits every mounted volume (the container's exit); returns the errors."""
    errors = []
    for name, mount in _MOUNTS.items():
        try:
            run_sync(mount.upload(None), "commit volumes")
        except Exception as exc:  # noqa: BLE001 - reported, and the other volumes still commit
            errors.append(f"volume {name!r} could not be committed on exit: {type(exc).__name__}: {exc}")
    return errors


def _unpickled(name: str, create_if_missing: bool, mount_path_default: str | None) -> Volume:
    return Volume(name, create_if_missing=create_if_missing, mount_path_default=mount_path_default)
