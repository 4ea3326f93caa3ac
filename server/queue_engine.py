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
from apothic.server.watch import WatchSettings

log = logging.getLogger("apothic.server.queues")

#: How often the expiry loop looks when no timer is due sooner.
_EXPIRY_POLL_S = 0.5


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
            if owner is not None:
                owner.requests.restore(row["request_id"], Request(dict(row["result"])), row.get("at") or 0.0)
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
        stmts: list[Statement],
        events: list[QueueEvent],
        request_id: str = "",
        result: dict[str, Any] | None = None,
    ) -> Request | None:
        """Bumps the rev (``result`` gets it), stages the change its watchers will see once
        the commit lands, and records the request id."""
        q.rev += 1
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
        stmts += self.store.queue_request_statements(
            q.account, q.name, request_id, q.request_n, result, evict or [], now
        )
        return record

    async def _commit(self, q: QueueState, stmts: list[Statement], record: Request | None = None) -> None:
        """Commits statements (with the changes staged since the last commit) and waits."""
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
