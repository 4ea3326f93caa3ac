"""The machinery every queue operation shares: loading queues from the store (their rows
with their log rows replayed over them), applying due timers, moving items between queues,
committing each mutation in order (as appended log rows, apothic.server.queue_oplog) and
folding committed log rows into the queue rows in the background (the compactor).

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
from apothic.server.queue_oplog import MAX_FOLD, Compaction, LogEntry, LogSet, compaction, folded, replay
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
#: How often the compactor folds committed log rows into queue rows.
COMPACT_INTERVAL_S = 0.25


class QueueEngine:
    """Every queue of every account, in memory over the store.

    Args:
        store: the open store.
        now: the server's clock (seconds since the epoch); tests inject their own.
        watch: how watch streams retain changes and report progress.
        compact_interval_s: how often the compactor (started by :meth:`start`) folds
            committed log rows into queue rows.
    """

    def __init__(
        self,
        store: Store,
        *,
        now: Callable[[], float] = time.time,
        watch: WatchSettings | None = None,
        compact_interval_s: float = COMPACT_INTERVAL_S,
    ) -> None:
        self.store = store
        self.now = now
        self.watch_settings = watch or WatchSettings()
        self.compact_interval_s = compact_interval_s
        self._queues: dict[tuple[str, str], QueueState] = {}
        self._publisher = Publisher()
        #: The write set the changes staged with the publisher go to.
        self._staging: LogSet | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuilds every queue from the store (the truth after a restart): its rows with
        its log rows replayed over them."""
        # No fold runs meanwhile (the compactor starts later; a reload takes its queues out
        # of memory first, so none is planned for them).
        logs = await self.store.queue_log_rows()
        queues, items, requests = await self.store.queue_rows()
        self._queues = {}
        self._adopt(queues, items, requests, logs, {})

    def _adopt(
        self,
        queues: list[dict[str, Any]],
        items: list[dict[str, Any]],
        requests: list[dict[str, Any]],
        logs: list[dict[str, Any]],
        shown: dict[tuple[str, str], Shown],
    ) -> None:
        """Builds queues from store rows; a queue in ``shown`` keeps its watchers' view."""
        by_queue: dict[tuple[str, str], dict[int, Item]] = {}
        for row in items:
            by_queue.setdefault((row["account"], row["queue"]), {})[row["seq"]] = Item.from_row(row)
        log_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in logs:
            log_rows.setdefault((row["account"], row["queue"]), []).append(row)
        request_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in requests:
            request_rows.setdefault((row["account"], row["queue"]), []).append(row)
        now = self.now()
        for row in queues:
            key = (row["account"], row["name"])
            folded_lsn = row.get("folded_lsn") or 0
            rev, next_seq = row["rev"], row["next_seq"]
            mine = by_queue.get(key, {})
            entries = [
                LogEntry.decode(r["lsn"], r["ops"])
                for r in sorted(log_rows.get(key, ()), key=lambda r: int(r["lsn"]))
                if r["lsn"] > folded_lsn  # never, unless a fold ran meanwhile
            ]
            for entry in entries:
                replay(mine, entry)
                rev, next_seq = max(rev, entry.rev), max(next_seq, entry.next_seq)
            view = shown.get(key)
            if view is None:
                view = Shown(rev, self.watch_settings.retention, self.watch_settings.retention_bytes)
            else:
                # Reloaded after a failed commit: what watchers were sent may not match.
                view.log.invalidate("its state was reloaded from the store after a failed write")
                view.log.skip_to(rev)
            ordered = [mine[seq] for seq in sorted(mine)]
            view.reset(ordered)
            expires_at = row.get("expires_at")
            q = self._queues[key] = QueueState(
                row["account"],
                row["name"],
                row["max_attempts"],
                view,
                maxsize=row.get("maxsize") or 0,
                expires_at=secs(expires_at) if expires_at is not None else None,
                rev=rev,
                next_seq=next_seq,
            )
            q.folded_lsn = folded_lsn
            q.next_lsn = max(folded_lsn, entries[-1].lsn if entries else 0) + 1
            q.log_entries = entries
            for item in ordered:
                q.add(item)
                if item.leased:
                    q.schedule(item.lease_deadline, item)
                elif item.visible_at > now:
                    q.schedule(item.visible_at, item)
                else:
                    q.make_ready(item)
            # Request ids: the stored rows (by n), then those of the log, in lsn order.
            for req in sorted(request_rows.get(key, ()), key=lambda r: int(r["n"])):
                row_key, recorded = self.store.queue_request_entries(req)
                for request_id, answer, at in recorded:
                    q.requests.restore(request_id, Request(dict(answer)), at)
                q.request_rows[row_key] = [r[0] for r in recorded]
                q.request_n = max(q.request_n, req["n"])
            for entry in entries:
                for request_id, n, answer, at in entry.requests:
                    q.requests.restore(request_id, Request(dict(answer)), at or 0.0)
                    q.request_n = max(q.request_n, n)
        orphans = set(log_rows) - {(r["account"], r["name"]) for r in queues}
        if orphans:
            log.warning("log rows of %d queues that do not exist were ignored", len(orphans))

    def start(self) -> None:
        """Starts the loop that expires leases, ends release delays and deletes ephemeral
        queues whose heartbeats stopped, and the compactor."""
        self._expiry_task = asyncio.create_task(self._expiry_loop(), name="apothic-queue-expiry")
        self._compactor = asyncio.create_task(self._compact_loop(), name="apothic-queue-compactor")

    async def close(self) -> None:
        """Stops the expiry loop and the compactor and ends every waiting put, get or claim
        (UNAVAILABLE). Log rows not folded yet stay: the next load replays them."""
        self._closed = True
        for task in (self._expiry_task, self._compactor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._expiry_task = self._compactor = None
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

    async def _compact_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.compact_interval_s)
                while await self.compact() and any(len(q.log_entries) >= MAX_FOLD for q in self._queues.values()):
                    pass  # a backlog: fold on at once
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue compactor died: log rows pile up until a restart replays and folds them")
            raise

    async def compact(self) -> int:
        """Folds the committed log rows of every queue into its rows now (a queue whose
        previous fold is still in flight waits for the next round); returns how many
        queues it folded. A fold that fails leaves its log rows (logged; retried)."""
        pending: list[asyncio.Future[None]] = []
        for q in list(self._queues.values()):
            if q.compacting or not q.log_entries:
                continue
            plan = compaction(self.store, q)
            if plan is None:
                continue
            q.compacting = True
            future = self.store.queue_commit(plan.statements)
            future.add_done_callback(lambda f, q=q, plan=plan: self._compacted(q, plan, f))
            pending.append(future)
        if pending:
            await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
        return len(pending)

    def _compacted(self, q: QueueState, plan: Compaction, future: asyncio.Future[None]) -> None:
        q.compacting = False
        error = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if error is not None:
            log.error(
                "folding %d log rows of queue %r of %s failed (they stay, and are folded later): %s",
                len(plan.entries),
                q.name,
                q.account,
                error,
            )
            return
        folded(q, plan)

    async def expire(self) -> None:
        """Processes every due lease expiry and release delay now (wakes waiters, commits
        dead-letter moves) and deletes ephemeral queues whose heartbeats stopped."""
        now = self.now()
        for key, q in list(self._queues.items()):
            if key not in self._queues or self._queues[key] is not q:
                continue  # deleted or reloaded meanwhile
            writes: list[Statement] | LogSet | None
            if q.expires_at is not None and q.expires_at <= now:
                log.info("deleting ephemeral queue %r of %s: its client stopped heartbeating", q.name, q.account)
                writes = self._drop(q)
            else:
                writes = self._tick(q)
            if writes:
                try:
                    await self._commit(q, writes)
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

    def _tick(self, q: QueueState) -> LogSet | None:
        """Applies due timers in memory; returns the write set of the dead-letter moves it
        made (the caller commits it), if any."""
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
        if not dead:
            return None
        writes, events = self._dead_letter(q, dead)
        self._bump(q, writes, events)
        return writes

    def _dlq(self, q: QueueState) -> tuple[QueueState, Statement | None]:
        """``q``'s dead-letter queue, and the statement creating it when it is new."""
        dlq = self._queues.get((q.account, q.dlq_name))
        if dlq is not None:
            return dlq, None
        shown = Shown(1, self.watch_settings.retention, self.watch_settings.retention_bytes)
        dlq = self._queues[(q.account, q.dlq_name)] = QueueState(q.account, q.dlq_name, 0, shown)
        return dlq, self.store.queue_create_statement(q.account, dlq.name, 0, dt(self.now()))

    def _move(
        self, src: QueueState, dst: QueueState, items: list[Item], writes: LogSet, *, redrive: bool
    ) -> tuple[list[QueueEvent], list[QueueEvent]]:
        """Moves items to another queue with fresh seqs, ignoring its maxsize; returns the
        events of the source and of the destination (the callers bump both revs)."""
        src_events: list[QueueEvent] = []
        dst_events: list[QueueEvent] = []
        moved_items = []
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
            moved_items.append(moved)
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
        writes.part(src).delete([i.seq for i in items])
        writes.part(dst).insert(moved_items)
        dst.signal.fire()
        return src_events, dst_events

    def _dead_letter(self, q: QueueState, items: list[Item]) -> tuple[LogSet, list[QueueEvent]]:
        """Moves items to the dead-letter queue (bumping its rev); returns the write set and
        ``q``'s events (the caller bumps ``q``)."""
        dlq, create = self._dlq(q)
        writes = self._writes(q, dlq)
        if create is not None:
            writes.pre.append(create)
        mine, theirs = self._move(q, dlq, items, writes, redrive=False)
        self._bump(dlq, writes, theirs)
        return writes, mine

    def _bump(
        self,
        q: QueueState,
        writes: LogSet,
        events: list[QueueEvent],
        request_id: str = "",
        result: dict[str, Any] | None = None,
    ) -> Request | None:
        """Bumps the rev (``result`` gets it), stages the change its watchers will see once
        the commit lands, and records the request id."""
        q.rev += 1
        part = writes.part(q)
        part.rev, part.next_seq = q.rev, q.next_seq
        self._publisher.stage(q.shown, q.rev, events)
        if result is None:
            return None
        result["rev"] = q.rev
        if not request_id:
            return None
        record = Request(result)
        now = self.now()
        # Forgotten ids' stored rows go with the next fold (apothic.server.queue_oplog).
        q.requests.add(request_id, record, now, q.requests.due(now))
        q.request_n += 1
        part.requests.append((request_id, q.request_n, result, now))
        return record

    def _writes(self, q: QueueState, *others: QueueState) -> LogSet:
        """The write set a mutation of ``q`` (moving items to or from ``others``) joins: the
        queue's open one, shared with the mutations around it, unless one of ``others`` has
        a set in flight that it must come after; else a new one, submitted now (after every
        set of those queues)."""
        ws = q.write_set
        if ws is not None and not ws.taken and all(other.write_set is ws or _settled(other) for other in others):
            for other in others:
                other.write_set = other.last_set = ws
        else:
            afters = []
            for x in (q, *others):
                last = x.last_set
                if last is not None and not _succeeded(last) and last not in afters:
                    afters.append(last)
            ws = LogSet(self.store, afters)
            for x in (q, *others):
                x.write_set = x.last_set = ws
            self.store.submit_write_set(ws)
        if ws is not self._staging:
            if self._staging is not None:
                # What was staged so far lands with the set it was written to.
                self._publisher.submit(self._staging.future)
            self._staging = ws
        return ws

    def _seal(self, q: QueueState) -> None:
        """Closes the open write sets of ``q`` and the queues it moves items to or from, so
        that statements committed next come after them."""
        q.write_set = None
        for key in ((q.account, q.dlq_name), (q.account, q.name.removesuffix(DLQ_SUFFIX))):
            other = self._queues.get(key)
            if other is not None:
                other.write_set = None

    async def _commit(self, q: QueueState, writes: list[Statement] | LogSet, record: Request | None = None) -> None:
        """Commits statements (with the changes staged since the last commit) and waits; a
        write set is already queued."""
        if isinstance(writes, LogSet):
            future = writes.future
        else:
            self._seal(q)
            future = self.store.queue_commit(writes)
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
        logs = await self.store.queue_log_rows()
        queues, items, requests = await self.store.queue_rows()

        def mine(row: dict[str, Any], col: str) -> bool:
            return bool(row["account"] == account and row[col] in names)

        self._adopt(
            [r for r in queues if mine(r, "name")],
            [r for r in items if mine(r, "queue")],
            [r for r in requests if mine(r, "queue")],
            [r for r in logs if mine(r, "queue")],
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

    async def _guarded(self, q: QueueState, ticked: LogSet | None, exc: DomainError) -> NoReturn:
        """Commits what a tick already changed before re-raising a rejected call's error."""
        if ticked is not None:
            await self._commit(q, ticked)
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


def _succeeded(ws: LogSet) -> bool:
    future = ws.future
    return future.done() and not future.cancelled() and future.exception() is None


def _settled(q: QueueState) -> bool:
    """Whether every write set of ``q`` committed."""
    return q.last_set is None or _succeeded(q.last_set)
