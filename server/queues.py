"""Durable named queues: puts, leased claims, acks, dead-lettering, redrive and watches.

The store is the source of truth; :class:`QueueManager` keeps every queue in memory (a
:class:`~apothic.server.queue_state.QueueState`: its items, a ready heap per partition and a
timer heap for leases and delays) and rebuilds it from the store at start. Each operation
changes memory synchronously, adds its writes to the queue's open write set in that same
order, and answers once that set committed, so concurrent operations share transactions and
never interleave inconsistently. A write set is persisted as one appended log row per queue
it touches (:class:`~apothic.server.queue_oplog.LogSet`: each item in its latest state, the
new rev, the request ids it applied); a background compactor folds committed log rows into
the queue's item and request rows in one transaction that deletes them, and a load replays
what is left over those rows (apothic.server.queue_oplog). Moving items between queues
(dead-lettering, redrive) writes both queues' log rows in one transaction. Watchers see each
committed change once it landed, in commit order (apothic.server.queue_log).

Guarantees:

- Every committed mutation bumps the queue's ``rev`` (persisted; it survives restarts) and
  is published to its watchers as one change at that rev; a failed commit publishes nothing.
- FIFO per partition among items never redelivered: the ready heap is ordered by ``seq``.
- A claim's receipt is ``"<seq>.<epoch>"``; the item's epoch bumps with every claim, so a
  receipt is stale once its lease expired, it was released or acked, or it was claimed again.
- An expired lease needs no write: a leased item whose deadline passed is visible again
  (after a restart too), with no rev and no event. When that claim was the item's
  ``max_attempts``-th, the item moves to ``<name>.dlq`` instead, in one transaction.
- ``maxsize`` bounds the items of each partition (visible, delayed or leased, until acked or
  removed); a put that does not fit waits for room or fails. A dead-letter queue never has
  one, and redrive ignores it: moving items must not fail.
- An ephemeral queue is deleted when its heartbeats stop for :data:`EPHEMERAL_LEASE_S`.
- Expiry runs on ``now`` (injectable): lazily at every operation, and from a background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from apothic.server.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from apothic.server.queue_engine import QueueEngine
from apothic.server.queue_log import (
    ACKED,
    CLAIMED,
    RELEASED,
    REMOVED,
    RENEWED,
    ItemSnapshot,
    QueueEvent,
    Shown,
)
from apothic.server.queue_state import (
    DEFAULT_LEASE_S,
    DLQ_SUFFIX,
    EPHEMERAL_LEASE_S,
    MAX_ATTEMPTS_LIMIT,
    MAX_BATCH_ITEMS,
    MAX_DELAY_S,
    MAX_ITEM_BYTES,
    MAX_LEASE_S,
    MAX_MAXSIZE,
    MAX_WAIT_S,
    Item,
    QueueState,
    QueueView,
    TakenItem,
    check_seconds,
    dt,
    validate_queue_name,
)
from apothic.server.watch import Change, ChangeLog, WatchItem, watch

__all__ = [
    "DEFAULT_LEASE_S",
    "DLQ_SUFFIX",
    "EPHEMERAL_LEASE_S",
    "MAX_ITEM_BYTES",
    "MAX_WAIT_S",
    "QueueManager",
    "QueueView",
    "TakenItem",
    "validate_queue_name",
]


class QueueManager(QueueEngine):
    """Every queue of every account, in memory over the store: the operations the
    QueueService offers.

    Args:
        store: the open store.
        now: the server's clock (seconds since the epoch); tests inject their own.
        watch: how watch streams retain changes and report progress.
    """

    # -- queues ------------------------------------------------------------------------

    async def create(
        self,
        account: str,
        name: str,
        max_attempts: int | None,
        *,
        maxsize: int | None = None,
        ephemeral: bool = False,
    ) -> tuple[QueueView, bool]:
        """Creates a queue, or returns the existing one; returns it and whether it is new.

        Args:
            account: the caller's account.
            name: the queue's name; empty for an ephemeral queue means a unique one.
            max_attempts: claims an item gets before it is dead-lettered (None: keep an
                existing queue's, 0 for a new one: no limit).
            maxsize: items per partition (None: keep an existing queue's, 0 for a new one:
                unbounded).
            ephemeral: the queue must be new and is deleted unless heartbeated every
                :data:`EPHEMERAL_LEASE_S` seconds.

        Raises:
            InvalidArgument: a bad name, max_attempts or maxsize.
            FailedPrecondition: the queue exists with another ``max_attempts`` or
                ``maxsize``, or exists at all when ``ephemeral``.
        """
        if ephemeral and not name:
            name = f"ephemeral-{secrets.token_hex(8)}"
        validate_queue_name(name)
        if max_attempts is not None and not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(f"max_attempts must be from 0 (no limit) to {MAX_ATTEMPTS_LIMIT}, got {max_attempts}")
        if maxsize is not None and not 0 <= maxsize <= MAX_MAXSIZE:
            raise InvalidArgument(f"maxsize must be from 0 (unbounded) to {MAX_MAXSIZE:,}, got {maxsize}")
        if maxsize and name.endswith(DLQ_SUFFIX):
            raise InvalidArgument(
                f"queue {name!r} is named like a dead-letter queue, which never has a maxsize "
                "(dead-lettering must not fail); drop maxsize or pick another name"
            )
        q = self._queues.get((account, name))
        if q is not None:
            if ephemeral:
                raise FailedPrecondition(
                    f"queue {name!r} already exists; an ephemeral queue must be new (leave the name empty for a "
                    "unique one)"
                )
            if max_attempts is not None and max_attempts != q.max_attempts:
                raise FailedPrecondition(
                    f"queue {name!r} exists with max_attempts={q.max_attempts}; delete it to change that"
                )
            if maxsize is not None and maxsize != q.maxsize:
                raise FailedPrecondition(f"queue {name!r} exists with maxsize={q.maxsize}; delete it to change that")
            return q.view(), False
        now = self.now()
        expires_at = now + EPHEMERAL_LEASE_S if ephemeral else None
        q = self._queues[(account, name)] = QueueState(
            account,
            name,
            max_attempts or 0,
            Shown(1, self.watch_settings.retention, self.watch_settings.retention_bytes),
            maxsize=maxsize or 0,
            expires_at=expires_at,
        )
        stmt = self.store.queue_create_statement(
            account,
            name,
            q.max_attempts,
            dt(now),
            maxsize=q.maxsize,
            expires_at=dt(expires_at) if expires_at is not None else None,
        )
        await self._commit(q, [stmt])
        return q.view(), True

    async def get(self, account: str, name: str) -> QueueView:
        """Returns a queue's state.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        ticked = self._tick(q)
        if ticked is not None:
            await self._commit(q, ticked)
        last = q.last_set
        if last is not None and not last.future.done():
            # A read answers with committed state only: what another caller's write (or a
            # dead-letter move into this queue) has planned but not yet committed is waited for.
            with contextlib.suppress(Exception):
                await asyncio.shield(last.future)
            q = self._get(account, name)
        return q.view()

    async def delete(self, account: str, name: str) -> None:
        """Deletes a queue, its items and its dead-letter queue; their watches end.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        await self._commit(q, self._drop(q))

    async def heartbeat(self, account: str, name: str) -> float:
        """Keeps an ephemeral queue alive for another :data:`EPHEMERAL_LEASE_S` seconds
        (returned). Not a mutation of the queue's items: no rev, no event.

        Raises:
            NotFound: no such queue (an ephemeral one may have expired already).
            FailedPrecondition: the queue is not ephemeral.
        """
        q = self._get(account, name)
        if q.expires_at is None:
            raise FailedPrecondition(f"queue {name!r} is not ephemeral: it lives until deleted and needs no heartbeat")
        q.expires_at = self.now() + EPHEMERAL_LEASE_S
        await self._commit(q, [self.store.queue_expiry_statement(account, name, dt(q.expires_at))])
        return EPHEMERAL_LEASE_S

    # -- items -------------------------------------------------------------------------

    async def put(
        self,
        account: str,
        name: str,
        partition: str,
        payloads: list[tuple[str, bytes]],
        request_id: str = "",
        *,
        wait_s: float = 0.0,
    ) -> int:
        """Appends items to a partition, all or none; returns the rev that committed them.
        When they do not fit under the queue's ``maxsize``, waits up to ``wait_s`` (at most
        :data:`MAX_WAIT_S`) for room.

        Raises:
            InvalidArgument: no items, too many, one over :data:`MAX_ITEM_BYTES`, more than
                ``maxsize``, or a negative wait.
            NotFound: no such queue (also when it is deleted while waiting).
            ResourceExhausted: the partition stayed full.
        """
        if not payloads or len(payloads) > MAX_BATCH_ITEMS:
            raise InvalidArgument(f"put takes 1 to {MAX_BATCH_ITEMS} items, got {len(payloads)}")
        for index, (_, data) in enumerate(payloads):
            if len(data) > MAX_ITEM_BYTES:
                raise InvalidArgument(
                    f"item {index} is {len(data):,} bytes serialized, over the {MAX_ITEM_BYTES:,}-byte queue item "
                    "limit; put a reference instead (a file on a Volume, an object in a bucket)"
                )
        if wait_s < 0:
            raise InvalidArgument(f"wait_s must not be negative, got {wait_s:g}")
        # The loop's clock (time.monotonic), without asking for the loop (a system call).
        give_up = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            if self._closed:
                raise Unavailable("the control plane is shutting down; retry against another replica or later")
            q = self._get(account, name)
            if q.maxsize and len(payloads) > q.maxsize:
                raise InvalidArgument(
                    f"a put of {len(payloads)} items never fits queue {name!r}, which holds at most "
                    f"maxsize={q.maxsize} items per partition; put fewer at a time"
                )
            replayed = await self._replay(q, request_id, "put")
            if replayed is not None:
                return int(replayed["rev"])
            room = q.room.waiter()
            ticked = self._tick(q)
            if q.fits(partition, len(payloads)):
                break
            if ticked is not None:
                await self._commit(q, ticked)
            left = give_up - time.monotonic()
            if left <= 0:
                raise ResourceExhausted(
                    f"queue {name!r} partition {partition!r} is full: it holds {q.counts.get(partition, 0)} of "
                    f"maxsize={q.maxsize} items and {len(payloads)} more do not fit; put with block=True (or a longer "
                    "timeout) to wait for consumers"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), left)
        now = self.now()
        items = []
        events = []
        for fmt, data in payloads:
            item = Item(seq=q.next_seq, partition=partition, format=fmt, data=data, enqueued_at=now, visible_at=now)
            q.next_seq += 1
            q.add(item)
            q.make_ready(item)
            items.append(item)
            events.append(QueueEvent.put(item))
        writes = self._writes(q)
        writes.part(q).insert(items)
        result: dict[str, Any] = {"op": "put"}
        record = self._bump(q, writes, events, request_id, result)
        q.signal.fire()
        await self._commit(q, writes, record)
        return int(result["rev"])

    async def take(
        self,
        account: str,
        name: str,
        partition: str,
        n: int,
        *,
        lease_s: float | None,
        wait_s: float,
        request_id: str = "",
    ) -> tuple[list[TakenItem], int]:
        """Claims up to ``n`` visible items for ``lease_s`` seconds, or with ``lease_s`` None
        removes them at once (a get: at-most-once). Waits up to ``wait_s`` (at most
        :data:`MAX_WAIT_S`) for an item when none is visible. Returns the items and the rev.

        Raises:
            InvalidArgument: a bad count, lease or wait.
            NotFound: no such queue (also when it is deleted while waiting).
        """
        if not 1 <= n <= MAX_BATCH_ITEMS:
            raise InvalidArgument(f"n must be from 1 to {MAX_BATCH_ITEMS}, got {n}")
        if lease_s is not None:
            check_seconds("lease_s", lease_s, 0.001, MAX_LEASE_S)
        if wait_s < 0:
            raise InvalidArgument(f"wait_s must not be negative, got {wait_s:g}")
        # The loop's clock (time.monotonic), without asking for the loop (a system call).
        give_up = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            if self._closed:
                raise Unavailable("the control plane is shutting down; retry against another replica or later")
            q = self._get(account, name)
            replayed = await self._replay(q, request_id, "take")
            if replayed is not None:
                return self._replay_claims(q, replayed), int(replayed["rev"])
            waiter = q.signal.waiter()
            ticked = self._tick(q)
            items = q.pop_ready(partition, n)
            if items:
                return await self._take(q, items, lease_s, request_id)
            if ticked is not None:
                await self._commit(q, ticked)
            left = give_up - time.monotonic()
            if left <= 0:
                return [], q.rev
            if q.timers:
                left = min(left, max(0.001, q.timers[0][0] - self.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), left)

    async def _take(
        self, q: QueueState, items: list[Item], lease_s: float | None, request_id: str
    ) -> tuple[list[TakenItem], int]:
        result: dict[str, Any] = {"op": "take"}
        events = []
        writes = self._writes(q)
        part = writes.part(q)
        if lease_s is None:
            taken = []
            for item in items:
                item.attempt += 1
                taken.append(self._taken(item, claimed=False))
                q.remove(item.seq)
                events.append(QueueEvent(REMOVED, item.seq, item.partition, attempt=item.attempt))
            part.delete([i.seq for i in items])
        else:
            deadline = self.now() + lease_s
            for item in items:
                item.attempt += 1
                item.epoch += 1
                item.leased = True
                item.lease_deadline = deadline
                q.schedule(deadline, item)
                events.append(
                    QueueEvent(
                        CLAIMED,
                        item.seq,
                        item.partition,
                        attempt=item.attempt,
                        lease_deadline=deadline,
                        last_error=item.last_error,
                    )
                )
            taken = [self._taken(item, claimed=True) for item in items]
            part.update(items)
            result["claims"] = [[i.seq, i.epoch] for i in items]
        record = self._bump(q, writes, events, request_id, result)
        await self._commit(q, writes, record)
        return taken, int(result["rev"])

    def _replay_claims(self, q: QueueState, result: dict[str, Any]) -> list[TakenItem]:
        """The claims of a replayed ClaimItems that are still held."""
        out = []
        for seq, epoch in result.get("claims", ()):
            item = q.items.get(seq)
            if item is not None and item.epoch == epoch and item.leased and item.lease_deadline > self.now():
                out.append(self._taken(item, claimed=True))
        return out

    async def ack(self, account: str, name: str, receipts: list[str], request_id: str = "") -> int:
        """Acknowledges claims (all or none); the items are gone for good. Returns the rev.

        Raises:
            InvalidArgument: no receipts, or a malformed one.
            FailedPrecondition: a stale receipt.
            NotFound: no such queue.
        """
        q = self._get(account, name)
        if not receipts:
            raise InvalidArgument("ack takes at least one receipt")
        replayed = await self._replay(q, request_id, "ack")
        if replayed is not None:
            return int(replayed["rev"])
        ticked = self._tick(q)
        try:
            items = {item.seq: item for item in (self._held(q, r) for r in receipts)}
        except DomainError as exc:
            await self._guarded(q, ticked, exc)
        events = []
        for item in items.values():
            q.remove(item.seq)
            events.append(QueueEvent(ACKED, item.seq, item.partition, attempt=item.attempt))
        writes = self._writes(q)
        writes.part(q).delete(list(items))
        result: dict[str, Any] = {"op": "ack"}
        record = self._bump(q, writes, events, request_id, result)
        await self._commit(q, writes, record)
        return int(result["rev"])

    async def renew(
        self, account: str, name: str, receipt: str, lease_s: float, request_id: str = ""
    ) -> tuple[datetime, int]:
        """Extends a claim's lease to ``lease_s`` from now; returns the deadline and the rev.

        Raises:
            InvalidArgument: a malformed receipt or a bad lease.
            FailedPrecondition: a stale receipt.
            NotFound: no such queue.
        """
        q = self._get(account, name)
        check_seconds("lease_s", lease_s, 0.001, MAX_LEASE_S)
        replayed = await self._replay(q, request_id, "renew")
        if replayed is not None:
            return dt(replayed["deadline"]), int(replayed["rev"])
        ticked = self._tick(q)
        try:
            item = self._held(q, receipt)
        except DomainError as exc:
            await self._guarded(q, ticked, exc)
        item.lease_deadline = self.now() + lease_s
        q.schedule(item.lease_deadline, item)
        writes = self._writes(q)
        writes.part(q).update([item])
        result: dict[str, Any] = {"op": "renew", "deadline": item.lease_deadline}
        event = QueueEvent(RENEWED, item.seq, item.partition, attempt=item.attempt, lease_deadline=item.lease_deadline)
        record = self._bump(q, writes, [event], request_id, result)
        await self._commit(q, writes, record)
        return dt(item.lease_deadline), int(result["rev"])

    async def release(
        self, account: str, name: str, receipt: str, delay_s: float = 0.0, error: str = "", request_id: str = ""
    ) -> tuple[bool, int]:
        """Gives a claimed item back, visible after ``delay_s``; an item that used up
        ``max_attempts`` moves to the dead-letter queue. Returns whether it did, and the rev.

        Raises:
            InvalidArgument: a malformed receipt or a bad delay.
            FailedPrecondition: a stale receipt.
            NotFound: no such queue.
        """
        q = self._get(account, name)
        check_seconds("delay_s", delay_s, 0.0, MAX_DELAY_S)
        replayed = await self._replay(q, request_id, "release")
        if replayed is not None:
            return bool(replayed["dead_lettered"]), int(replayed["rev"])
        ticked = self._tick(q)
        try:
            item = self._held(q, receipt)
        except DomainError as exc:
            await self._guarded(q, ticked, exc)
        item.leased = False
        item.last_error = error or f"released after attempt {item.attempt}"
        dead = bool(q.max_attempts and item.attempt >= q.max_attempts)
        if dead:
            writes, events = self._dead_letter(q, [item])
        else:
            item.visible_at = self.now() + delay_s
            if delay_s > 0:
                q.schedule(item.visible_at, item)
            else:
                q.make_ready(item)
                q.signal.fire()
            writes = self._writes(q)
            writes.part(q).update([item])
            events = [
                QueueEvent(
                    RELEASED,
                    item.seq,
                    item.partition,
                    attempt=item.attempt,
                    visible_at=item.visible_at,
                    delay_s=delay_s,
                    last_error=item.last_error,
                )
            ]
        result: dict[str, Any] = {"op": "release", "dead_lettered": dead}
        record = self._bump(q, writes, events, request_id, result)
        await self._commit(q, writes, record)
        return dead, int(result["rev"])

    async def length(self, account: str, name: str, partition: str | None) -> tuple[int, int]:
        """Counts items not yet acked (leased ones included) in a partition, or all when
        ``partition`` is None; returns the count and the rev.

        Raises:
            NotFound: no such queue.
        """
        view = await self.get(account, name)
        if partition is None:
            return view.length, view.rev
        return self._get(account, name).counts.get(partition, 0), view.rev

    async def clear(self, account: str, name: str, partition: str | None, request_id: str = "") -> tuple[int, int]:
        """Removes every item of a partition (all partitions when None), leased ones
        included; returns how many and the rev.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        replayed = await self._replay(q, request_id, "clear")
        if replayed is not None:
            return int(replayed["removed"]), int(replayed["rev"])
        self._tick(q)  # its moves join the write set below
        gone = [item for item in q.items.values() if partition is None or item.partition == partition]
        for item in gone:
            q.remove(item.seq)
        events = [QueueEvent(REMOVED, item.seq, item.partition, attempt=item.attempt) for item in gone]
        writes = self._writes(q)
        writes.part(q).delete([item.seq for item in gone])
        result: dict[str, Any] = {"op": "clear", "removed": len(gone)}
        record = self._bump(q, writes, events, request_id, result)
        await self._commit(q, writes, record)
        return len(gone), int(result["rev"])

    async def redrive(self, account: str, name: str, request_id: str = "") -> tuple[int, int]:
        """Moves every item of ``<name>.dlq`` back to the queue with a fresh attempt count,
        oldest first (regardless of ``maxsize``); returns how many and the queue's rev.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        replayed = await self._replay(q, request_id, "redrive")
        if replayed is not None:
            return int(replayed["moved"]), int(replayed["rev"])
        self._tick(q)  # its moves commit before (or with) the write set below
        dlq = self._queues.get((account, q.dlq_name))
        moved: list[Item] = []
        events: list[QueueEvent] = []
        if dlq is not None:
            self._tick(dlq)
            moved = [dlq.items[seq] for seq in sorted(dlq.items)]
        if dlq is not None and moved:
            writes = self._writes(q, dlq)
            theirs, events = self._move(dlq, q, moved, writes, redrive=True)
            self._bump(dlq, writes, theirs)
        else:
            writes = self._writes(q)
        result: dict[str, Any] = {"op": "redrive", "moved": len(moved)}
        record = self._bump(q, writes, events, request_id, result)
        await self._commit(q, writes, record)
        return len(moved), int(result["rev"])

    # -- watches -----------------------------------------------------------------------

    async def watch(
        self, account: str, name: str, *, snapshot: bool, after_rev: int | None, partition: str | None
    ) -> AsyncIterator[WatchItem]:
        """Streams a queue's watch (see apothic.server.watch): optionally a snapshot of its
        items (:class:`~apothic.server.queue_log.ItemSnapshot`), then its changes (a
        :class:`~apothic.server.watch.Change` of :class:`~apothic.server.queue_log.QueueEvent`
        per rev), progress markers and resets. With ``partition``, only that partition's
        items and events (a change with none of them is left out).

        Raises:
            InvalidArgument: a bad name, or ``after_rev`` after the queue's current rev.
            NotFound: no such queue, or it was deleted while watched (the stream ends).
        """
        q = self._get(account, name)
        shown = q.shown
        what = f"queue {name!r}"
        # A rev already answered to a caller may still be landing: wait for it rather than
        # reject it as "after the current rev".
        while after_rev is not None and shown.log.rev < after_rev <= q.rev and not shown.log.closed:
            waiter = shown.log.waiter()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), 1.0)
            q = self._get(account, name)

        def log_of() -> ChangeLog[QueueEvent]:
            current = self._queues.get((account, name))
            if current is None or current.shown is not shown:
                raise NotFound(f"{what} was deleted")
            return shown.log

        def entries() -> list[ItemSnapshot]:
            return shown.snapshot(partition, self.now())

        async for item in watch(
            log_of,
            what=what,
            snapshot=entries if snapshot else None,
            after_rev=after_rev,
            settings=self.watch_settings,
        ):
            if partition is not None and isinstance(item, Change):
                kept = tuple(ev for ev in item.events if ev.partition == partition)
                if not kept:
                    continue
                item = Change(item.rev, kept)
            yield item
