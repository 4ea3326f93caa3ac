"""Durable named queues: puts, leased claims, acks, dead-lettering and redrive.

The store is the source of truth; :class:`QueueManager` keeps every queue in memory (its
items, a ready heap per partition and a timer heap for leases and delays) and rebuilds it
from the store at start. Each operation changes memory synchronously, hands its statements
to the store's group committer in that same order, and answers once they committed, so
concurrent operations share transactions and never interleave inconsistently.

Guarantees:

- Every committed mutation bumps the queue's ``rev`` (persisted; it survives restarts).
- FIFO per partition among items never redelivered: the ready heap is ordered by ``seq``.
- A claim's receipt is ``"<seq>.<epoch>"``; the item's epoch bumps with every claim, so a
  receipt is stale once its lease expired, it was released or acked, or it was claimed again.
- An expired lease needs no write: a leased item whose deadline passed is visible again
  (after a restart too). When that claim was the item's ``max_attempts``-th, the item moves
  to ``<name>.dlq`` instead, in one transaction.
- Expiry runs on ``now`` (injectable): lazily at every operation, and from a background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from apothic.server.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from apothic.server.hub import Signal
from apothic.server.store import Statement, Store
from apothic.server.watch import WatchSettings

log = logging.getLogger("apothic.server.queues")

#: Largest item, in bytes of its serialized payload.
MAX_ITEM_BYTES = 1024 * 1024
#: Most items one put or claim handles.
MAX_BATCH_ITEMS = 10_000
#: The longest a GetItems/ClaimItems call waits on the server; the SDK asks again for more.
MAX_WAIT_S = 20.0
DEFAULT_LEASE_S = 30.0
MAX_LEASE_S = 12 * 3600.0
MAX_DELAY_S = 12 * 3600.0
MAX_ATTEMPTS_LIMIT = 1000
#: Applied request ids a queue remembers (the oldest are forgotten first).
REQUEST_IDS_KEPT = 1024
DLQ_SUFFIX = ".dlq"
#: How often the expiry loop looks when no timer is due sooner.
_EXPIRY_POLL_S = 0.5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EPOCH0 = datetime(1970, 1, 1, tzinfo=UTC)


def validate_queue_name(name: str) -> None:
    """Raises InvalidArgument unless ``name`` is a valid queue name."""
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"queue name {name!r} is invalid: use 1-128 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _secs(value: datetime) -> float:
    return value.timestamp()


@dataclass(frozen=True)
class QueueView:
    """A queue's state as an RPC reports it."""

    name: str
    rev: int
    max_attempts: int
    length: int
    dead_letter_queue: str


@dataclass(frozen=True)
class TakenItem:
    """An item handed out by a claim (with its receipt and lease) or a get (without)."""

    seq: int
    partition: str
    format: str
    data: bytes
    receipt: str
    attempt: int
    lease_deadline: datetime | None
    last_error: str


@dataclass
class _Item:
    seq: int
    partition: str
    format: str
    data: bytes
    enqueued_at: float
    attempt: int = 0
    epoch: int = 0
    leased: bool = False
    lease_deadline: float = 0.0
    visible_at: float = 0.0
    last_error: str = ""
    #: Whether a ready-heap entry stands for this item.
    in_ready: bool = False

    def changes(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "attempt": self.attempt,
            "epoch": self.epoch,
            "leased": self.leased,
            "lease_deadline": _dt(self.lease_deadline),
            "visible_at": _dt(self.visible_at),
            "last_error": self.last_error,
        }

    def doc(self) -> dict[str, Any]:
        return {
            **self.changes(),
            "partition": self.partition,
            "format": self.format,
            "data": self.data,
            "enqueued_at": _dt(self.enqueued_at),
        }

    @property
    def receipt(self) -> str:
        return f"{self.seq}.{self.epoch}"


@dataclass
class _Request:
    """What an applied request answered, and the commit a retry must wait for."""

    result: dict[str, Any]
    committed: asyncio.Future[None] | None = None


@dataclass(eq=False)
class _Queue:
    account: str
    name: str
    max_attempts: int
    rev: int = 1
    next_seq: int = 1
    items: dict[int, _Item] = field(default_factory=dict)
    ready: dict[str, list[int]] = field(default_factory=dict)
    #: ``(when, seq, epoch)``: a lease deadline or the end of a release delay.
    timers: list[tuple[float, int, int]] = field(default_factory=list)
    signal: Signal = field(default_factory=Signal)
    requests: OrderedDict[str, _Request] = field(default_factory=OrderedDict)
    #: Numbers recorded request ids, so the oldest can be forgotten first.
    request_n: int = 0

    def view(self) -> QueueView:
        return QueueView(self.name, self.rev, self.max_attempts, len(self.items), self.name + DLQ_SUFFIX)

    def make_ready(self, item: _Item) -> None:
        if not item.in_ready:
            item.in_ready = True
            heapq.heappush(self.ready.setdefault(item.partition, []), item.seq)

    def pop_ready(self, partition: str, n: int) -> list[_Item]:
        heap = self.ready.get(partition)
        out: list[_Item] = []
        while heap and len(out) < n:
            item = self.items.get(heapq.heappop(heap))
            if item is None or not item.in_ready:
                continue
            item.in_ready = False
            out.append(item)
        return out


def _check_seconds(what: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be from {low:g} to {high:g} seconds, got {value:g}")


class QueueManager:
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
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._expiry_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuilds every queue from the store (the truth after a restart)."""
        queues, items, requests = await self.store.queue_rows()
        self._queues = {}
        self._adopt(queues, items, requests)

    def _adopt(self, queues: list[dict[str, Any]], items: list[dict[str, Any]], requests: list[dict[str, Any]]) -> None:
        for row in queues:
            q = _Queue(row["account"], row["name"], row["max_attempts"], rev=row["rev"], next_seq=row["next_seq"])
            self._queues[(q.account, q.name)] = q
        for row in items:
            owner = self._queues.get((row["account"], row["queue"]))
            if owner is None:
                continue
            item = _Item(
                seq=row["seq"],
                partition=row["partition"],
                format=row["format"],
                data=row["data"],
                enqueued_at=_secs(row["enqueued_at"]),
                attempt=row["attempt"],
                epoch=row["epoch"],
                leased=row["leased"],
                lease_deadline=_secs(row["lease_deadline"]),
                visible_at=_secs(row["visible_at"]),
                last_error=row["last_error"],
            )
            owner.items[item.seq] = item
            if item.leased:
                heapq.heappush(owner.timers, (item.lease_deadline, item.seq, item.epoch))
            elif item.visible_at > self.now():
                heapq.heappush(owner.timers, (item.visible_at, item.seq, item.epoch))
            else:
                owner.make_ready(item)
        for row in requests:
            owner = self._queues.get((row["account"], row["queue"]))
            if owner is not None:
                owner.requests[row["request_id"]] = _Request(dict(row["result"]))
                owner.request_n = max(owner.request_n, row["n"])

    def start(self) -> None:
        """Starts the loop that expires leases and ends release delays."""
        self._expiry_task = asyncio.create_task(self._expiry_loop(), name="apothic-queue-expiry")

    async def close(self) -> None:
        """Stops the expiry loop and ends every waiting get or claim (UNAVAILABLE)."""
        self._closed = True
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        for q in self._queues.values():
            q.signal.fire()

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
        dead-letter moves)."""
        for q in list(self._queues.values()):
            if self._queues.get((q.account, q.name)) is not q:
                continue
            stmts = self._tick(q)
            if stmts:
                try:
                    await self._commit(q, stmts)
                except Unavailable as exc:
                    log.error("%s", exc)

    # -- internals ---------------------------------------------------------------------

    def _get(self, account: str, name: str) -> _Queue:
        validate_queue_name(name)
        q = self._queues.get((account, name))
        if q is None:
            raise NotFound(
                f"queue {name!r} not found; create it with Queue.from_name({name!r}, create_if_missing=True)"
            )
        return q

    def _tick(self, q: _Queue) -> list[Statement]:
        """Applies due timers in memory; returns the statements of dead-letter moves."""
        now = self.now()
        stmts: list[Statement] = []
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
                    stmts += self._dead_letter(q, item)
                    continue
                item.visible_at = when
            elif item.visible_at > now:
                continue
            q.make_ready(item)
            woke = True
        if woke:
            q.signal.fire()
        return stmts

    def _dlq(self, q: _Queue, stmts: list[Statement]) -> _Queue:
        name = q.name + DLQ_SUFFIX
        dlq = self._queues.get((q.account, name))
        if dlq is None:
            dlq = self._queues[(q.account, name)] = _Queue(q.account, name, 0)
            stmts.append(self.store.queue_create_statement(q.account, name, 0, _dt(self.now())))
        return dlq

    def _move(self, src: _Queue, dst: _Queue, items: list[_Item], *, reset: bool) -> list[Statement]:
        """Moves items to another queue with fresh seqs (one transaction's statements)."""
        stmts: list[Statement] = []
        docs = []
        for item in items:
            del src.items[item.seq]
            moved = _Item(
                seq=dst.next_seq,
                partition=item.partition,
                format=item.format,
                data=item.data,
                enqueued_at=item.enqueued_at,
                visible_at=self.now(),
                last_error=item.last_error,
                attempt=0 if reset else item.attempt,
            )
            dst.next_seq += 1
            dst.items[moved.seq] = moved
            dst.make_ready(moved)
            docs.append(moved.doc())
        stmts.append(self.store.queue_delete_items_statement(src.account, src.name, [i.seq for i in items]))
        stmts.append(self.store.queue_insert_items_statement(dst.account, dst.name, docs))
        for q in (src, dst):
            q.rev += 1
            stmts.append(self.store.queue_rev_statement(q.account, q.name, q.rev, q.next_seq))
        dst.signal.fire()
        return stmts

    def _dead_letter(self, q: _Queue, item: _Item) -> list[Statement]:
        stmts: list[Statement] = []
        dlq = self._dlq(q, stmts)
        return stmts + self._move(q, dlq, [item], reset=False)

    def _bump(self, q: _Queue, stmts: list[Statement], request_id: str, result: dict[str, Any]) -> _Request | None:
        """Bumps the rev (the caller's result gets it) and records the request id."""
        q.rev += 1
        result["rev"] = q.rev
        stmts.append(self.store.queue_rev_statement(q.account, q.name, q.rev, q.next_seq))
        if not request_id:
            return None
        record = q.requests[request_id] = _Request(result)
        q.request_n += 1
        evict = []
        while len(q.requests) > REQUEST_IDS_KEPT:
            evict.append(q.requests.popitem(last=False)[0])
        stmts += self.store.queue_request_statements(q.account, q.name, request_id, q.request_n, result, evict)
        return record

    async def _commit(self, q: _Queue, stmts: list[Statement], record: _Request | None = None) -> None:
        future = asyncio.get_running_loop().create_future() if record is not None else None
        if record is not None:
            record.committed = future
        try:
            await self.store.commit(stmts)
        except Exception as exc:
            if future is not None:
                future.set_exception(Unavailable(f"queue {q.name!r}: the original request did not commit"))
                future.exception()  # retrieved: nobody else may be waiting
            await self._reload(q.account, q.name)
            raise Unavailable(
                f"queue {q.name!r}: the write did not commit ({exc}); retry it with the same request_id"
            ) from exc
        if future is not None:
            future.set_result(None)

    async def _reload(self, account: str, name: str) -> None:
        """Replaces a queue's (and its dead-letter queue's) memory with the store's truth."""
        await self.store.drain()
        names = {name, name + DLQ_SUFFIX, name.removesuffix(DLQ_SUFFIX)}
        for key in [(account, n) for n in names]:
            old = self._queues.pop(key, None)
            if old is not None:
                old.signal.fire()
        queues, items, requests = await self.store.queue_rows()

        def mine(row: dict[str, Any], col: str) -> bool:
            return bool(row["account"] == account and row[col] in names)

        self._adopt(
            [r for r in queues if mine(r, "name")],
            [r for r in items if mine(r, "queue")],
            [r for r in requests if mine(r, "queue")],
        )

    async def _replay(self, q: _Queue, request_id: str, op: str) -> dict[str, Any] | None:
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
            await asyncio.shield(record.committed)
        return record.result

    def _held(self, q: _Queue, receipt: str) -> _Item:
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

    def _taken(self, item: _Item, *, claimed: bool) -> TakenItem:
        return TakenItem(
            seq=item.seq,
            partition=item.partition,
            format=item.format,
            data=item.data,
            receipt=item.receipt if claimed else "",
            attempt=item.attempt,
            lease_deadline=_dt(item.lease_deadline) if claimed else None,
            last_error=item.last_error,
        )

    async def _guarded(self, q: _Queue, stmts: list[Statement], exc: DomainError) -> NoReturn:
        """Commits what a tick already changed before re-raising a rejected call's error."""
        if stmts:
            await self._commit(q, stmts)
        raise exc

    # -- queues ------------------------------------------------------------------------

    async def create(self, account: str, name: str, max_attempts: int | None) -> tuple[QueueView, bool]:
        """Creates a queue, or returns the existing one; returns it and whether it is new.

        Raises:
            InvalidArgument: a bad name or max_attempts.
            FailedPrecondition: the queue exists with another ``max_attempts``.
        """
        validate_queue_name(name)
        if max_attempts is not None and not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(f"max_attempts must be from 0 (no limit) to {MAX_ATTEMPTS_LIMIT}, got {max_attempts}")
        q = self._queues.get((account, name))
        if q is not None:
            if max_attempts is not None and max_attempts != q.max_attempts:
                raise FailedPrecondition(
                    f"queue {name!r} exists with max_attempts={q.max_attempts}; delete it to change that"
                )
            return q.view(), False
        q = self._queues[(account, name)] = _Queue(account, name, max_attempts or 0)
        await self._commit(q, [self.store.queue_create_statement(account, name, q.max_attempts, _dt(self.now()))])
        return q.view(), True

    async def get(self, account: str, name: str) -> QueueView:
        """Returns a queue's state.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        stmts = self._tick(q)
        if stmts:
            await self._commit(q, stmts)
        return q.view()

    async def delete(self, account: str, name: str) -> None:
        """Deletes a queue, its items and its dead-letter queue.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        stmts = self.store.queue_delete_statements(account, name)
        del self._queues[(account, name)]
        q.signal.fire()
        dlq = self._queues.pop((account, name + DLQ_SUFFIX), None)
        if dlq is not None:
            dlq.signal.fire()
            stmts += self.store.queue_delete_statements(account, dlq.name)
        await self._commit(q, stmts)

    # -- items -------------------------------------------------------------------------

    async def put(
        self, account: str, name: str, partition: str, payloads: list[tuple[str, bytes]], request_id: str = ""
    ) -> int:
        """Appends items to a partition; returns the rev that committed them.

        Raises:
            InvalidArgument: no items, too many, or one over :data:`MAX_ITEM_BYTES`.
            NotFound: no such queue.
        """
        q = self._get(account, name)
        if not payloads or len(payloads) > MAX_BATCH_ITEMS:
            raise InvalidArgument(f"put takes 1 to {MAX_BATCH_ITEMS} items, got {len(payloads)}")
        for index, (_, data) in enumerate(payloads):
            if len(data) > MAX_ITEM_BYTES:
                raise InvalidArgument(
                    f"item {index} is {len(data):,} bytes serialized, over the {MAX_ITEM_BYTES:,}-byte queue item "
                    "limit; put a reference instead (a file on a Volume, an object in a bucket)"
                )
        replayed = await self._replay(q, request_id, "put")
        if replayed is not None:
            return int(replayed["rev"])
        stmts = self._tick(q)
        now = self.now()
        docs = []
        for fmt, data in payloads:
            item = _Item(seq=q.next_seq, partition=partition, format=fmt, data=data, enqueued_at=now, visible_at=now)
            q.next_seq += 1
            q.items[item.seq] = item
            q.make_ready(item)
            docs.append(item.doc())
        stmts.append(self.store.queue_insert_items_statement(account, name, docs))
        result: dict[str, Any] = {"op": "put"}
        record = self._bump(q, stmts, request_id, result)
        q.signal.fire()
        await self._commit(q, stmts, record)
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
            _check_seconds("lease_s", lease_s, 0.001, MAX_LEASE_S)
        if wait_s < 0:
            raise InvalidArgument(f"wait_s must not be negative, got {wait_s:g}")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(wait_s, MAX_WAIT_S)
        while True:
            if self._closed:
                raise Unavailable("the control plane is shutting down; retry against another replica or later")
            q = self._get(account, name)
            replayed = await self._replay(q, request_id, "take")
            if replayed is not None:
                return self._replay_claims(q, replayed), int(replayed["rev"])
            waiter = q.signal.waiter()
            stmts = self._tick(q)
            items = q.pop_ready(partition, n)
            if items:
                now = self.now()
                result: dict[str, Any] = {"op": "take"}
                if lease_s is None:
                    taken = []
                    for item in items:
                        item.attempt += 1
                        taken.append(self._taken(item, claimed=False))
                        del q.items[item.seq]
                    stmts.append(self.store.queue_delete_items_statement(account, name, [i.seq for i in items]))
                else:
                    for item in items:
                        item.attempt += 1
                        item.epoch += 1
                        item.leased = True
                        item.lease_deadline = now + lease_s
                        heapq.heappush(q.timers, (item.lease_deadline, item.seq, item.epoch))
                    taken = [self._taken(item, claimed=True) for item in items]
                    stmts.append(self.store.queue_update_items_statement(account, name, [i.changes() for i in items]))
                    result["claims"] = [[i.seq, i.epoch] for i in items]
                record = self._bump(q, stmts, request_id, result)
                await self._commit(q, stmts, record)
                return taken, int(result["rev"])
            if stmts:
                await self._commit(q, stmts)
            left = give_up - loop.time()
            if left <= 0:
                return [], q.rev
            if q.timers:
                left = min(left, max(0.001, q.timers[0][0] - self.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), left)

    def _replay_claims(self, q: _Queue, result: dict[str, Any]) -> list[TakenItem]:
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
        stmts = self._tick(q)
        try:
            items = {item.seq: item for item in (self._held(q, r) for r in receipts)}
        except DomainError as exc:
            await self._guarded(q, stmts, exc)
        for seq in items:
            del q.items[seq]
        stmts.append(self.store.queue_delete_items_statement(account, name, list(items)))
        result: dict[str, Any] = {"op": "ack"}
        record = self._bump(q, stmts, request_id, result)
        await self._commit(q, stmts, record)
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
        _check_seconds("lease_s", lease_s, 0.001, MAX_LEASE_S)
        replayed = await self._replay(q, request_id, "renew")
        if replayed is not None:
            return _dt(replayed["deadline"]), int(replayed["rev"])
        stmts = self._tick(q)
        try:
            item = self._held(q, receipt)
        except DomainError as exc:
            await self._guarded(q, stmts, exc)
        item.lease_deadline = self.now() + lease_s
        heapq.heappush(q.timers, (item.lease_deadline, item.seq, item.epoch))
        stmts.append(self.store.queue_update_items_statement(account, name, [item.changes()]))
        result: dict[str, Any] = {"op": "renew", "deadline": item.lease_deadline}
        record = self._bump(q, stmts, request_id, result)
        await self._commit(q, stmts, record)
        return _dt(item.lease_deadline), int(result["rev"])

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
        _check_seconds("delay_s", delay_s, 0.0, MAX_DELAY_S)
        replayed = await self._replay(q, request_id, "release")
        if replayed is not None:
            return bool(replayed["dead_lettered"]), int(replayed["rev"])
        stmts = self._tick(q)
        try:
            item = self._held(q, receipt)
        except DomainError as exc:
            await self._guarded(q, stmts, exc)
        item.leased = False
        item.last_error = error or f"released after attempt {item.attempt}"
        dead = bool(q.max_attempts and item.attempt >= q.max_attempts)
        if dead:
            stmts += self._dead_letter(q, item)
        else:
            item.visible_at = self.now() + delay_s
            if delay_s > 0:
                heapq.heappush(q.timers, (item.visible_at, item.seq, item.epoch))
            else:
                q.make_ready(item)
                q.signal.fire()
            stmts.append(self.store.queue_update_items_statement(account, name, [item.changes()]))
        result: dict[str, Any] = {"op": "release", "dead_lettered": dead}
        record = self._bump(q, stmts, request_id, result)
        await self._commit(q, stmts, record)
        return dead, int(result["rev"])

    async def length(self, account: str, name: str, partition: str | None) -> tuple[int, int]:
        """Counts items not yet acked (leased ones included) in a partition, or all when
        ``partition`` is None; returns the count and the rev.

        Raises:
            NotFound: no such queue.
        """
        view = await self.get(account, name)
        q = self._get(account, name)
        if partition is None:
            return view.length, view.rev
        return sum(1 for item in q.items.values() if item.partition == partition), view.rev

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
        stmts = self._tick(q)
        gone = [seq for seq, item in q.items.items() if partition is None or item.partition == partition]
        for seq in gone:
            del q.items[seq]
        stmts.append(self.store.queue_clear_statement(account, name, partition))
        result: dict[str, Any] = {"op": "clear", "removed": len(gone)}
        record = self._bump(q, stmts, request_id, result)
        await self._commit(q, stmts, record)
        return len(gone), int(result["rev"])

    async def redrive(self, account: str, name: str, request_id: str = "") -> tuple[int, int]:
        """Moves every item of ``<name>.dlq`` back to the queue with a fresh attempt count,
        oldest first; returns how many and the queue's rev.

        Raises:
            NotFound: no such queue.
        """
        q = self._get(account, name)
        replayed = await self._replay(q, request_id, "redrive")
        if replayed is not None:
            return int(replayed["moved"]), int(replayed["rev"])
        stmts = self._tick(q)
        dlq = self._queues.get((account, name + DLQ_SUFFIX))
        moved: list[_Item] = []
        if dlq is not None:
            stmts += self._tick(dlq)
            moved = [dlq.items[seq] for seq in sorted(dlq.items)]
            if moved:
                stmts += self._move(dlq, q, moved, reset=True)
        result: dict[str, Any] = {"op": "redrive", "moved": len(moved)}
        record = self._bump(q, stmts, request_id, result)
        await self._commit(q, stmts, record)
        return len(moved), int(result["rev"])
