"""The Store: every SurrealQL query the control plane runs lives here and in
:mod:`apothic.server.store_primitives` (queues and dicts); the connection and the
group-commit writer are in :mod:`apothic.server.store_base`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from surrealdb import RecordID

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
from apothic.server.store_base import MAX_BATCH, Statement, StoreWriteError, _key, _rid
from apothic.server.store_billing import BillingStore
from apothic.server.store_images import ImageStore
from apothic.server.store_primitives import PrimitiveStore
from apothic.server.store_secrets import SecretStore
from apothic.server.store_volumes import VolumeStore

#: Error text of a schedule tick that already fired (see ``Store.schedule_fire_statements``).
_TICK_TAKEN = "schedule tick already fired"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _spec_to_doc(spec: FunctionSpecRecord) -> dict[str, Any]:
    return asdict(spec)


def _spec_from_doc(doc: dict[str, Any]) -> FunctionSpecRecord:
    # Fields added later are absent from older deployments: their defaults apply.
    fields = {k: doc[k] for k in FunctionSpecRecord.__dataclass_fields__ if k in doc}
    for name in ("secrets", "volumes", "bucket_mounts"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return FunctionSpecRecord(**fields)


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


class Store(BillingStore, ImageStore, PrimitiveStore, SecretStore, VolumeStore):
    """The control plane's state in SurrealDB.

    Args:
        url: ``mem://``, ``surrealkv:///abs/path`` or ``ws://host:port``.
    """

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


__all__ = ["DEPLOYMENT_STOPPED", "DEPLOYMENT_SUPERSEDED", "MAX_BATCH", "Statement", "Store", "StoreWriteError"]
