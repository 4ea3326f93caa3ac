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

from apothic.config import set_engine_threads, set_sync_commits
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


async def _transact(db: Any, sql: str, params: dict[str, Any]) -> list[Any]:
    """Runs one transaction and returns each statement's result, or raises the error of the
    statement that failed it.

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
    return [r.get("result") for r in response.get("result") or ()]


#: Renamed SQL of each (statement text, position): composing a transaction of many
#: statements renames every ``$var``, and the same few statement texts recur.
_RENAMED: dict[tuple[str, int], str] = {}
_RENAMED_MAX = 4096


def _renamed(sql: str, index: int) -> str:
    key = (sql, index)
    found = _RENAMED.get(key)
    if found is None:
        prefix = f"s{index}_"
        found = _VAR_RE.sub(lambda m: f"${prefix}{m.group(1)}", sql)
        if len(_RENAMED) >= _RENAMED_MAX:
            _RENAMED.clear()
        _RENAMED[key] = found
    return found


def _compose(statements: list[Statement]) -> tuple[str, dict[str, Any]]:
    """One transaction of many statements; each statement's ``$vars`` get a unique prefix."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for index, (sql, vars_) in enumerate(statements):
        parts.append(_renamed(sql, index))
        prefix = f"s{index}_"
        for k, v in vars_.items():
            params[prefix + k] = v
    return "BEGIN TRANSACTION;\n" + ";\n".join(parts) + ";\nCOMMIT TRANSACTION;", params


class WriteSet:
    """Writes that several operations add to until the group committer takes them.

    Operations on one hot object (a queue, a dict) add their changes to its open write set
    and wait on :attr:`future`; when the committer takes the set for a transaction it calls
    :meth:`render` once, so the changes of every operation in it become a few statements
    (each row written once, with its latest state) instead of a few per operation. Once
    :attr:`taken`, a set is closed: later operations open a new one.
    """

    def __init__(self, after: WriteSet | None = None, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # ``loop``: the running loop, when the caller has it (asking costs a system call).
        self.future: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        self.taken = False
        #: The set this one was planned on top of: when it fails, this one must not commit
        #: (its statements assume that one's), and fails with :meth:`chain_error` instead.
        self.after = after

    def render(self) -> list[Statement]:
        """The statements of everything added so far (called once, when taken)."""
        raise NotImplementedError

    def chain_error(self, cause: BaseException) -> BaseException:
        """The error this set fails with when the set it was planned on failed."""
        return cause

    def broken(self) -> BaseException | None:
        """The error to fail with, without running, when the set before it failed."""
        after = self.after
        if after is None or not after.future.done():
            return None
        if after.future.cancelled():
            return self.chain_error(asyncio.CancelledError())
        cause = after.future.exception()
        return None if cause is None else self.chain_error(cause)


_Pending = tuple["list[Statement] | WriteSet", "asyncio.Future[None] | None"]
_Batched = tuple[list[Statement], "asyncio.Future[None] | None", "WriteSet | None"]


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

    def submit(self, statements: list[Statement] | WriteSet, future: asyncio.Future[None] | None) -> None:
        self._pending.append((statements, future))
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch: list[_Batched] = []
                    count = 0
                    pending = self._pending
                    taken = 0
                    while taken < len(pending) and (count < MAX_BATCH or not batch):
                        what, future = pending[taken]
                        taken += 1
                        if isinstance(what, WriteSet):
                            what.taken = True
                            error = what.broken()
                            if error is not None:
                                self._settle(future, error)
                                continue
                            try:
                                statements = what.render()
                            except Exception as exc:  # pragma: no cover - a bug in a renderer
                                log.exception("rendering a write set failed")
                                self._settle(future, exc)
                                continue
                        else:
                            statements = what
                        batch.append((statements, future, what if isinstance(what, WriteSet) else None))
                        count += len(statements)
                    del pending[:taken]
                    if count:
                        await self._flush(batch)
                    else:
                        for _, future, _ in batch:
                            self._settle(future, None)
                self._idle.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug here must be loud
            log.exception("group committer died")
            raise

    async def _flush(self, batch: list[_Batched]) -> None:
        try:
            await _transact(self._db, *_compose([stmt for statements, _, _ in batch for stmt in statements]))
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0][1], exc)
                return
            # One bad group must not fail its neighbours: retry each on its own (a write set
            # planned on one that failed fails with it).
            for statements, future, write_set in batch:
                error = write_set.broken() if write_set is not None else None
                if error is not None:
                    self._settle(future, error)
                    continue
                if not statements:
                    self._settle(future, None)
                    continue
                try:
                    await _transact(self._db, *_compose(statements))
                except Exception as one_exc:
                    self._settle(future, one_exc)
                else:
                    self._settle(future, None)
            return
        for _, future, _ in batch:
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
        engine_threads: worker threads of the embedded engine's async runtime (see
            :attr:`apothic.server.settings.ServerSettings.engine_threads`); 0: its default.
        sync_commits: whether an embedded on-disk engine fsyncs each commit (see
            :attr:`apothic.server.settings.ServerSettings.sync_commits`).
    """

    def __init__(self, url: str, *, engine_threads: int = 1, sync_commits: bool = True) -> None:
        self.url = url
        self.engine_threads = engine_threads
        self.sync_commits = sync_commits
        self._db: Any = None
        self._committer: _GroupCommitter | None = None
        #: The loop the store was opened on (and runs its writes on).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Connects, selects the namespace and applies the schema."""
        cbor.install()
        self.loop = asyncio.get_running_loop()
        if not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            set_engine_threads(self.engine_threads)
            set_sync_commits(self.sync_commits)
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

    async def _read_together(self, statements: list[Statement]) -> list[Any]:
        """Runs read-only statements in one transaction (one snapshot of the database) and
        returns each one's result. Values come back as plain CBOR decodes them: record ids
        and datetimes stay CBOR tags, so select neither."""
        return await _transact(self._db, *_compose(statements))

    async def commit(self, statements: list[Statement]) -> None:
        """Queues statements and waits until they are durable."""
        assert self._committer is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._committer.submit(statements, future)
        await future

    def submit_write_set(self, write_set: WriteSet) -> None:
        """Queues a write set: rendered and committed when its turn comes; its future
        settles once it committed (or failed)."""
        assert self._committer is not None
        self._committer.submit(write_set, write_set.future)

    def write_behind(self, statements: list[Statement]) -> None:
        """Queues statements to commit soon; errors are logged."""
        assert self._committer is not None
        self._committer.submit(statements, None)

    async def drain(self) -> None:
        """Waits until all queued writes are flushed."""
        if self._committer is not None:
            await self._committer.drain()
