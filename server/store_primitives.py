"""The store's queries for queues and dicts (part of :class:`apothic.server.store.Store`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import cbor2
from surrealdb import RecordID

from apothic.server.dict_log import Fold, LogRecord, Remembered
from apothic.server.dict_records import DICT_CHAIN_BROKEN
from apothic.server.dicts import DictEntryRecord, DictLeaseRecord, DictRecord
from apothic.server.store_base import Statement, StoreBase, StoreWriteError, _deletes, _key, _rid, _upserts

#: Error text of a dict write whose dict changed since it was read (another replica wrote).
_DICT_CONFLICT = "dict changed concurrently"


class PrimitiveStore(StoreBase):
    """Queue and dict rows; :class:`apothic.server.store.Store` adds everything else."""

    # -- queues ------------------------------------------------------------------------
    # A queue is one ``queue`` record ([account, name]: rev, next_seq, max_attempts, maxsize,
    # expires_at when ephemeral, folded_lsn), one ``queue_item`` record per item not yet acked
    # ([account, name, seq]), the request ids it recently applied (``queue_request``), and
    # the log rows of its write sets not folded into those yet (``queue_oplog``, [account,
    # name, lsn]). See apothic.server.queues and apothic.server.queue_oplog.

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

    def queue_fold_statement(self, account: str, name: str, rev: int, next_seq: int, folded_lsn: int) -> Statement:
        """Records a queue's rev and next item seq as of its last folded log row."""
        return (
            "UPDATE $id SET rev = $rev, next_seq = $next, folded_lsn = $lsn RETURN NONE",
            {"id": RecordID("queue", [account, name]), "rev": rev, "next": next_seq, "lsn": folded_lsn},
        )

    @staticmethod
    def queue_log_row(account: str, name: str, lsn: int, ops: bytes) -> dict[str, Any]:
        """A ``queue_oplog`` row: one write set's entry (apothic.server.queue_oplog)."""
        return {
            "id": RecordID("queue_oplog", [account, name, lsn]),
            "account": account,
            "queue": name,
            "lsn": lsn,
            "ops": ops,
        }

    @staticmethod
    def queue_log_statement(rows: list[dict[str, Any]]) -> Statement:
        """Appends log rows (:meth:`queue_log_row`); fails the write when one exists."""
        if len(rows) == 1:
            row = rows[0]
            return (
                "CREATE $id CONTENT $doc RETURN NONE",
                {"id": row["id"], "doc": {k: v for k, v in row.items() if k != "id"}},
            )
        return ("INSERT INTO queue_oplog $rows RETURN NONE", {"rows": rows})

    @staticmethod
    def queue_log_delete_statement(account: str, name: str, lsns: list[int]) -> Statement:
        """Deletes a queue's log rows by lsn."""
        return _deletes([RecordID("queue_oplog", [account, name, lsn]) for lsn in lsns])

    async def queue_log_rows(self) -> list[dict[str, Any]]:
        """Every queue log row (account, queue, lsn, ops) of all accounts."""
        return list(await self._q("SELECT account, queue, lsn, ops FROM queue_oplog"))

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

    def queue_delete_statements(self, account: str, name: str) -> list[Statement]:
        """Deletes a queue record, its items, its recorded request ids and its log rows."""
        params = {"acct": account, "name": name}
        return [
            ("DELETE $id RETURN NONE", {"id": RecordID("queue", [account, name])}),
            ("DELETE queue_item WHERE account = $acct AND queue = $name RETURN NONE", params),
            ("DELETE queue_request WHERE account = $acct AND queue = $name RETURN NONE", dict(params)),
            ("DELETE queue_oplog WHERE account = $acct AND queue = $name RETURN NONE", dict(params)),
        ]

    def queue_request_batch_statement(
        self, account: str, name: str, row_key: int, requests: Sequence[Sequence[Any]]
    ) -> Statement:
        """Records several request ids ``(request id, n, result, applied at)`` in one row,
        keyed by an int (an older row of one request id is keyed by that id, a string, so
        the two never collide); its ``n`` is the last one's. The ids, results and times are
        CBOR-encoded in ``packed`` (:meth:`queue_request_entries` reads them back)."""
        last_n, last_at = requests[-1][1], requests[-1][3]
        doc = {
            "account": account,
            "queue": name,
            "request_id": f"#{row_key}",
            "n": last_n,
            "result": {},
            "at": last_at,
            "packed": cbor2.dumps([[request_id, result, at] for request_id, _, result, at in requests]),
        }
        return (
            "CREATE $id CONTENT $doc RETURN NONE",
            {"id": RecordID("queue_request", [account, name, row_key]), "doc": doc},
        )

    @staticmethod
    def queue_request_entries(row: dict[str, Any]) -> tuple[str | int, list[tuple[str, dict[str, Any], float]]]:
        """A stored request row's key and the ``(request id, result, applied at)`` it records
        (a packed row, an older row of several in ``result.batch``, or one of one id)."""
        row_key = row["id"].id[2] if isinstance(row.get("id"), RecordID) else row["request_id"]
        if row.get("packed") is not None:
            return row_key, [(rid, result, at or 0.0) for rid, result, at in cbor2.loads(row["packed"])]
        batch = row["result"].get("batch") if isinstance(row_key, int) else None
        if batch is not None:
            return row_key, [(rid, result, at or 0.0) for rid, result, at in batch]
        return row_key, [(row["request_id"], row["result"], row.get("at") or 0.0)]

    def queue_forget_requests_statement(self, account: str, name: str, row_keys: list[str | int]) -> Statement:
        """Deletes recorded request rows by key."""
        return _deletes([RecordID("queue_request", [account, name, key]) for key in row_keys])

    # -- dicts -------------------------------------------------------------------------
    # A dict is one ``dict`` record (rev), one ``dict_entry`` record per key ([dict key,
    # key]), its recent request ids (``dict_request``), its leases (``dict_lease``, [dict
    # key, lease id]) and its log rows not folded yet (``dict_oplog``, [dict key, lsn]). See
    # apothic.server.dicts and apothic.server.dict_log.

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

    async def dict_contents(self, dict_id: str) -> tuple[list[DictEntryRecord], list[Remembered], list[LogRecord]]:
        """A dict's stored entries, the request ids its request rows remember (with outcome,
        when applied, in seconds, 0 when unknown, and the key of the row, oldest first) and
        its log rows not folded yet (``lsn`` order), read in one snapshot: a fold deletes log
        rows in the transaction that writes what they did to entry and request rows.

        A request row records one request id (keyed by it) or several (keyed by an int; its
        ``outcome`` is ``{"batch": [[request id, outcome, at], ...]}``, or that list is
        CBOR-encoded in ``packed``, as a fold writes it)."""
        params = {"d": dict_id}
        entries, requests, logged = await self._read_together(
            [
                (
                    "SELECT key, value, format, version, mod_rev, create_rev, lease FROM dict_entry WHERE dict = $d",
                    params,
                ),
                (
                    "SELECT request_id, outcome, packed, at, seq, record::id(id)[1] AS row_key FROM dict_request "
                    "WHERE dict = $d ORDER BY seq",
                    params,
                ),
                ("SELECT lsn, ops FROM dict_oplog WHERE dict = $d ORDER BY lsn", params),
            ]
        )
        remembered: list[Remembered] = []
        for r in requests:
            row_key = r["row_key"]
            if r.get("packed") is not None:
                remembered += [(rid, outcome, at or 0.0, row_key) for rid, outcome, at in cbor2.loads(r["packed"])]
                continue
            batch = r["outcome"].get("batch") if isinstance(row_key, int) else None
            if batch is None:
                remembered.append((r["request_id"], r["outcome"], r.get("at") or 0.0, row_key))
            else:
                remembered += [(rid, outcome, at or 0.0, row_key) for rid, outcome, at in batch]
        return (
            [
                DictEntryRecord(
                    r["key"], r["value"], r["format"], r["version"], r["mod_rev"], r["create_rev"], r.get("lease") or ""
                )
                for r in entries
            ],
            remembered,
            [LogRecord.decode(r["lsn"], r["ops"]) for r in logged],
        )

    async def dict_leases(self, dict_id: str) -> list[DictLeaseRecord]:
        """A dict's live leases."""
        rows = await self._q("SELECT lease_id, ttl_s, deadline FROM dict_lease WHERE dict = $d", {"d": dict_id})
        return [DictLeaseRecord(r["lease_id"], float(r["ttl_s"]), r["deadline"]) for r in rows]

    async def leased_dicts(self) -> list[tuple[str, str]]:
        """``(account, name)`` of every dict that has leases."""
        rows = await self._q("SELECT account, name FROM dict_lease GROUP BY account, name")
        return [(r["account"], r["name"]) for r in rows]

    async def delete_dict(self, dict_id: str) -> None:
        """Deletes a dict's row, its entries, its request ids, its leases and its log rows."""
        await self.commit(
            [
                ("DELETE $id RETURN NONE", {"id": _rid("dict", dict_id)}),
                ("DELETE dict_entry WHERE dict = $d RETURN NONE", {"d": dict_id}),
                ("DELETE dict_request WHERE dict = $d RETURN NONE", {"d": dict_id}),
                ("DELETE dict_lease WHERE dict = $d RETURN NONE", {"d": dict_id}),
                ("DELETE dict_oplog WHERE dict = $d RETURN NONE", {"d": dict_id}),
            ]
        )

    def dict_write_statements(
        self,
        record: DictRecord,
        new_rev: int,
        new_writes: int,
        logged: LogRecord | None,
        *,
        lease_puts: list[DictLeaseRecord] | None = None,
        lease_drops: list[str] | None = None,
    ) -> list[Statement]:
        """Statements of one dict write set (one mutation or several in a row).

        Guarded on the dict row's write counter still being at ``record.writes``
        (:meth:`is_dict_conflict` recognizes the failure), they advance it to ``new_writes``,
        move the rev to ``new_rev``, append ``logged`` (its keys, request ids and evicted
        request rows; see apothic.server.dict_log) as the dict's log row ``new_writes``, and
        create or update ``lease_puts`` and delete ``lease_drops``.
        """
        dict_rid = _rid("dict", record.dict_id)
        guard = {
            "d": dict_rid,
            "expected": record.writes,
            "writes": new_writes,
            "rev": new_rev,
            "msg": f"{_DICT_CONFLICT}: {record.dict_id} changed since write {record.writes}",
        }
        stmts: list[Statement] = [
            ("IF $d.writes != $expected { THROW $msg }; UPDATE $d SET rev = $rev, writes = $writes RETURN NONE", guard)
        ]
        if logged:
            doc = {"account": record.account, "dict": record.dict_id, "lsn": logged.lsn, "ops": logged.encode()}
            stmts.append(
                (
                    "CREATE $id CONTENT $doc RETURN NONE",
                    {"id": RecordID("dict_oplog", [_key(record.dict_id), logged.lsn]), "doc": doc},
                )
            )
        dkey = _key(record.dict_id)
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

    def dict_fold_statements(self, record: DictRecord, folded: Fold) -> list[Statement]:
        """Statements that fold a dict's log rows into its entry and request rows and delete
        them, guarded on the dict's write counter still being at ``record.writes`` (a replica
        whose copy is stale must not fold; :meth:`is_dict_conflict` recognizes the failure)."""
        dkey = _key(record.dict_id)
        stmts: list[Statement] = [
            (
                "IF $d.writes != $expected { THROW $msg }",
                {
                    "d": _rid("dict", record.dict_id),
                    "expected": record.writes,
                    "msg": f"{_DICT_CONFLICT}: {record.dict_id} changed since write {record.writes}",
                },
            )
        ]
        if folded.puts:
            stmts.append(
                _upserts(
                    [
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
                        for e in folded.puts
                    ]
                )
            )
        if folded.deletes:
            stmts.append(_deletes([RecordID("dict_entry", [dkey, k]) for k in folded.deletes]))
        if folded.gone_rows:
            stmts.append(_deletes([RecordID("dict_request", [dkey, r]) for r in folded.gone_rows]))
        if folded.merged is not None:
            row_key, requests = folded.merged
            doc = {
                "account": record.account,
                "dict": record.dict_id,
                "request_id": f"#{row_key}",
                "seq": requests[-1][1],
                "at": requests[-1][3],
                "outcome": {},
                "packed": cbor2.dumps([[rid, outcome, at] for rid, _, outcome, at in requests]),
            }
            # Upserted, as the entries are: folding the same log rows twice writes the same.
            stmts.append(_upserts([{"id": RecordID("dict_request", [dkey, row_key]), "doc": doc}]))
        stmts.append(_deletes([RecordID("dict_oplog", [dkey, lsn]) for lsn in folded.lsns]))
        return stmts

    async def dict_writes(self, dict_id: str) -> int | None:
        """A dict's committed write counter (None when it no longer exists)."""
        writes = await self._q("SELECT VALUE writes FROM ONLY $d", {"d": _rid("dict", dict_id)})
        return int(writes) if writes is not None else None

    @staticmethod
    def dict_chain_conflict() -> StoreWriteError:
        """The error of a dict write that did not run because a write it was planned on
        top of failed (:meth:`is_dict_conflict` recognizes it)."""
        return StoreWriteError(f"{_DICT_CONFLICT}: {DICT_CHAIN_BROKEN}")

    @staticmethod
    def is_dict_conflict(exc: BaseException) -> bool:
        """Whether a failed write failed because its dict changed since it was read."""
        return _DICT_CONFLICT in str(exc)
