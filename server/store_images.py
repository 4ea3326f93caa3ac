"""The store's queries for images (part of :class:`apothic.server.store.Store`).

Images are content-addressed: an ``image_build`` record ([image id, executor]) says the
image built on a worker of that executor kind, and the archives its steps name live in the
``archive`` table by SHA-256, beside the deployments' source archives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from surrealdb import RecordID

from apothic.server.store_base import Statement, StoreBase


class ImageStore(StoreBase):
    """Image build records and archives; :class:`apothic.server.store.Store` adds the rest."""

    async def save_archives(self, archives: dict[str, bytes]) -> None:
        """Stores content-addressed archives (those already stored are left alone)."""
        now = datetime.now(UTC)
        stmts: list[Statement] = [
            (
                "IF record::exists($id) == false { CREATE $id CONTENT $doc RETURN NONE }",
                {"id": RecordID("archive", sha), "doc": {"data": data, "created_at": now}},
            )
            for sha, data in archives.items()
        ]
        if stmts:
            await self.commit(stmts)

    async def stored_archives(self, shas: list[str]) -> set[str]:
        """Which of ``shas`` the archive table holds."""
        if not shas:
            return set()
        rows = await self._q(
            "SELECT VALUE meta::id(id) FROM $ids WHERE record::exists(id)",
            {"ids": [RecordID("archive", sha) for sha in shas]},
        )
        return {str(r) for r in rows or ()}

    async def image_builds(self, image_id: str) -> dict[str, dict[str, Any]]:
        """The recorded successful builds of an image, by executor kind."""
        rows = await self._q("SELECT * FROM image_build WHERE image_id = $image", {"image": image_id})
        return {r["executor"]: r for r in rows or ()}

    async def record_image_build(self, image_id: str, executor: str, seconds: float) -> None:
        """Records that an image built on a worker of ``executor`` kind."""
        doc = {"image_id": image_id, "executor": executor, "seconds": seconds, "built_at": datetime.now(UTC)}
        await self.commit(
            [("UPSERT $id CONTENT $doc RETURN NONE", {"id": RecordID("image_build", [image_id, executor]), "doc": doc})]
        )
