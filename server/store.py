"""The Store: every SurrealQL query the control plane runs lives here.

Writes go through one group-commit writer: statements queued by concurrent callers are
flushed together in one transaction. ``commit`` waits until the caller's statements are
durable; ``write_behind`` queues them and returns at once (hot paths whose caller's
acknowledgement is something else, such as a result already delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from surrealdb import AsyncSurreal, RecordID

from apothic.server import cbor
from apothic.server.dicts import DictEntryRecord, DictLeaseRecord, DictRecord
from apothic.server.models import (
    DEPLOYMENT_LIVE,
    DEPLOYMENT_STOPPED,
    DEPLOYMENT_SUPERSEDED,
    FINAL_JOB_STATUSES,
    AppRecord,
    DeploymentRecord,
    Event,
    FunctionSpecRecord,
    JobRecord,
)

log = logging.getLogger("apothic.server.store")

SCHEMA_PATH = Path(__file__).with_name("schema.surql")
NAMESPACE = "apothic"
DATABASE = "main"
MAX_BATCH = 512
_VAR_RE = re.compile(r"\$([A-Za-z_]\w*)")
#: Error text of a schedule tick that already fired (see ``Store.schedule_fire_statements``).
_TICK_TAKEN = "schedule tick already fired"
#: Error text of a dict write whose dict changed since it was read (another replica wrote).
_DICT_CONFLICT = "dict changed concurrently"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


def _spec_to_doc(spec: FunctionSpecRecord) -> dict[str, Any]:
    return asdict(spec)


def _spec_from_doc(doc: dict[str, Any]) -> FunctionSpecRecord:
    # Fields added later are absent from older deployments: their defaults apply.
    return FunctionSpecRecord(**{k: doc[k] for k in FunctionSpecRecord.__dataclass_fields__ if k in doc})


def _deployment_from_doc(doc: dict[str, Any]) -> DeploymentRecord:
    return DeploymentRecord(
        deployment_id=f"deployments:{doc['id'].id}",
        account=doc["account"],
        app_name=doc["app_name"],
        version=doc["version"],
        status=doc["status"],
        ephemeral=doc["ephemeral"],
        functions=[_spec_from_doc(f) for f in doc["functions"]],
        archive_sha256=doc["archive_sha256"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        expires_at=doc.get("expires_at"),
        last_seq=doc.get("last_seq", 0),
    )


def _job_doc(job: JobRecord) -> dict[str, Any]:
    doc = {
        "account": job.account,
        "app_name": job.app_name,
        "function_name": job.function_name,
        "deployment": job.deployment_id,
        "status": job.status,
        "attempt": job.attempt,
        "reason": job.reason,
        "args_format": job.args_format,
        "args": job.args,
        "result_format": job.result_format,
        "result": job.result,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "last_seq": job.last_seq,
    }
    return {k: v for k, v in doc.items() if v is not None}


def _job_from_doc(doc: dict[str, Any]) -> JobRecord:
    return JobRecord(
        job_id=f"jobs:{doc['id'].id}",
        account=doc["account"],
        app_name=doc["app_name"],
        function_name=doc["function_name"],
        deployment_id=doc["deployment"],
        status=doc["status"],
        attempt=doc["attempt"],
        reason=doc["reason"],
        args_format=doc["args_format"],
        args=doc["args"],
        result_format=doc["result_format"],
        result=doc.get("result"),
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        ended_at=doc.get("ended_at"),
        last_seq=doc.get("last_seq", 0),
    )


class Store:
    """The control plane's state in SurrealDB.

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

    # -- accounts and keys -----------------------------------------------------------

    async def create_account(self, account_id: str, name: str, now: datetime) -> None:
        await self.commit(
            [
                (
                    "CREATE $id CONTENT $doc RETURN NONE",
                    {"id": _rid("account", account_id), "doc": {"name": name, "created_at": now}},
                )
            ]
        )

    async def find_account(self, name: str) -> str | None:
        rows = await self._q("SELECT id FROM account WHERE name = $name LIMIT 1", {"name": name})
        return f"accounts:{rows[0]['id'].id}" if rows else None

    async def create_api_key(self, key_id: str, account_id: str, salt: str, digest: str, now: datetime) -> None:
        doc = {"account": account_id, "salt": salt, "hash": digest, "created_at": now, "revoked": False}
        await self.commit([("CREATE $id CONTENT $doc RETURN NONE", {"id": RecordID("api_key", key_id), "doc": doc})])

    async def get_api_key(self, key_id: str) -> dict[str, Any] | None:
        row = await self._q("SELECT * FROM ONLY $id", {"id": RecordID("api_key", key_id)})
        return row or None

    # -- archives, apps and deployments -------------------------------------------------

    async def get_archive(self, sha256: str) -> bytes | None:
        row = await self._q("SELECT data FROM ONLY $id", {"id": RecordID("archive", sha256)})
        return row["data"] if row else None

    def deployment_event_statement(self, account: str, event: Event) -> Statement:
        """The statement that appends a deployment event and bumps the deployment's seq."""
        return (
            "CREATE $id CONTENT $doc RETURN NONE; UPDATE $dep SET last_seq = $seq RETURN NONE",
            {
                "id": RecordID("deployment_event", [_key(event.object_id), event.seq]),
                "doc": {
                    "account": account,
                    "deployment": event.object_id,
                    "seq": event.seq,
                    "time": event.time,
                    "kind": event.kind,
                },
                "dep": _rid("deployment", event.object_id),
                "seq": event.seq,
            },
        )

    async def save_deployment(
        self,
        dep: DeploymentRecord,
        archive: bytes,
        superseded: list[tuple[DeploymentRecord, Event]],
        created: Event,
    ) -> None:
        """Stores a new live deployment, its archive, its app and what it supersedes, in one
        transaction."""
        doc = asdict(dep)
        for k in ("deployment_id", "expires_at"):
            doc.pop(k)
        doc["functions"] = [_spec_to_doc(f) for f in dep.functions]
        if dep.expires_at is not None:
            doc["expires_at"] = dep.expires_at
        stmts: list[Statement] = [
            (
                "IF record::exists($aid) == false { CREATE $aid CONTENT $adoc RETURN NONE }",
                {
                    "aid": RecordID("archive", dep.archive_sha256),
                    "adoc": {"data": archive, "created_at": dep.created_at},
                },
            ),
            ("CREATE $id CONTENT $doc RETURN NONE", {"id": _rid("deployment", dep.deployment_id), "doc": doc}),
            (
                "UPSERT $app CONTENT $adoc RETURN NONE",
                {
                    "app": RecordID("app", [dep.account, dep.app_name]),
                    "adoc": {
                        "account": dep.account,
                        "name": dep.app_name,
                        "live_deployment": dep.deployment_id,
                        "version": dep.version,
                        "updated_at": dep.updated_at,
                    },
                },
            ),
            self.deployment_event_statement(dep.account, created),
        ]
        for old, event in superseded:
            stmts.append(
                (
                    "UPDATE $id SET status = $status, updated_at = $now RETURN NONE",
                    {"id": _rid("deployment", old.deployment_id), "status": old.status, "now": old.updated_at},
                )
            )
            stmts.append(self.deployment_event_statement(old.account, event))
        await self.commit(stmts)

    async def set_deployment_status(self, dep: DeploymentRecord, event: Event) -> None:
        """Updates a deployment's status and appends its event."""
        await self.commit(
            [
                (
                    "UPDATE $id SET status = $status, updated_at = $now RETURN NONE",
                    {"id": _rid("deployment", dep.deployment_id), "status": dep.status, "now": dep.updated_at},
                ),
                self.deployment_event_statement(dep.account, event),
            ]
        )

    async def set_deployment_expiry(self, deployment_id: str, expires_at: datetime) -> None:
        self.write_behind(
            [
                (
                    "UPDATE $id SET expires_at = $at RETURN NONE",
                    {"id": _rid("deployment", deployment_id), "at": expires_at},
                )
            ]
        )

    async def delete_deployment(self, dep: DeploymentRecord) -> None:
        """Deletes a deployment, its events, and its app row when it was the live one."""
        await self.commit(
            [
                ("DELETE $id RETURN NONE", {"id": _rid("deployment", dep.deployment_id)}),
                ("DELETE deployment_event WHERE deployment = $dep RETURN NONE", {"dep": dep.deployment_id}),
                (
                    "DELETE app WHERE account = $acct AND name = $name AND live_deployment = $dep RETURN NONE",
                    {"acct": dep.account, "name": dep.app_name, "dep": dep.deployment_id},
                ),
            ]
        )

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        row = await self._q("SELECT * FROM ONLY $id", {"id": _rid("deployment", deployment_id)})
        return _deployment_from_doc(row) if row else None

    async def list_deployments(self, account: str, app_name: str, limit: int) -> list[DeploymentRecord]:
        where = "account = $acct" + (" AND app_name = $app" if app_name else "")
        rows = await self._q(
            f"SELECT * FROM deployment WHERE {where} ORDER BY created_at DESC LIMIT $limit",
            {"acct": account, "app": app_name, "limit": limit},
        )
        return [_deployment_from_doc(r) for r in rows]

    async def live_deployments(self) -> list[DeploymentRecord]:
        """Every live deployment of every account (loaded at start)."""
        rows = await self._q("SELECT * FROM deployment WHERE status = $s", {"s": DEPLOYMENT_LIVE})
        return [_deployment_from_doc(r) for r in rows]

    async def list_apps(self, account: str) -> list[AppRecord]:
        rows = await self._q("SELECT * FROM app WHERE account = $acct ORDER BY name", {"acct": account})
        return [
            AppRecord(
                account=r["account"],
                name=r["name"],
                live_deployment=r["live_deployment"],
                version=r["version"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    async def deployment_events(self, deployment_id: str, after_seq: int) -> list[Event]:
        rows = await self._q(
            "SELECT * FROM deployment_event WHERE deployment = $dep AND seq > $after ORDER BY seq",
            {"dep": deployment_id, "after": after_seq},
        )
        return [Event(deployment_id, r["seq"], r["time"], r["kind"]) for r in rows]

    # -- jobs ------------------------------------------------------------------------

    def write_jobs_behind(self, statements: list[Statement]) -> asyncio.Future[None]:
        """Queues job statements like :meth:`write_behind`, and returns a future that settles
        once they committed (or failed: then it holds the error). Writes commit in the order
        they were queued, so it also covers every write queued before these."""
        assert self._committer is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._committer.submit(statements, future)
        return future

    def insert_jobs_statements(self, jobs: list[JobRecord]) -> list[Statement]:
        """One statement that creates new job records."""
        rows = [{"id": _rid("job", job.job_id), **_job_doc(job)} for job in jobs]
        return [("INSERT INTO job $rows RETURN NONE", {"rows": rows})] if rows else []

    def update_job_statements(self, job: JobRecord) -> list[Statement]:
        """Statements that write a job's whole current state over its record."""
        return [("UPSERT $id CONTENT $doc RETURN NONE", {"id": _rid("job", job.job_id), "doc": _job_doc(job)})]

    def job_progress_statements(self, jobs: list[JobRecord]) -> list[Statement]:
        """One statement that updates what changes as stored jobs run (not their arguments)."""
        rows = []
        for job in jobs:
            changes = {
                "status": job.status,
                "attempt": job.attempt,
                "reason": job.reason,
                "result": job.result,
                "started_at": job.started_at,
                "ended_at": job.ended_at,
                "last_seq": job.last_seq,
            }
            rows.append({"id": _rid("job", job.job_id), "changes": {k: v for k, v in changes.items() if v is not None}})
        return [("FOR $r IN $rows { UPDATE $r.id MERGE $r.changes RETURN NONE; }", {"rows": rows})] if rows else []

    def job_event_statements(self, events: list[tuple[str, Event]]) -> list[Statement]:
        """One statement that appends ``(account, event)`` job events; a repeated seq fails
        the write."""
        rows = [
            {
                "id": RecordID("job_event", [_key(e.object_id), e.seq]),
                "account": account,
                "seq": e.seq,
                "time": e.time,
                "kind": e.kind,
                "data": e.data,
            }
            for account, e in events
        ]
        return [("INSERT INTO job_event $rows RETURN NONE", {"rows": rows})] if rows else []

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._q("SELECT * FROM ONLY $id", {"id": _rid("job", job_id)})
        return _job_from_doc(row) if row else None

    async def list_jobs(self, account: str, app_name: str, status: str, limit: int) -> list[JobRecord]:
        where = ["account = $acct"]
        if app_name:
            where.append("app_name = $app")
        if status:
            where.append("status = $status")
        rows = await self._q(
            f"SELECT * FROM job WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT $limit",
            {"acct": account, "app": app_name, "status": status, "limit": limit},
        )
        return [_job_from_doc(r) for r in rows]

    async def job_events(self, job_id: str, after_seq: int = 0) -> list[Event]:
        key = _key(job_id)
        rows = await self._q(
            "SELECT * FROM job_event:[$k, $lo]..=[$k, $hi]",
            {"k": key, "lo": after_seq + 1, "hi": 2**62},
        )
        return [Event(job_id, r["seq"], r["time"], r["kind"], r.get("data") or {}) for r in rows]

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs not yet in a final state (re-queued after a restart)."""
        rows = await self._q(
            "SELECT * FROM job WHERE status NOT IN $final ORDER BY created_at", {"final": sorted(FINAL_JOB_STATUSES)}
        )
        return [_job_from_doc(r) for r in rows]

    async def stopped_expired_deployments(self, now: datetime) -> list[DeploymentRecord]:
        rows = await self._q(
            "SELECT * FROM deployment WHERE status = $live AND ephemeral = true AND expires_at < $now",
            {"live": DEPLOYMENT_LIVE, "now": now},
        )
        return [_deployment_from_doc(r) for r in rows]

    # -- schedules ---------------------------------------------------------------------

    def schedule_fire_statements(
        self, account: str, deployment_id: str, function: str, tick: datetime, job_id: str, now: datetime
    ) -> list[Statement]:
        """Statements that mark a schedule's ``tick`` as fired by job ``job_id``.

        Committed in the transaction that creates the job: they fail it when this tick or a
        later one already fired (:meth:`is_tick_taken` recognizes the error), so a tick
        fires at most once, across restarts and replicas.
        """
        state = RecordID("schedule", [_key(deployment_id), function])
        micros = (tick - _EPOCH) // timedelta(microseconds=1)
        return [
            (
                "IF $id.last_tick != NONE AND $id.last_tick >= $tick { THROW $msg }",
                {"id": state, "tick": tick, "msg": f"{_TICK_TAKEN}: {function} of {deployment_id} at {tick}"},
            ),
            (
                "UPSERT $id CONTENT $doc RETURN NONE",
                {
                    "id": state,
                    "doc": {
                        "account": account,
                        "deployment": deployment_id,
                        "function_name": function,
                        "last_tick": tick,
                        "last_job": job_id,
                        "updated_at": now,
                    },
                },
            ),
            (
                "CREATE $id CONTENT $doc RETURN NONE",
                {
                    "id": RecordID("schedule_run", [_key(deployment_id), function, micros]),
                    "doc": {
                        "account": account,
                        "deployment": deployment_id,
                        "function_name": function,
                        "tick": tick,
                        "job": job_id,
                    },
                },
            ),
        ]

    @staticmethod
    def is_tick_taken(exc: BaseException) -> bool:
        """Whether a failed write failed because its schedule tick had already fired."""
        text = str(exc)
        return _TICK_TAKEN in text or ("schedule_run:" in text and "already exists" in text)

    async def schedule_states(self, account: str, deployment_id: str) -> dict[str, tuple[datetime, str]]:
        """The last fired tick and its job, per scheduled function of a deployment."""
        rows = await self._q(
            "SELECT function_name, last_tick, last_job FROM schedule WHERE deployment = $dep AND account = $acct",
            {"dep": deployment_id, "acct": account},
        )
        return {r["function_name"]: (r["last_tick"], r["last_job"]) for r in rows}

    async def schedule_runs(self, account: str, deployment_id: str, function: str) -> list[tuple[datetime, str]]:
        """Every fired tick of a scheduled function and its job, oldest first."""
        rows = await self._q(
            "SELECT tick, job FROM schedule_run WHERE deployment = $dep AND function_name = $fn AND account = $acct "
            "ORDER BY tick",
            {"dep": deployment_id, "fn": function, "acct": account},
        )
        return [(r["tick"], r["job"]) for r in rows]

    # -- queues ------------------------------------------------------------------------
    # A queue is one ``queue`` record ([account, name]: rev, next_seq, max_attempts, maxsize,
    # expires_at when ephemeral), one ``queue_item`` record per item not yet acked ([account,
    # name, seq]) and the request ids it recently applied (``queue_request``). See
    # apothic.server.queues.

    def queue_commit(self, statements: list[Statement]) -> asyncio.Future[None]:
        """Queues statements and returns the future settled once they committed (or failed).

        Commits settle in the order they were queued; the queue manager relies on it to
        publish watch events in commit order.
        """
        assert self._committer is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._committer.submit(statements, future)
        return future

    async def queue_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Every queue, queue item (by seq) and recorded request id (by ``n``), of all accounts."""
        queues = await self._q("SELECT * FROM queue")
        items = await self._q("SELECT * FROM queue_item ORDER BY seq")
        requests = await self._q("SELECT * FROM queue_request ORDER BY n")
        return list(queues), list(items), list(requests)

    def queue_create_statement(
        self,
        account: str,
        name: str,
        max_attempts: int,
        now: datetime,
        *,
        maxsize: int = 0,
        expires_at: datetime | None = None,
    ) -> Statement:
        """Creates a queue record at rev 1; fails the write when the queue already exists.
        An ephemeral queue has ``expires_at``."""
        doc: dict[str, Any] = {
            "account": account,
            "name": name,
            "rev": 1,
            "next_seq": 1,
            "max_attempts": max_attempts,
            "maxsize": maxsize,
            "created_at": now,
        }
        if expires_at is not None:
            doc["expires_at"] = expires_at
        return ("CREATE $id CONTENT $doc RETURN NONE", {"id": RecordID("queue", [account, name]), "doc": doc})

    def queue_expiry_statement(self, account: str, name: str, expires_at: datetime) -> Statement:
        """Moves an ephemeral queue's expiry (a heartbeat)."""
        return (
            "UPDATE $id SET expires_at = $at RETURN NONE",
            {"id": RecordID("queue", [account, name]), "at": expires_at},
        )

    def queue_rev_statement(self, account: str, name: str, rev: int, next_seq: int) -> Statement:
        """Records a queue's new rev and next item seq."""
        return (
            "UPDATE $id SET rev = $rev, next_seq = $next RETURN NONE",
            {"id": RecordID("queue", [account, name]), "rev": rev, "next": next_seq},
        )

    def queue_insert_items_statement(self, account: str, name: str, items: list[dict[str, Any]]) -> Statement:
        """Inserts items; each dict holds seq, partition, format, data, attempt, epoch, leased,
        lease_deadline, visible_at, last_error and enqueued_at."""
        rows = [
            {"id": RecordID("queue_item", [account, name, i["seq"]]), "account": account, "queue": name, **i}
            for i in items
        ]
        return ("INSERT INTO queue_item $rows RETURN NONE", {"rows": rows})

    def queue_update_items_statement(self, account: str, name: str, items: list[dict[str, Any]]) -> Statement:
        """Updates the mutable fields of items; each dict holds seq, attempt, epoch, leased,
        lease_deadline, visible_at and last_error."""
        rows = [
            {"id": RecordID("queue_item", [account, name, i["seq"]]), "set": {k: v for k, v in i.items() if k != "seq"}}
            for i in items
        ]
        if len(rows) == 1:
            return ("UPDATE $id MERGE $set RETURN NONE", {"id": rows[0]["id"], "set": rows[0]["set"]})
        return ("FOR $r IN $rows { UPDATE $r.id MERGE $r.set RETURN NONE; }", {"rows": rows})

    def queue_delete_items_statement(self, account: str, name: str, seqs: list[int]) -> Statement:
        """Deletes items by seq."""
        return _deletes([RecordID("queue_item", [account, name, seq]) for seq in seqs])

    def queue_clear_statement(self, account: str, name: str, partition: str | None) -> Statement:
        """Deletes every item of one partition of a queue, or of all its partitions."""
        where = "account = $acct AND queue = $name" + ("" if partition is None else " AND partition = $part")
        return (
            f"DELETE queue_item WHERE {where} RETURN NONE",
            {"acct": account, "name": name, "part": partition or ""},
        )

    def queue_delete_statements(self, account: str, name: str) -> list[Statement]:
        """Deletes a queue record, its items and its recorded request ids."""
        params = {"acct": account, "name": name}
        return [
            ("DELETE $id RETURN NONE", {"id": RecordID("queue", [account, name])}),
            ("DELETE queue_item WHERE account = $acct AND queue = $name RETURN NONE", params),
            ("DELETE queue_request WHERE account = $acct AND queue = $name RETURN NONE", dict(params)),
        ]

    def queue_request_statements(
        self,
        account: str,
        name: str,
        request_id: str,
        n: int,
        result: dict[str, Any],
        evict: list[str],
        at: float,
    ) -> list[Statement]:
        """Records that a request id was applied at ``at`` (server clock, seconds) with what it
        answered, and forgets ``evict``."""
        doc = {"account": account, "queue": name, "request_id": request_id, "n": n, "result": result, "at": at}
        stmts: list[Statement] = [
            (
                "CREATE $id CONTENT $doc RETURN NONE",
                {"id": RecordID("queue_request", [account, name, request_id]), "doc": doc},
            )
        ]
        if evict:
            stmts.append(_deletes([RecordID("queue_request", [account, name, old]) for old in evict]))
        return stmts

    # -- dicts -------------------------------------------------------------------------
    # A dict is one ``dict`` record (rev), one ``dict_entry`` record per key ([dict key,
    # key]), its recent request ids (``dict_request``) and its leases (``dict_lease``, [dict
    # key, lease id]). See apothic.server.dicts.

    async def create_dict(self, record: DictRecord) -> None:
        """Creates a dict's row; fails when the account already has a dict of that name."""
        doc = {
            "account": record.account,
            "name": record.name,
            "rev": record.rev,
            "writes": record.writes,
            "created_at": record.created_at,
        }
        if record.expires_at is not None:
            doc["expires_at"] = record.expires_at
        await self.commit([("CREATE $id CONTENT $doc RETURN NONE", {"id": _rid("dict", record.dict_id), "doc": doc})])

    async def find_dict(self, account: str, name: str) -> DictRecord | None:
        rows = await self._q(
            "SELECT * FROM dict WHERE account = $acct AND name = $name LIMIT 1", {"acct": account, "name": name}
        )
        if not rows:
            return None
        r = rows[0]
        return DictRecord(
            f"dicts:{r['id'].id}",
            r["account"],
            r["name"],
            r["rev"],
            r["created_at"],
            r["writes"],
            expires_at=r.get("expires_at"),
        )

    async def set_dict_expiry(self, dict_id: str, expires_at: datetime) -> None:
        """Moves an ephemeral dict's deadline (durably)."""
        await self.commit(
            [("UPDATE $id SET expires_at = $at RETURN NONE", {"id": _rid("dict", dict_id), "at": expires_at})]
        )

    async def dict_expiry(self, dict_id: str) -> datetime | None:
        """An ephemeral dict's stored deadline (None when it is not ephemeral or is gone)."""
        at: datetime | None = await self._q("SELECT VALUE expires_at FROM ONLY $d", {"d": _rid("dict", dict_id)})
        return at

    async def ephemeral_dicts(self) -> list[tuple[str, str, datetime]]:
        """``(account, name, expires_at)`` of every ephemeral dict."""
        rows = await self._q("SELECT account, name, expires_at FROM dict WHERE expires_at != NONE")
        return [(r["account"], r["name"], r["expires_at"]) for r in rows]

    async def dict_entries(self, dict_id: str) -> list[DictEntryRecord]:
        rows = await self._q("SELECT * FROM dict_entry WHERE dict = $d", {"d": dict_id})
        return [
            DictEntryRecord(
                r["key"], r["value"], r["format"], r["version"], r["mod_rev"], r["create_rev"], r.get("lease") or ""
            )
            for r in rows
        ]

    async def dict_leases(self, dict_id: str) -> list[DictLeaseRecord]:
        """A dict's live leases."""
        rows = await self._q("SELECT lease_id, ttl_s, deadline FROM dict_lease WHERE dict = $d", {"d": dict_id})
        return [DictLeaseRecord(r["lease_id"], float(r["ttl_s"]), r["deadline"]) for r in rows]

    async def leased_dicts(self) -> list[tuple[str, str]]:
        """``(account, name)`` of every dict that has leases."""
        rows = await self._q("SELECT account, name FROM dict_lease GROUP BY account, name")
        return [(r["account"], r["name"]) for r in rows]

    async def dict_requests(self, dict_id: str) -> list[tuple[str, dict[str, Any], float]]:
        """The request ids a dict remembers, with their outcome and when they were applied
        (seconds; 0 when unknown), oldest first."""
        rows = await self._q(
            "SELECT request_id, outcome, at, seq FROM dict_request WHERE dict = $d ORDER BY seq", {"d": dict_id}
        )
        return [(r["request_id"], r["outcome"], r.get("at") or 0.0) for r in rows]

    async def delete_dict(self, dict_id: str) -> None:
        """Deletes a dict's row, its entries and its request ids."""
        await self.commit(
            [
                ("DELETE $id RETURN NONE", {"id": _rid("dict", dict_id)}),
                ("DELETE dict_entry WHERE dict = $d RETURN NONE", {"d": dict_id}),
                ("DELETE dict_request WHERE dict = $d RETURN NONE", {"d": dict_id}),
                ("DELETE dict_lease WHERE dict = $d RETURN NONE", {"d": dict_id}),
            ]
        )

    def dict_mutation_statements(
        self,
        record: DictRecord,
        new_rev: int,
        writes: list[DictEntryRecord],
        deletes: list[str],
        *,
        request: tuple[str, int, dict[str, Any], float] | None = None,
        evicted_requests: list[str] | None = None,
        lease_puts: list[DictLeaseRecord] | None = None,
        lease_drops: list[str] | None = None,
    ) -> list[Statement]:
        """Statements of one dict mutation.

        Guarded on the dict row's write counter still being at ``record.writes``
        (:meth:`is_dict_conflict` recognizes the failure), they advance it by one, move the
        rev to ``new_rev`` and write the entries. ``request`` (id, seq, outcome, applied at) is stored
        for idempotent retries and ``evicted_requests`` are forgotten; ``lease_puts`` are
        created or updated and ``lease_drops`` deleted. With no writes and no deletes the
        rev stays (the write counter advances).
        """
        dict_rid = _rid("dict", record.dict_id)
        dkey = _key(record.dict_id)
        guard = {
            "d": dict_rid,
            "expected": record.writes,
            "writes": record.writes + 1,
            "rev": new_rev,
            "msg": f"{_DICT_CONFLICT}: {record.dict_id} changed since write {record.writes}",
        }
        stmts: list[Statement] = [
            ("IF $d.writes != $expected { THROW $msg }; UPDATE $d SET rev = $rev, writes = $writes RETURN NONE", guard)
        ]
        if writes:
            rows = [
                {
                    "id": RecordID("dict_entry", [dkey, e.key]),
                    "doc": {
                        "account": record.account,
                        "dict": record.dict_id,
                        "key": e.key,
                        "value": e.value,
                        "format": e.format,
                        "version": e.version,
                        "mod_rev": e.mod_rev,
                        "create_rev": e.create_rev,
                        "lease": e.lease,
                    },
                }
                for e in writes
            ]
            stmts.append(_upserts(rows))
        if deletes:
            stmts.append(_deletes([RecordID("dict_entry", [dkey, k]) for k in deletes]))
        if request is not None:
            request_id, seq, outcome, at = request
            doc = {"account": record.account, "dict": record.dict_id, "request_id": request_id, "seq": seq, "at": at}
            stmts.append(
                (
                    "UPSERT $id CONTENT $doc RETURN NONE",
                    {"id": RecordID("dict_request", [dkey, request_id]), "doc": {**doc, "outcome": outcome}},
                )
            )
        if evicted_requests:
            stmts.append(_deletes([RecordID("dict_request", [dkey, r]) for r in evicted_requests]))
        if lease_puts:
            rows = [
                {
                    "id": RecordID("dict_lease", [dkey, le.lease_id]),
                    "doc": {
                        "account": record.account,
                        "dict": record.dict_id,
                        "name": record.name,
                        "lease_id": le.lease_id,
                        "ttl_s": float(le.ttl_s),
                        "deadline": le.deadline,
                    },
                }
                for le in lease_puts
            ]
            stmts.append(_upserts(rows))
        if lease_drops:
            stmts.append(_deletes([RecordID("dict_lease", [dkey, lid]) for lid in lease_drops]))
        return stmts

    async def dict_writes(self, dict_id: str) -> int | None:
        """A dict's committed write counter (None when it no longer exists)."""
        writes = await self._q("SELECT VALUE writes FROM ONLY $d", {"d": _rid("dict", dict_id)})
        return int(writes) if writes is not None else None

    @staticmethod
    def is_dict_conflict(exc: BaseException) -> bool:
        """Whether a failed write failed because its dict changed since it was read."""
        return _DICT_CONFLICT in str(exc)


__all__ = ["DEPLOYMENT_STOPPED", "DEPLOYMENT_SUPERSEDED", "Store"]
