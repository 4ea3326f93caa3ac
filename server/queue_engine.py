"""The machinery every queue operation shares: loading queues from the store, applying
due timers, moving items between queues, and committing each mutation in order.

:class:`QueueEngine` holds every queue of every account in memory
(:class:`~apothic.server.queue_state.QueueState`) over the store, which is the truth after a
restart or a failed commit. :class:`apothic.server.queues.QueueManager` builds the queue
operations on it; see that module for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from surrealdb import RecordID

from apothic.server.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from apothic.server.queue_log import DEAD_LETTERED, REDRIVEN, Publisher, QueueEvent, Shown
from apothic.server.queue_state import (
    DLQ_SUFFIX,
    Item,
    QueueState,
    Request,
    TakenItem,
    dt,
    secs,
    validate_queue_name,
)
from apothic.server.store import Statement, Store
from apothic.server.store_base import WriteSet
from apothic.server.watch import WatchSettings

log = logging.getLogger("apothic.server.queues")

#: How often the expiry loop looks when no timer is due sooner.
_EXPIRY_POLL_S = 0.5


class PlainWrites:
    """A mutation's writes as statements of its own (see :class:`QueueWrites`)."""

    def __init__(self, store: Store, account: str, name: str, stmts: list[Statement]) -> None:
        self.store, self.account, self.name, self.stmts = store, account, name, stmts

    def insert(self, items: list[Item]) -> None:
        self.stmts.append(self.store.queue_insert_items_statement(self.account, self.name, [i.doc() for i in items]))

    def update(self, items: list[Item]) -> None:
        self.stmts.append(
            self.store.queue_update_items_statement(self.account, self.name, [i.changes() for i in items])
        )

    def delete(self, seqs: list[int]) -> None:
        self.stmts.append(self.store.queue_delete_items_statement(self.account, self.name, seqs))


_INSERT, _UPDATE, _DELETE = 0, 1, 2


class QueueWrites(WriteSet):
    """The item, rev and request-id writes of the mutations of one queue that share a
    transaction. Each item is written once, in its latest state: an item put and claimed
    in the same set is inserted claimed, one put and acked is never written, one claimed
    and acked is only deleted."""

    def __init__(self, store: Store, account: str, name: str) -> None:
        super().__init__(loop=store.loop)
        self.store, self.account, self.name = store, account, name
        #: seq -> (_INSERT, whole row) | (_UPDATE, changed fields) | (_DELETE, None), as of
        #: the last mutation in the set that touched the item.
        self.items: dict[int, tuple[int, dict[str, Any] | None]] = {}
        self.rev = 0
        self.next_seq = 0
        #: (request id, n, result, applied at) of each recorded request id, stored in one
        #: row keyed ``row_key`` (the first one's n).
        self.requests: list[tuple[str, int, dict[str, Any], float]] = []
        self.row_key: int | None = None
        #: Stored request rows to delete.
        self.evicted: list[str | int] = []

    def insert(self, items: list[Item]) -> None:
        for item in items:
            self.items[item.seq] = (_INSERT, item.doc())

    def update(self, items: list[Item]) -> None:
        for item in items:
            found = self.items.get(item.seq)
            if found is not None and found[0] == _INSERT:
                self.items[item.seq] = (_INSERT, item.doc())
            else:
                self.items[item.seq] = (_UPDATE, item.changes())

    def delete(self, seqs: list[int]) -> None:
        for seq in seqs:
            found = self.items.get(seq)
            if found is not None and found[0] == _INSERT:
                del self.items[seq]
            else:
                self.items[seq] = (_DELETE, None)

    def render(self) -> list[Statement]:
        store, account, name = self.store, self.account, self.name
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        deletes: list[int] = []
        for seq, (kind, doc) in self.items.items():
            if kind == _INSERT:
                inserts.append(doc)  # type: ignore[arg-type]
            elif kind == _UPDATE:
                updates.append(doc)  # type: ignore[arg-type]
            else:
                deletes.append(seq)
        stmts: list[Statement] = []
        if deletes:
            stmts.append(store.queue_delete_items_statement(account, name, deletes))
        if inserts:
            stmts.append(store.queue_insert_items_statement(account, name, inserts))
        if updates:
            stmts.append(store.queue_update_items_statement(account, name, updates))
        if self.rev:
            stmts.append(store.queue_rev_statement(account, name, self.rev, self.next_seq))
        if self.evicted:
            stmts.append(store.queue_forget_requests_statement(account, name, self.evicted))
        if self.requests:
            assert self.row_key is not None
            stmts.append(store.queue_request_batch_statement(account, name, self.row_key, self.requests))
        return stmts


Writes = PlainWrites | QueueWrites


class QueueEngine:
    """Every queue of every account, in memory over the store.

    Args:
        store: the open store.
        now: the server's clock (seconds since the epoch); tests inject their own.
        watch: how watch streams retain changes and report progress.
    """

    def __init__(
        self, store: Store, *, now: Callable[[], float] = time.time, watch: WatchSettings | None = None
    ) -> None:
        self.store = store
        self.now = now
        self.watch_settings = watch or WatchSettings()
        self._queues: dict[tuple[str, str], QueueState] = {}
        self._publisher = Publisher()
        self._expiry_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuilds every queue from the store (the truth after a restart)."""
        queues, items, requests = await self.store.queue_rows()
        self._queues = {}
        self._adopt(queues, items, requests, {})

    def _adopt(
        self,
        queues: list[dict[str, Any]],
        items: list[dict[str, Any]],
        requests: list[dict[str, Any]],
        shown: dict[tuple[str, str], Shown],
    ) -> None:
        """Builds queues from store rows; a queue in ``shown`` keeps its watchers' view."""
        by_queue: dict[tuple[str, str], list[Item]] = {}
        for row in items:
            by_queue.setdefault((row["account"], row["queue"]), []).append(Item.from_row(row))
        now = self.now()
        for row in queues:
            key = (row["account"], row["name"])
            view = shown.get(key)
            if view is None:
                view = Shown(row["rev"], self.watch_settings.retention, self.watch_settings.retention_bytes)
            else:
                # Reloaded after a failed commit: what watchers were sent may not match.
                view.log.invalidate("its state was reloaded from the store after a failed write")
                view.log.skip_to(row["rev"])
            mine = by_queue.get(key, [])
            view.reset(mine)
            expires_at = row.get("expires_at")
            q = self._queues[key] = QueueState(
                row["account"],
                row["name"],
                row["max_attempts"],
                view,
                maxsize=row.get("maxsize") or 0,
                expires_at=secs(expires_at) if expires_at is not None else None,
                rev=row["rev"],
                next_seq=row["next_seq"],
            )
            for item in mine:
                q.add(item)
                if item.leased:
                    q.schedule(item.lease_deadline, item)
                elif item.visible_at > now:
                    q.schedule(item.visible_at, item)
                else:
                    q.make_ready(item)
        for row in requests:
            owner = self._queues.get((row["account"], row["queue"]))
            if owner is None:
                continue
            result = row["result"]
            row_key = row["id"].id[2] if isinstance(row.get("id"), RecordID) else row["request_id"]
            batch = result.get("batch") if isinstance(row_key, int) else None
            entries = batch if batch is not None else [(row["request_id"], result, row.get("at") or 0.0)]
            for request_id, answer, at in entries:
                owner.requests.restore(request_id, Request(dict(answer)), at or 0.0)
                owner.request_rows[request_id] = row_key
            owner.row_live[row_key] = owner.row_live.get(row_key, 0) + len(entries)
            owner.request_n = max(owner.request_n, row["n"])

    def start(self) -> None:
        """Starts the loop that expires leases, ends release delays and deletes ephemeral
        queues whose heartbeats stopped."""
        self._expiry_task = asyncio.create_task(self._expiry_loop(), name="apothic-queue-expiry")

    async def close(self) -> None:
        """Stops the expiry loop and ends every waiting put, get or claim (UNAVAILABLE)."""
        self._closed = True
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        for q in self._queues.values():
            q.signal.fire()
            q.room.fire()

    async def _expiry_loop(self) -> None:
        try:
            while True:
                await self.expire()
                now = self.now()
                due = [q.timers[0][0] - now for q in self._queues.values() if q.timers]
                await asyncio.sleep(min([_EXPIRY_POLL_S, *due]) if due else _EXPIRY_POLL_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue expiry loop died")
            raise

    async def expire(self) -> None:
        """Processes every due lease expiry and release delay now (wakes waiters, commits
        dead-letter moves) and deletes ephemeral queues whose heartbeats stopped."""
        now = self.now()
        for key, q in list(self._queues.items()):
            if key not in self._queues or self._queues[key] is not q:
                continue  # deleted or reloaded meanwhile
            if q.expires_at is not None and q.expires_at <= now:
                log.info("deleting ephemeral queue %r of %s: its client stopped heartbeating", q.name, q.account)
                stmts = self._drop(q)
            else:
                stmts = self._tick(q)
            if stmts:
                try:
                    await self._commit(q, stmts)
                except Unavailable as exc:
                    log.error("%s", exc)

    # -- internals ---------------------------------------------------------------------

    def _get(self, account: str, name: str) -> QueueState:
        validate_queue_name(name)
        q = self._queues.get((account, name))
        if q is None:
            raise NotFound(
                f"queue {name!r} not found; create it with Queue.from_name({name!r}, create_if_missing=True)"
            )
        return q

    def _tick(self, q: QueueState) -> list[Statement]:
        """Applies due timers in memory; returns the statements of dead-letter moves."""
        now = self.now()
        dead: list[Item] = []
        woke = False
        while q.timers and q.timers[0][0] <= now:
            when, seq, epoch = heapq.heappop(q.timers)
            item = q.items.get(seq)
            if item is None or item.epoch != epoch:
                continue
            if item.leased:
                if item.lease_deadline > now:
                    continue  # renewed: a later timer stands for it
                item.leased = False
                item.last_error = f"lease expired after attempt {item.attempt}"
                if q.max_attempts and item.attempt >= q.max_attempts:
                    dead.append(item)
                    continue
                item.visible_at = when
            elif item.visible_at > now:
                continue
            q.make_ready(item)
            woke = True
        if woke:
            q.signal.fire()
        stmts: list[Statement] = []
        if dead:
            self._bump(q, stmts, self._dead_letter(q, dead, stmts))
        return stmts

    def _dlq(self, q: QueueState, stmts: list[Statement]) -> QueueState:
        dlq = self._queues.get((q.account, q.dlq_name))
        if dlq is None:
            shown = Shown(1, self.watch_settings.retention, self.watch_settings.retention_bytes)
            dlq = self._queues[(q.account, q.dlq_name)] = QueueState(q.account, q.dlq_name, 0, shown)
            stmts.append(self.store.queue_create_statement(q.account, dlq.name, 0, dt(self.now())))
        return dlq

    def _move(
        self, src: QueueState, dst: QueueState, items: list[Item], stmts: list[Statement], *, redrive: bool
    ) -> tuple[list[QueueEvent], list[QueueEvent]]:
        """Moves items to another queue with fresh seqs, ignoring its maxsize; returns the
        events of the source and of the destination (the callers bump both revs)."""
        src_events: list[QueueEvent] = []
        dst_events: list[QueueEvent] = []
        docs = []
        now = self.now()
        for item in items:
            src.remove(item.seq)
            moved = Item(
                seq=dst.next_seq,
                partition=item.partition,
                format=item.format,
                data=item.data,
                enqueued_at=item.enqueued_at,
                visible_at=now,
                last_error=item.last_error,
                attempt=0 if redrive else item.attempt,
            )
            dst.next_seq += 1
            dst.add(moved)
            dst.make_ready(moved)
            docs.append(moved.doc())
            src_events.append(
                QueueEvent(
                    REDRIVEN if redrive else DEAD_LETTERED,
                    item.seq,
                    item.partition,
                    attempt=item.attempt,
                    last_error=item.last_error,
                    moved_to_seq=moved.seq,
                )
            )
            dst_events.append(QueueEvent.put(moved))
        stmts.append(self.store.queue_delete_items_statement(src.account, src.name, [i.seq for i in items]))
        stmts.append(self.store.queue_insert_items_statement(dst.account, dst.name, docs))
        dst.signal.fire()
        return src_events, dst_events

    def _dead_letter(self, q: QueueState, items: list[Item], stmts: list[Statement]) -> list[QueueEvent]:
        """Moves items to the dead-letter queue (bumping its rev); returns ``q``'s events."""
        dlq = self._dlq(q, stmts)
        mine, theirs = self._move(q, dlq, items, stmts, redrive=False)
        self._bump(dlq, stmts, theirs)
        return mine

    def _bump(
        self,
        q: QueueState,
        stmts: list[Statement] | Writes,
        events: list[QueueEvent],
        request_id: str = "",
        result: dict[str, Any] | None = None,
    ) -> Request | None:
        """Bumps the rev (``result`` gets it), stages the change its watchers will see once
        the commit lands, and records the request id."""
        q.rev += 1
        if isinstance(stmts, QueueWrites):
            stmts.rev, stmts.next_seq = q.rev, q.next_seq
        else:
            if isinstance(stmts, PlainWrites):
                stmts = stmts.stmts
            stmts.append(self.store.queue_rev_statement(q.account, q.name, q.rev, q.next_seq))
        self._publisher.stage(q.shown, q.rev, events)
        if result is None:
            return None
        result["rev"] = q.rev
        if not request_id:
            return None
        record = Request(result)
        now = self.now()
        evict = q.requests.due(now)
        q.requests.add(request_id, record, now, evict)
        q.request_n += 1
        gone = self._forget_requests(q, evict) if evict else []
        if isinstance(stmts, QueueWrites):
            if stmts.row_key is None:
                stmts.row_key = q.request_n
            row_key: str | int = stmts.row_key
            stmts.requests.append((request_id, q.request_n, result, now))
            stmts.evicted += gone
        else:
            row_key = request_id
            stmts += self.store.queue_request_statements(q.account, q.name, request_id, q.request_n, result, gone, now)
        q.request_rows[request_id] = row_key
        q.row_live[row_key] = q.row_live.get(row_key, 0) + 1
        return record

    @staticmethod
    def _forget_requests(q: QueueState, request_ids: list[str]) -> list[str | int]:
        """The stored rows to delete once ``request_ids`` are forgotten: a row recording
        several ids goes once none of them is remembered."""
        gone: list[str | int] = []
        for request_id in request_ids:
            row_key = q.request_rows.pop(request_id, request_id)
            left = q.row_live.get(row_key, 1) - 1
            if left > 0:
                q.row_live[row_key] = left
            else:
                q.row_live.pop(row_key, None)
                gone.append(row_key)
        return gone

    def _writes(self, q: QueueState, stmts: list[Statement]) -> Writes:
        """Where a mutation of ``q`` writes: the queue's open write set (shared with the
        mutations around it), or, when ``stmts`` already holds statements (a due timer
        dead-lettered items), those statements, committed on their own."""
        if stmts:
            return PlainWrites(self.store, q.account, q.name, stmts)
        ws = q.write_set
        if ws is None or ws.taken:
            ws = q.write_set = QueueWrites(self.store, q.account, q.name)
            self.store.submit_write_set(ws)
        return ws

    def _seal(self, q: QueueState) -> None:
        """Closes the open write sets of ``q`` and the queues it moves items to or from, so
        that statements committed next come after them."""
        q.write_set = None
        for key in ((q.account, q.dlq_name), (q.account, q.name.removesuffix(DLQ_SUFFIX))):
            other = self._queues.get(key)
            if other is not None:
                other.write_set = None

    async def _commit(self, q: QueueState, stmts: list[Statement] | Writes, record: Request | None = None) -> None:
        """Commits statements (with the changes staged since the last commit) and waits; a
        write set is already queued."""
        if isinstance(stmts, QueueWrites):
            future = stmts.future
        else:
            if isinstance(stmts, PlainWrites):
                stmts = stmts.stmts
            self._seal(q)
            future = self.store.queue_commit(stmts)
        self._publisher.submit(future)
        if record is not None:
            record.committed = future
        try:
            # Shielded: a cancelled caller leaves the commit (and what it publishes) alone.
            await asyncio.shield(future)
        except Exception as exc:
            await self._reload(q.account, q.name)
            raise Unavailable(
                f"queue {q.name!r}: the write did not commit ({exc}); retry it with the same request_id"
            ) from exc

    async def _reload(self, account: str, name: str) -> None:
        """Replaces a queue's (and its dead-letter queue's) memory with the store's truth."""
        await self.store.drain()
        names = {name, name + DLQ_SUFFIX, name.removesuffix(DLQ_SUFFIX)}
        shown: dict[tuple[str, str], Shown] = {}
        for key in [(account, n) for n in names]:
            old = self._queues.pop(key, None)
            if old is not None:
                shown[key] = old.shown
                old.signal.fire()
                old.room.fire()
        queues, items, requests = await self.store.queue_rows()

        def mine(row: dict[str, Any], col: str) -> bool:
            return bool(row["account"] == account and row[col] in names)

        self._adopt(
            [r for r in queues if mine(r, "name")],
            [r for r in items if mine(r, "queue")],
            [r for r in requests if mine(r, "queue")],
            shown,
        )
        for key, view in shown.items():
            if key not in self._queues:
                view.log.close()

    async def _replay(self, q: QueueState, request_id: str, op: str) -> dict[str, Any] | None:
        """What an already applied request answered (after its commit), or None."""
        record = q.requests.get(request_id) if request_id else None
        if record is None:
            return None
        if record.result.get("op") != op:
            raise InvalidArgument(
                f"request id {request_id!r} was already used for a {record.result.get('op')} on queue {q.name!r}; "
                "use a new id for each operation"
            )
        if record.committed is not None and not record.committed.done():
            try:
                await asyncio.shield(record.committed)
            except Exception:
                raise Unavailable(f"queue {q.name!r}: the original request did not commit; retry it") from None
        return record.result

    def _held(self, q: QueueState, receipt: str) -> Item:
        """The item a receipt holds a live lease on."""
        seq_text, _, epoch_text = receipt.partition(".")
        if not (seq_text.isdigit() and epoch_text.isdigit()):
            raise InvalidArgument(f"receipt {receipt!r} is malformed: pass a receipt from Queue.claim")
        item = q.items.get(int(seq_text))
        if item is None or item.epoch != int(epoch_text) or not item.leased or item.lease_deadline <= self.now():
            raise FailedPrecondition(
                f"receipt {receipt!r} of queue {q.name!r} is stale: its lease expired, or the item was "
                "released, acked or claimed again; claim it anew"
            )
        return item

    @staticmethod
    def _taken(item: Item, *, claimed: bool) -> TakenItem:
        return TakenItem(
            seq=item.seq,
            partition=item.partition,
            format=item.format,
            data=item.data,
            receipt=item.receipt if claimed else "",
            attempt=item.attempt,
            lease_deadline=dt(item.lease_deadline) if claimed else None,
            last_error=item.last_error,
        )

    async def _guarded(self, q: QueueState, stmts: list[Statement], exc: DomainError) -> NoReturn:
        """Commits what a tick already changed before re-raising a rejected call's error."""
        if stmts:
            await self._commit(q, stmts)
        raise exc

    def _drop(self, q: QueueState) -> list[Statement]:
        """Removes a queue and its dead-letter queue from memory; returns the statements
        that delete them (their logs close once those commit)."""
        stmts = self.store.queue_delete_statements(q.account, q.name)
        for key in ((q.account, q.name), (q.account, q.dlq_name)):
            gone = self._queues.pop(key, None)
            if gone is None:
                continue
            gone.signal.fire()
            gone.room.fire()
            self._publisher.stage_close(gone.shown)
            if gone is not q:
                stmts += self.store.queue_delete_statements(gone.account, gone.name)
        return stmts
