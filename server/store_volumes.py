"""The store's queries for volumes (part of :class:`apothic.server.store.Store`).

A volume is one ``volume`` record ([account, name]) with a ``version``; each of its files is
one ``volume_file`` record ([account, volume, path]) naming its content by SHA-256. Every
change to a volume's files bumps its version in the same transaction, and fails when the
volume was deleted meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from surrealdb import RecordID

from apothic.server.store_base import Statement, StoreBase

#: Error text of a change to a volume that no longer exists (see ``_guard``).
VOLUME_GONE = "volume no longer exists"


@dataclass(frozen=True)
class VolumeRow:
    """A stored volume with its file count and total size."""

    account: str
    name: str
    version: int
    created_at: datetime
    updated_at: datetime
    file_count: int = 0
    total_bytes: int = 0
    #: ``portable`` or ``vast_local``.
    backend: str = "portable"
    #: The host a vast_local volume lives on ("" until first mounted).
    pinned_host: str = ""


@dataclass(frozen=True)
class FileRow:
    """A stored file: where it is and which content it has."""

    path: str
    sha256: str
    size: int
    mtime: datetime


def _volume(doc: dict[str, Any], count: int = 0, total: int = 0) -> VolumeRow:
    return VolumeRow(
        account=doc["account"],
        name=doc["name"],
        version=int(doc["version"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        file_count=count,
        total_bytes=total,
        backend=doc.get("backend") or "portable",
        pinned_host=doc.get("pinned_host") or "",
    )


def _file(doc: dict[str, Any]) -> FileRow:
    return FileRow(path=doc["path"], sha256=doc["sha256"], size=int(doc["size"]), mtime=doc["mtime"])


def _vid(account: str, name: str) -> RecordID:
    return RecordID("volume", [account, name])


def _fid(account: str, volume: str, path: str) -> RecordID:
    return RecordID("volume_file", [account, volume, path])


def _guard(account: str, name: str) -> Statement:
    return (
        "IF $v.version = NONE { THROW $msg }",
        {"v": _vid(account, name), "msg": f"{VOLUME_GONE}: {name}"},
    )


def _bump(account: str, name: str, now: datetime) -> Statement:
    return ("UPDATE $v SET version += 1, updated_at = $now RETURN NONE", {"v": _vid(account, name), "now": now})


class VolumeStore(StoreBase):
    """Volume and file rows; :class:`apothic.server.store.Store` adds everything else."""

    async def _volume_stats(self, account: str, names: list[str]) -> dict[str, tuple[int, int]]:
        # `$names CONTAINS volume`, not `volume IN $names`: with the (account, volume, path)
        # index, the embedded engine (3.0.0b10) answers the IN form with no rows once $names
        # holds more than one name.
        docs = await self._q(
            "SELECT volume, count() AS n, math::sum(size) AS total FROM volume_file "
            "WHERE account = $account AND $names CONTAINS volume GROUP BY volume",
            {"account": account, "names": names},
        )
        return {d["volume"]: (int(d["n"]), int(d["total"] or 0)) for d in docs or ()}

    async def get_volume(self, account: str, name: str) -> VolumeRow | None:
        """One volume of an account with its file count and size, or None."""
        doc = await self._q("SELECT * FROM ONLY $id", {"id": _vid(account, name)})
        if not doc:
            return None
        count, total = (await self._volume_stats(account, [name])).get(name, (0, 0))
        return _volume(doc, count, total)

    async def list_volumes(self, account: str) -> list[VolumeRow]:
        """An account's volumes, by name."""
        docs = await self._q("SELECT * FROM volume WHERE account = $account ORDER BY name", {"account": account})
        docs = list(docs or ())
        stats = await self._volume_stats(account, [d["name"] for d in docs]) if docs else {}
        return [_volume(d, *stats.get(d["name"], (0, 0))) for d in docs]

    async def create_volume(self, account: str, name: str, now: datetime, backend: str = "portable") -> None:
        """Creates a volume at version 0; the write fails when it already exists."""
        doc: dict[str, Any] = {"account": account, "name": name, "version": 0, "created_at": now, "updated_at": now}
        if backend != "portable":
            doc["backend"] = backend
        await self.commit([("CREATE $id CONTENT $doc RETURN NONE", {"id": _vid(account, name), "doc": doc})])

    async def local_volumes(self) -> list[VolumeRow]:
        """Every vast_local volume of every account (the placement map is built from them)."""
        docs = await self._q("SELECT * FROM volume WHERE backend = 'vast_local'")
        return [_volume(d) for d in docs or ()]

    async def pin_volume(self, account: str, name: str, host: str) -> None:
        """Pins a vast_local volume to a host, unless it is pinned already."""
        await self.commit(
            [
                (
                    "UPDATE $id SET pinned_host = $host WHERE pinned_host = NONE RETURN NONE",
                    {"id": _vid(account, name), "host": host},
                )
            ]
        )

    async def delete_volume(self, account: str, name: str) -> list[str]:
        """Deletes a volume and its files; returns the content hashes its files named."""
        shas = await self._q(
            "SELECT VALUE sha256 FROM volume_file WHERE account = $account AND volume = $name",
            {"account": account, "name": name},
        )
        await self.commit(
            [
                (
                    "DELETE volume_file WHERE account = $account AND volume = $name RETURN NONE",
                    {"account": account, "name": name},
                ),
                ("DELETE $id RETURN NONE", {"id": _vid(account, name)}),
            ]
        )
        return sorted(set(shas or ()))

    async def list_volume_files(self, account: str, volume: str, prefix: str) -> list[FileRow]:
        """The files at ``prefix`` or under it (all of them for ``""``), by path."""
        params = {"account": account, "volume": volume, "path": prefix, "dir": prefix + "/"}
        where = "account = $account AND volume = $volume"
        if prefix:
            where += " AND (path = $path OR string::starts_with(path, $dir))"
        docs = await self._q(f"SELECT * FROM volume_file WHERE {where} ORDER BY path", params)
        return [_file(d) for d in docs or ()]

    async def get_volume_file(self, account: str, volume: str, path: str) -> FileRow | None:
        """One file of a volume, or None."""
        doc = await self._q("SELECT * FROM ONLY $id", {"id": _fid(account, volume, path)})
        return _file(doc) if doc else None

    async def put_volume_file(self, account: str, volume: str, row: FileRow) -> None:
        """Writes one file and bumps the volume's version.

        Raises:
            StoreWriteError: the volume no longer exists (the message has ``VOLUME_GONE``).
        """
        doc = {
            "account": account,
            "volume": volume,
            "path": row.path,
            "sha256": row.sha256,
            "size": row.size,
            "mtime": row.mtime,
        }
        await self.commit(
            [
                _guard(account, volume),
                ("UPSERT $id CONTENT $doc RETURN NONE", {"id": _fid(account, volume, row.path), "doc": doc}),
                _bump(account, volume, row.mtime),
            ]
        )

    async def remove_volume_files(self, account: str, volume: str, paths: list[str], now: datetime) -> None:
        """Removes files and bumps the volume's version.

        Raises:
            StoreWriteError: the volume no longer exists (the message has ``VOLUME_GONE``).
        """
        ids = [_fid(account, volume, p) for p in paths]
        await self.commit(
            [_guard(account, volume), ("DELETE $ids RETURN NONE", {"ids": ids}), _bump(account, volume, now)]
        )

    async def blob_referenced(self, sha256: str) -> bool:
        """Whether any file of any volume names this content."""
        docs = await self._q("SELECT VALUE id FROM volume_file WHERE sha256 = $sha LIMIT 1", {"sha": sha256})
        return bool(docs)
