"""Log-structured persistence of queues: each write set is one appended log row.

A queue's durable state is its ``queue`` row, its ``queue_item`` rows and its
``queue_request`` rows (the *folded* state) plus its ``queue_oplog`` rows: one per committed
write set (:class:`LogSet`), keyed ``[account, queue, lsn]``, holding what that set did as
one CBOR blob (:class:`LogEntry`): the queue's rev and next item seq after it, each item it
touched in its latest state (a whole item when it is new, its mutable fields when it
changed, its seq when it is gone; an item put and acked within one set is not there at
all) and the request ids it applied with what they answered.

So a hot mutation costs one row write instead of one per touched item. The truth is the
folded state with the log rows replayed over it in ``lsn`` order (:func:`replay`), which is
exactly what the acknowledged operations produced: a log row commits before its callers
are answered. The queue engine's compactor (``QueueEngine.compact``) periodically folds a
queue's committed log rows into its ``queue``/``queue_item``/``queue_request`` rows in one
transaction that also deletes those log rows (:func:`compaction`): a crash leaves either the
log rows or their folded result, never both, never half of either.

Write sets of one queue commit in ``lsn`` order, and a set planned on top of one that failed
fails too (:meth:`LogSet.broken`), so the log never has a hole that later rows depend on.
A set that moves items between queues (dead-lettering, redrive) writes one log row per
queue in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2

from apothic.server.queue_state import Item, dt
from apothic.server.store_base import Statement, WriteSet

if TYPE_CHECKING:
    from apothic.server.queue_state import QueueState
    from apothic.server.store import Store

#: The layout of an encoded entry (its first element).
LOG_FORMAT = 1
# Item record kinds; a record is a tuple (a list once decoded):
#: ``(INSERT, seq, partition, format, data, enqueued_at, attempt, epoch, leased,
#: lease_deadline, visible_at, last_error)``: a new item, whole.
INSERT = 0
#: ``(UPDATE, seq, attempt, epoch, leased, lease_deadline, visible_at, last_error)``.
UPDATE = 1
#: ``(DELETE, seq)``: the item is gone.
DELETE = 2
#: Where an INSERT record's mutable fields start (they end it, in UPDATE's order).
_INSERT_MUTABLE = 6
_UPDATE_MUTABLE = 2

Record = Sequence[Any]
#: ``(request id, n, result, applied at)``.
RequestRecord = Sequence[Any]


def insert_record(item: Item) -> tuple[Any, ...]:
    return (
        INSERT,
        item.seq,
        item.partition,
        item.format,
        item.data,
        item.enqueued_at,
        item.attempt,
        item.epoch,
        item.leased,
        item.lease_deadline,
        item.visible_at,
        item.last_error,
    )


def update_record(item: Item) -> tuple[Any, ...]:
    return (
        UPDATE,
        item.seq,
        item.attempt,
        item.epoch,
        item.leased,
        item.lease_deadline,
        item.visible_at,
        item.last_error,
    )


@dataclass
class LogEntry:
    """What one write set did to one queue (one ``queue_oplog`` row)."""

    lsn: int
    rev: int
    next_seq: int
    records: list[Record]
    requests: list[RequestRecord]

    def encode(self) -> bytes:
        return bytes(cbor2.dumps([LOG_FORMAT, self.rev, self.next_seq, self.records, self.requests]))

    @classmethod
    def decode(cls, lsn: int, data: bytes) -> LogEntry:
        fmt, rev, next_seq, records, requests = cbor2.loads(data)
        if fmt != LOG_FORMAT:
            raise ValueError(f"queue log row {lsn} has format {fmt}, not {LOG_FORMAT}")
        return cls(lsn, rev, next_seq, records, requests)


def replay(items: dict[int, Item], entry: LogEntry) -> None:
    """Applies a log entry to items (by seq), in place."""
    for rec in entry.records:
        kind, seq = rec[0], rec[1]
        if kind == INSERT:
            items[seq] = Item(
                seq=seq,
                partition=rec[2],
                format=rec[3],
                data=rec[4],
                enqueued_at=rec[5],
                attempt=rec[6],
                epoch=rec[7],
                leased=rec[8],
                lease_deadline=rec[9],
                visible_at=rec[10],
                last_error=rec[11],
            )
        elif kind == UPDATE:
            item = items.get(seq)
            if item is not None:
                (item.attempt, item.epoch, item.leased, item.lease_deadline, item.visible_at, item.last_error) = rec[
                    _UPDATE_MUTABLE:
                ]
        else:
            items.pop(seq, None)


def fold(entries: Sequence[LogEntry]) -> dict[int, Record]:
    """The net item records of consecutive entries: one per item, in its latest state (an
    item inserted and deleted within them is not there)."""
    net: dict[int, Record] = {}
    for entry in entries:
        for rec in entry.records:
            kind, seq = rec[0], rec[1]
            prev = net.get(seq)
            if kind == INSERT:
                net[seq] = rec
            elif kind == UPDATE:
                if prev is not None and prev[0] == INSERT:
                    net[seq] = (*prev[:_INSERT_MUTABLE], *rec[_UPDATE_MUTABLE:])
                else:
                    net[seq] = rec
            elif prev is not None and prev[0] == INSERT:
                del net[seq]
            else:
                net[seq] = rec
    return net


def _changes(rec: Record, first: int) -> dict[str, Any]:
    attempt, epoch, leased, lease_deadline, visible_at, last_error = rec[first:]
    return {
        "seq": rec[1],
        "attempt": attempt,
        "epoch": epoch,
        "leased": leased,
        "lease_deadline": dt(lease_deadline),
        "visible_at": dt(visible_at),
        "last_error": last_error,
    }


def _doc(rec: Record) -> dict[str, Any]:
    return {
        **_changes(rec, _INSERT_MUTABLE),
        "partition": rec[2],
        "format": rec[3],
        "data": rec[4],
        "enqueued_at": dt(rec[5]),
    }


@dataclass
class Compaction:
    """A planned fold of a queue's first ``len(entries)`` committed log entries."""

    entries: list[LogEntry]
    statements: list[Statement]
    #: Stored request rows it deletes, and the one it adds (key, request ids) if any.
    evicted: list[str | int]
    added: tuple[int, list[str]] | None


#: The most log entries one fold takes (a bigger backlog takes several, back to back):
#: its transaction holds up the writes queued behind it.
MAX_FOLD = 1024


def compaction(store: Store, q: QueueState) -> Compaction | None:
    """Plans folding the oldest committed log entries of ``q`` (up to :data:`MAX_FOLD`)
    into its rows, in one transaction that also deletes those log rows (None when there
    is none).

    Request ids the folded entries applied move to one ``queue_request`` row (those memory
    still remembers); stored request rows none of whose ids memory remembers any more are
    deleted, oldest first.
    """
    entries = q.log_entries[:MAX_FOLD]
    if not entries:
        return None
    account, name = q.account, q.name
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    deletes: list[int] = []
    for seq, rec in fold(entries).items():
        if rec[0] == INSERT:
            inserts.append(_doc(rec))
        elif rec[0] == UPDATE:
            updates.append(_changes(rec, _UPDATE_MUTABLE))
        else:
            deletes.append(seq)
    stmts: list[Statement] = []
    if deletes:
        stmts.append(store.queue_delete_items_statement(account, name, deletes))
    if inserts:
        stmts.append(store.queue_insert_items_statement(account, name, inserts))
    if updates:
        stmts.append(store.queue_update_items_statement(account, name, updates))
    last = entries[-1]
    rev = max(e.rev for e in entries)
    next_seq = max(e.next_seq for e in entries)
    stmts.append(store.queue_fold_statement(account, name, rev, next_seq, last.lsn))
    remembered = q.requests
    kept = [
        (rid, n, result, at) for e in entries for rid, n, result, at in e.requests if remembered.get(rid) is not None
    ]
    added: tuple[int, list[str]] | None = None
    if kept:
        key = int(kept[-1][1])
        stmts.append(store.queue_request_batch_statement(account, name, key, kept))
        added = (key, [r[0] for r in kept])
    evicted: list[str | int] = []
    for key, rids in q.request_rows.items():
        if any(remembered.get(rid) is not None for rid in rids):
            break
        evicted.append(key)
    if evicted:
        stmts.append(store.queue_forget_requests_statement(account, name, evicted))
    stmts.append(store.queue_log_delete_statement(account, name, [e.lsn for e in entries]))
    return Compaction(entries, stmts, evicted, added)


def folded(q: QueueState, plan: Compaction) -> None:
    """Updates ``q``'s bookkeeping once ``plan`` committed."""
    del q.log_entries[: len(plan.entries)]
    q.folded_lsn = plan.entries[-1].lsn
    for key in plan.evicted:
        q.request_rows.pop(key, None)
    if plan.added is not None:
        q.request_rows[plan.added[0]] = plan.added[1]


class LogPart:
    """One queue's share of a :class:`LogSet`: its log entry in the making. Each item is
    recorded once, in its latest state: an item put and claimed in the same set is
    inserted claimed, one put and acked is not recorded, one claimed and acked is only
    deleted."""

    __slots__ = ("items", "lsn", "next_seq", "q", "requests", "rev")

    def __init__(self, q: QueueState, lsn: int) -> None:
        self.q = q
        self.lsn = lsn
        self.items: dict[int, tuple[Any, ...]] = {}
        self.rev = 0
        self.next_seq = 0
        self.requests: list[RequestRecord] = []

    def insert(self, items: list[Item]) -> None:
        for item in items:
            self.items[item.seq] = insert_record(item)

    def update(self, items: list[Item]) -> None:
        for item in items:
            found = self.items.get(item.seq)
            if found is not None and found[0] == INSERT:
                self.items[item.seq] = insert_record(item)
            else:
                self.items[item.seq] = update_record(item)

    def delete(self, seqs: list[int]) -> None:
        for seq in seqs:
            found = self.items.get(seq)
            if found is not None and found[0] == INSERT:
                del self.items[seq]
            else:
                self.items[seq] = (DELETE, seq)

    def entry(self) -> LogEntry:
        return LogEntry(self.lsn, self.rev, self.next_seq, list(self.items.values()), self.requests)


class LogSet(WriteSet):
    """The writes of the mutations that share a transaction: one log row per queue they
    touch (usually one), after ``pre`` (statements that must commit first in the same
    transaction: creating a dead-letter queue's row).

    Args:
        store: the store.
        afters: the sets of the same queues submitted before it and not yet settled; when
            one fails this one fails too (it was planned on top of them).
    """

    def __init__(self, store: Store, afters: list[WriteSet]) -> None:
        super().__init__(loop=store.loop)
        self.store = store
        self.afters = afters
        self.parts: dict[QueueState, LogPart] = {}
        self.pre: list[Statement] = []
        self._entries: list[tuple[QueueState, LogEntry]] = []
        self.future.add_done_callback(self._landed)

    def part(self, q: QueueState) -> LogPart:
        """``q``'s part (numbered with the queue's next lsn when new)."""
        found = self.parts.get(q)
        if found is None:
            found = self.parts[q] = LogPart(q, q.next_lsn)
            q.next_lsn += 1
        return found

    def broken(self) -> BaseException | None:
        for after in self.afters:
            if not after.future.done():
                continue
            if after.future.cancelled():
                return self.chain_error(asyncio.CancelledError())
            cause = after.future.exception()
            if cause is not None:
                return self.chain_error(cause)
        return None

    def render(self) -> list[Statement]:
        rows = []
        for q, part in self.parts.items():
            if not part.rev and not part.items:
                continue  # nothing was written to it after all
            entry = part.entry()
            self._entries.append((q, entry))
            rows.append(self.store.queue_log_row(q.account, q.name, entry.lsn, entry.encode()))
        stmts = list(self.pre)
        if rows:
            stmts.append(self.store.queue_log_statement(rows))
        return stmts

    def _landed(self, future: asyncio.Future[None]) -> None:
        self.afters = []  # settled: the sets after it need only its outcome
        if future.cancelled() or future.exception() is not None:
            return
        for q, entry in self._entries:
            q.log_entries.append(entry)
