"""The store's plumbing: the SurrealDB connection and the group-commit writer.

Writes go through one group-commit writer: statements queued by concurrent callers are
flushed together in one transaction. ``commit`` waits until the caller's statements are
durable; ``write_behind`` queues them and returns at once (hot paths whose caller's
acknowledgement is something else, such as a result already delivered). The queries
themselves live in :mod:`apothic.server.store` and :mod:`apothic.server.store_primitives`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path
from typing import Any

from surrealdb import AsyncSurreal, RecordID

from apothic.server import cbor

log = logging.getLogger("apothic.server.store")

SCHEMA_PATH = Path(__file__).with_name("schema.surql")
NAMESPACE = "apothic"
DATABASE = "main"
MAX_BATCH = 512
_VAR_RE = re.compile(r"\$([A-Za-z_]\w*)")

Statement = tuple[str, dict[str, Any]]


def _key(object_id: str) -> str:
    return object_id.partition(":")[2]


def _rid(table: str, object_id: str) -> RecordID:
    return RecordID(table, _key(object_id))


def _upserts(rows: list[dict[str, Any]]) -> Statement:
    """Writes rows ``{"id": RecordID, "doc": {...}}`` whole (one statement; a plain UPSERT
    for one row, which SurrealDB runs faster than a one-pass FOR loop)."""
    if len(rows) == 1:
        return ("UPSERT $id CONTENT $doc RETURN NONE", {"id": rows[0]["id"], "doc": rows[0]["doc"]})
    return ("FOR $r IN $rows { UPSERT $r.id CONTENT $r.doc RETURN NONE; }", {"rows": rows})


def _deletes(ids: list[RecordID]) -> Statement:
    """Deletes records by id in one statement."""
    if len(ids) == 1:
        return ("DELETE $id RETURN NONE", {"id": ids[0]})
    return ("DELETE $ids RETURN NONE", {"ids": ids})


class StoreWriteError(RuntimeError):
    """A transaction failed; the message is the error of the statement that caused it."""


#: How SurrealDB reports the statements of a failed transaction that did not fail themselves.
_NOT_EXECUTED = "not executed due to a failed transaction"


async def _transact(db: Any, sql: str, params: dict[str, Any]) -> None:
    """Runs one transaction and raises the error of the statement that failed it.

    ``query()`` raises the first statement's error, which for a failed transaction is
    usually only "not executed due to a failed transaction"; the cause comes later.
    """
    response = await cbor.query_raw(db, sql, params)
    if response.get("error"):
        error = response["error"]
        raise StoreWriteError(str(error.get("message", error) if isinstance(error, dict) else error))
    failures = [str(r.get("result")) for r in response.get("result") or () if r.get("status") == "ERR"]
    if failures:
        raise StoreWriteError(next((f for f in failures if _NOT_EXECUTED not in f), failures[0]))


def _compose(statements: list[Statement]) -> tuple[str, dict[str, Any]]:
    """One transaction of many statements; each statement's ``$vars`` get a unique prefix."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for index, (sql, vars_) in enumerate(statements):
        prefix = f"s{index}_"

        def rename(match: re.Match[str], prefix: str = prefix) -> str:
            return f"${prefix}{match.group(1)}"

        parts.append(_VAR_RE.sub(rename, sql))
        params.update({prefix + k: v for k, v in vars_.items()})
    return "BEGIN TRANSACTION;\n" + ";\n".join(parts) + ";\nCOMMIT TRANSACTION;", params


_Pending = tuple[list[Statement], "asyncio.Future[None] | None"]


class _GroupCommitter:
    """Flushes queued statements in shared transactions, in the order they were queued."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="apothic-group-commit")

    async def stop(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain(self) -> None:
        """Waits until everything queued so far is flushed."""
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def submit(self, statements: list[Statement], future: asyncio.Future[None] | None) -> None:
        self._pending.append((statements, future))
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch: list[_Pending] = []
                    count = 0
                    while self._pending and (count < MAX_BATCH or not batch):
                        item = self._pending.pop(0)
                        batch.append(item)
                        count += len(item[0])
                    await self._flush(batch)
                self._idle.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug here must be loud
            log.exception("group committer died")
            raise

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await _transact(self._db, *_compose([stmt for statements, _ in batch for stmt in statements]))
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0][1], exc)
                return
            # One bad group must not fail its neighbours: retry each on its own.
            for statements, future in batch:
                try:
                    await _transact(self._db, *_compose(statements))
                except Exception as one_exc:
                    self._settle(future, one_exc)
                else:
                    self._settle(future, None)
            return
        for _, future in batch:
            self._settle(future, None)

    @staticmethod
    def _settle(future: asyncio.Future[None] | None, exc: BaseException | None) -> None:
        if future is None:
            if exc is not None:
                log.error("write-behind failed: %s", exc)
            return
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


class StoreBase:
    """A connection to SurrealDB with its group-commit writer (see :class:`Store`).

    Args:
        url: ``mem://``, ``surrealkv:///abs/path`` or ``ws://host:port``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Any = None
        self._committer: _GroupCommitter | None = None

    async def open(self) -> None:
        """Connects, selects the namespace and applies the schema."""
        cbor.install()
        self._db = AsyncSurreal(self.url)
        if hasattr(self._db, "connect"):
            await self._db.connect()
        await self._db.use(NAMESPACE, DATABASE)
        await self._db.query(SCHEMA_PATH.read_text())
        self._committer = _GroupCommitter(self._db)
        self._committer.start()

    async def close(self) -> None:
        """Flushes pending writes and disconnects."""
        if self._committer is not None:
            await self._committer.stop()
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.close()

    async def _q(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return await self._db.query(sql, params or {})

    async def commit(self, statements: list[Statement]) -> None:
        """Queues statements and waits until they are durable."""
        assert self._committer is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._committer.submit(statements, future)
        await future

    def write_behind(self, statements: list[Statement]) -> None:
        """Queues statements to commit soon; errors are logged."""
        assert self._committer is not None
        self._committer.submit(statements, None)

    async def drain(self) -> None:
        """Waits until all queued writes are flushed."""
        if self._committer is not None:
            await self._committer.drain()
