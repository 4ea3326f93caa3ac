"""The store's queries for secrets (part of :class:`apothic.server.store.Store`).

A secret is one ``secret`` record ([account, name]): its key names in the clear and its
values as one Fernet token (``sealed``); the store never sees a plaintext value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from surrealdb import RecordID

from apothic.server.store_base import StoreBase


@dataclass(frozen=True)
class SecretRow:
    """A stored secret. ``sealed`` is the encrypted JSON object of its values."""

    account: str
    name: str
    keys: tuple[str, ...]
    sealed: bytes
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:
        return f"SecretRow(account={self.account!r}, name={self.name!r}, keys={list(self.keys)!r})"


def _row(doc: dict[str, Any]) -> SecretRow:
    return SecretRow(
        account=doc["account"],
        name=doc["name"],
        keys=tuple(doc["keys"]),
        sealed=bytes(doc["sealed"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


class SecretStore(StoreBase):
    """Secret rows; :class:`apothic.server.store.Store` adds everything else."""

    async def get_secret(self, account: str, name: str) -> SecretRow | None:
        """One secret of an account, or None."""
        doc = await self._q("SELECT * FROM ONLY $id", {"id": RecordID("secret", [account, name])})
        return _row(doc) if doc else None

    async def list_secrets(self, account: str) -> list[SecretRow]:
        """An account's secrets, by name."""
        docs = await self._q("SELECT * FROM secret WHERE account = $account ORDER BY name", {"account": account})
        return [_row(d) for d in docs or ()]

    async def create_secret(self, row: SecretRow) -> None:
        """Creates a secret; the write fails when it already exists."""
        await self.commit([("CREATE $id CONTENT $doc RETURN NONE", {"id": _id(row), "doc": _doc(row)})])

    async def replace_secret(self, row: SecretRow) -> None:
        """Writes a secret whether or not it exists."""
        await self.commit([("UPSERT $id CONTENT $doc RETURN NONE", {"id": _id(row), "doc": _doc(row)})])

    async def delete_secret(self, account: str, name: str) -> bool:
        """Deletes a secret; returns whether it existed."""
        rows = await self._q("DELETE $id RETURN BEFORE", {"id": RecordID("secret", [account, name])})
        return bool(rows)


def _id(row: SecretRow) -> RecordID:
    return RecordID("secret", [row.account, row.name])


def _doc(row: SecretRow) -> dict[str, Any]:
    return {
        "account": row.account,
        "name": row.name,
        "keys": list(row.keys),
        "sealed": row.sealed,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
