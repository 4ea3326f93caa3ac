"""``Queue``: a durable named queue with leased claims, acks and a dead-letter queue.

Two ways to consume:

- ``get()`` removes an item and returns it in one step: **at-most-once**. An item whose
  consumer crashes after ``get`` returned is lost.
- ``claim()`` leases items and returns :class:`Claim` handles; ``ack(claim)`` removes them
  for good. An item whose lease runs out (the consumer crashed or stalled) is visible again:
  **at-least-once**. An acked item never comes back; acking, renewing or releasing a claim
  whose lease already ended raises :class:`~apothic.exceptions.FailedPreconditionError`.

With ``max_attempts=N`` an item whose N-th claim ends without an ack (its lease expired or
it was released) moves to the queue ``<name>.dlq`` with its payload and the last error;
``redrive()`` moves those items back. Items keep FIFO order per partition, except an item
given back (released or expired), which takes its old place again.

With ``maxsize=N`` each partition holds at most N items (visible, delayed or leased, until
acked or removed): ``put`` waits for room, or raises
:class:`~apothic.exceptions.QueueFullError` (a :class:`queue.Full`) with ``block=False`` or
once its timeout ran out. ``Queue.ephemeral()`` gives a uniquely named queue for a ``with``
block, deleted on exit (or by the server, once the block's process stops heartbeating).

``watch()`` streams the queue's changes, each committed mutation once with its ``rev``
(see :mod:`apothic.watch` for the markers between them).

Example::

    q = apothic.Queue.from_name("jobs", max_attempts=3)
    q.put({"url": "https://example.com"})
    for claim in q.claim(lease_s=60, wait_s=10):
        handle(claim.value)
        q.ack(claim)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue as stdlib_queue
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from apothic import _serialization as ser
from apothic._ephemeral import blocking, kept_alive
from apothic._lazy import get_client
from apothic._sync import iter_sync, run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, QueueFullError, SerializationError
from apothic.watch import Progress, Reset, SnapshotEnd

__all__ = [
    "Claim",
    "Queue",
    "QueueChange",
    "QueueEvent",
    "QueueEventKind",
    "QueueInfo",
    "QueueItem",
    "QueueItemState",
    "QueueWatchItem",
]

log = logging.getLogger("apothic.queue")

#: A PutItems/GetItems/ClaimItems call waits at most this long before the SDK asks again.
_WAIT_SLICE_S = 20.0
#: Largest item, in bytes once serialized (the server enforces it too).
MAX_ITEM_BYTES = 1024 * 1024
#: Seconds between the heartbeats that keep an ephemeral queue alive (the server's lease is
#: 30 s).
EPHEMERAL_HEARTBEAT_S = 10.0

QueueEventKind = Literal["put", "claimed", "renewed", "acked", "released", "dead_lettered", "removed", "redriven"]


@dataclass(frozen=True)
class QueueInfo:
    """A queue's state.

    Attributes:
        name: the queue's name.
        rev: bumped by every committed mutation; never goes backwards, across restarts too.
        max_attempts: claims an item gets before it is dead-lettered (0: no limit).
        length: items not yet acked, leased ones included.
        dead_letter_queue: the name of the queue dead-lettered items move to.
        maxsize: items each partition holds before a put waits or fails (0: unbounded).
        ephemeral: whether the queue is deleted once its heartbeats stop.
    """

    name: str
    rev: int
    max_attempts: int
    length: int
    dead_letter_queue: str
    maxsize: int = 0
    ephemeral: bool = False


@dataclass(frozen=True)
class QueueItem:
    """An item as the transport returns it (still serialized)."""

    format: str
    data: bytes
    receipt: str
    attempt: int
    lease_deadline: datetime | None
    last_error: str
    partition: str


@dataclass(frozen=True)
class Claim:
    """A leased item returned by :meth:`Queue.claim`.

    Attributes:
        value: the item.
        receipt: identifies this claim for ``ack``, ``renew`` and ``release``.
        attempt: how many times the item was claimed, this claim included.
        lease_deadline: when the lease ends (the server's clock, UTC).
        last_error: why the item's previous attempt failed, if it did.
        partition: the partition the item came from.
    """

    value: Any
    receipt: str
    attempt: int
    lease_deadline: datetime
    last_error: str = ""
    partition: str = ""


@dataclass(frozen=True)
class QueueItemState:
    """One item of a queue as a watch's snapshot saw it.

    Attributes:
        seq: the item's number in the queue (FIFO order within its partition).
        partition: its partition.
        state: ``"visible"`` (claimable; also a leased item whose lease ran out),
            ``"delayed"`` (released with a delay not over yet) or ``"leased"``.
        attempt: how many times it was claimed.
        lease_deadline: when its lease ends (leased items only; the server's clock, UTC).
        visible_at: when it became, or becomes, visible.
        last_error: why its last attempt failed, if it did.
        value: the item, unpickled on first access.
    """

    seq: int
    partition: str
    state: Literal["visible", "delayed", "leased"]
    attempt: int
    lease_deadline: datetime | None
    visible_at: datetime | None
    last_error: str
    format: str = field(repr=False)
    data: bytes = field(repr=False)

    @functools.cached_property
    def value(self) -> Any:
        return ser.loads_value(self.format, self.data)


@dataclass(frozen=True)
class QueueEvent:
    """What one change did to one item.

    Attributes:
        kind: ``"put"`` (the item appeared: put, dead-lettered into this queue or redriven
            back into it; ``value`` is set), ``"claimed"``, ``"renewed"``, ``"acked"``,
            ``"released"``, ``"dead_lettered"`` (it moved to the dead-letter queue, as
            ``moved_to_seq``), ``"removed"`` (a clear, or a get took it) or ``"redriven"``
            (it left this dead-letter queue for its queue, as ``moved_to_seq``). A lease
            that runs out is not a change: the item is visible again without an event.
        seq: the item's number in the queue.
        partition: its partition.
        attempt: how many times it was claimed.
        lease_deadline: when its lease ends (``claimed``, ``renewed``).
        visible_at: when it is visible (``put``, ``released``).
        delay_s: the release's delay (``released``).
        last_error: why its last attempt failed, if it did.
        moved_to_seq: its number in the queue it moved to (``dead_lettered``, ``redriven``).
        value: the item (``put`` only, else None), unpickled on first access.
    """

    kind: QueueEventKind
    seq: int
    partition: str
    attempt: int = 0
    lease_deadline: datetime | None = None
    visible_at: datetime | None = None
    delay_s: float = 0.0
    last_error: str = ""
    moved_to_seq: int = 0
    format: str = field(default="", repr=False)
    data: bytes = field(default=b"", repr=False)

    @functools.cached_property
    def value(self) -> Any:
        return ser.loads_value(self.format, self.data) if self.format else None


@dataclass(frozen=True)
class QueueChange:
    """Everything one committed mutation did to a queue's items (to its watched partition,
    with ``partition=``), at ``rev``."""

    rev: int
    events: list[QueueEvent]


#: What :meth:`Queue.watch` yields.
QueueWatchItem = QueueItemState | QueueChange | SnapshotEnd | Progress | Reset


def _encode(value: Any, index: int) -> tuple[str, bytes]:
    try:
        data = ser.dumps_value(value, ser.CLOUDPICKLE)
    except SerializationError as exc:
        raise SerializationError(f"queue item {index} of type {type(value).__name__} cannot be pickled") from exc
    if len(data) > MAX_ITEM_BYTES:
        raise SerializationError(
            f"queue item {index} is {len(data):,} bytes pickled, over the {MAX_ITEM_BYTES:,}-byte limit; "
            "put a reference instead (a file on a Volume, an object in a bucket)"
        )
    return ser.CLOUDPICKLE, data


def _receipt(claim: str | Claim) -> str:
    return claim.receipt if isinstance(claim, Claim) else claim


class _QueueAio:
    """The async forms of :class:`Queue`'s methods (``await q.aio.put(...)``…)."""

    def __init__(self, q: Queue) -> None:
        self._q = q

    async def _client(self) -> Any:
        q = self._q
        client = get_client(q._config)
        if q._create_if_missing and not q._hydrated:
            await client.create_queue(q.name, q._max_attempts, maxsize=q._maxsize)
            q._hydrated = True
        return client

    async def info(self) -> QueueInfo:
        """Returns the queue's state."""
        return await (await self._client()).get_queue(self._q.name)  # type: ignore[no-any-return]

    async def put(
        self,
        value: Any,
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str = "",
        request_id: str | None = None,
    ) -> None:
        """Appends one item (see :meth:`Queue.put`)."""
        await self.put_many([value], block=block, timeout=timeout, partition=partition, request_id=request_id)

    async def put_many(
        self,
        values: Iterable[Any],
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str = "",
        request_id: str | None = None,
    ) -> None:
        """Appends items in order, all or none (see :meth:`Queue.put_many`)."""
        items = [_encode(v, i) for i, v in enumerate(values)]
        if not items:
            return
        client = await self._client()
        # One id for every slice of the wait: a put that landed is never applied twice.
        request_id = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while True:
            if not block:
                wait = 0.0
            else:
                wait = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S, deadline - loop.time()))
            try:
                await client.put_items(self._q.name, items, partition=partition, wait_s=wait, request_id=request_id)
                return
            except QueueFullError:
                if not block or (deadline is not None and loop.time() >= deadline):
                    raise

    async def get_many(
        self, n: int, *, block: bool = True, timeout: float | None = None, partition: str = ""
    ) -> list[Any]:
        """Removes and returns up to ``n`` items (see :meth:`Queue.get_many`)."""
        if n < 1:
            raise InvalidConfigError(f"n must be at least 1, got {n}")
        client = await self._client()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S, deadline - loop.time()))
            items = await client.get_items(
                self._q.name, n, wait_s=left if block else 0.0, partition=partition, request_id=""
            )
            if items:
                return [ser.loads_value(i.format, i.data) for i in items]
            if not block or (deadline is not None and loop.time() >= deadline):
                return []

    async def get(self, *, block: bool = True, timeout: float | None = None, partition: str = "") -> Any:
        """Removes and returns the next item (see :meth:`Queue.get`)."""
        items = await self.get_many(1, block=block, timeout=timeout, partition=partition)
        if not items:
            raise stdlib_queue.Empty(f"queue {self._q.name!r} had no item" + (f" within {timeout}s" if block else ""))
        return items[0]

    async def claim(
        self,
        n: int = 1,
        *,
        lease_s: float = 30.0,
        wait_s: float = 0.0,
        partition: str = "",
        request_id: str | None = None,
    ) -> list[Claim]:
        """Leases up to ``n`` items (see :meth:`Queue.claim`)."""
        if n < 1:
            raise InvalidConfigError(f"n must be at least 1, got {n}")
        if lease_s <= 0:
            raise InvalidConfigError(f"lease_s must be positive, got {lease_s}")
        client = await self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        while True:
            left = max(0.0, min(_WAIT_SLICE_S, deadline - loop.time()))
            items = await client.claim_items(
                self._q.name, n, lease_s=lease_s, wait_s=left, partition=partition, request_id=request_id or ""
            )
            if items or loop.time() >= deadline:
                return [
                    Claim(
                        value=ser.loads_value(i.format, i.data),
                        receipt=i.receipt,
                        attempt=i.attempt,
                        lease_deadline=i.lease_deadline,
                        last_error=i.last_error,
                        partition=i.partition,
                    )
                    for i in items
                ]

    async def ack(self, *claims: str | Claim, request_id: str | None = None) -> None:
        """Acknowledges claims (see :meth:`Queue.ack`)."""
        if not claims:
            raise InvalidConfigError("ack takes at least one claim or receipt")
        client = await self._client()
        await client.ack_items(self._q.name, [_receipt(c) for c in claims], request_id=request_id or "")

    async def renew(self, claim: str | Claim, lease_s: float, *, request_id: str | None = None) -> datetime:
        """Extends a claim's lease (see :meth:`Queue.renew`)."""
        client = await self._client()
        return await client.renew_lease(  # type: ignore[no-any-return]
            self._q.name, _receipt(claim), lease_s, request_id=request_id or ""
        )

    async def release(
        self, claim: str | Claim, delay_s: float = 0.0, *, error: str = "", request_id: str | None = None
    ) -> bool:
        """Gives a claimed item back (see :meth:`Queue.release`)."""
        client = await self._client()
        return await client.release_item(  # type: ignore[no-any-return]
            self._q.name, _receipt(claim), delay_s, error, request_id=request_id or ""
        )

    async def len(self, partition: str | None = None) -> int:
        """Counts items not yet acked (see :meth:`Queue.len`)."""
        return await (await self._client()).queue_length(self._q.name, partition)  # type: ignore[no-any-return]

    async def clear(self, partition: str | None = None, *, request_id: str | None = None) -> int:
        """Removes items (see :meth:`Queue.clear`)."""
        client = await self._client()
        return await client.clear_queue(self._q.name, partition, request_id=request_id or "")  # type: ignore[no-any-return]

    async def redrive(self, *, request_id: str | None = None) -> int:
        """Moves dead-lettered items back (see :meth:`Queue.redrive`)."""
        client = await self._client()
        return await client.redrive_queue(self._q.name, request_id=request_id or "")  # type: ignore[no-any-return]

    async def watch(
        self, *, snapshot: bool = False, after_rev: int | None = None, partition: str | None = None
    ) -> AsyncIterator[QueueWatchItem]:
        """Streams the queue's changes (see :meth:`Queue.watch`)."""
        client = await self._client()
        async for item in client.watch_queue(self._q.name, snapshot=snapshot, after_rev=after_rev, partition=partition):
            yield item


class _DeleteQueue:
    """``Queue.delete(name)``; ``Queue.delete.aio(name)`` is the async form."""

    async def aio(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a queue, its items and its dead-letter queue.

        Raises:
            NotFoundError: no such queue.
        """
        await get_client(client).delete_queue(name)

    def __call__(self, name: str, *, client: ClientConfig | None = None) -> None:
        """Deletes a queue, its items and its dead-letter queue (see :meth:`aio`)."""
        run_sync(self.aio(name, client=client), "Queue.delete()", async_form="await Queue.delete.aio(...)")


class _EphemeralQueue:
    """``with Queue.ephemeral() as q``; ``async with Queue.ephemeral.aio() as q`` is the async
    form."""

    @contextlib.asynccontextmanager
    async def aio(
        self, *, max_attempts: int | None = None, maxsize: int | None = None, client: ClientConfig | None = None
    ) -> AsyncIterator[Queue]:
        """A new, uniquely named queue for the ``async with`` block, deleted when it exits.

        The block heartbeats the queue in the background; should this process die, the
        control plane deletes the queue once the heartbeats have stopped for 30 seconds.

        Args:
            max_attempts: claims an item gets before it moves to the dead-letter queue.
            maxsize: items each partition holds before a put waits or fails.
            client: the control plane to use (the configured one when None).
        """
        if maxsize is not None and maxsize < 0:
            raise InvalidConfigError(f"maxsize must be 0 (unbounded) or more, got {maxsize}")
        transport = get_client(client)
        info = await transport.create_queue("", max_attempts, maxsize=maxsize, ephemeral=True)
        q = Queue(info.name, create_if_missing=False, client=client)
        async with kept_alive(
            f"ephemeral queue {q.name!r}",
            every_s=EPHEMERAL_HEARTBEAT_S,
            beat=lambda: transport.heartbeat_queue(q.name),
            delete=lambda: transport.delete_queue(q.name),
        ):
            yield q

    def __call__(
        self, *, max_attempts: int | None = None, maxsize: int | None = None, client: ClientConfig | None = None
    ) -> contextlib.AbstractContextManager[Queue]:
        """A new, uniquely named queue for the ``with`` block, deleted when it exits (see
        :meth:`aio`)."""
        cm = self.aio(max_attempts=max_attempts, maxsize=maxsize, client=client)
        return blocking(cm, "Queue.ephemeral()", async_form="async with Queue.ephemeral.aio() as q")


class Queue:
    """A durable named queue. Get one with :meth:`Queue.from_name`, or a temporary one with
    ``with Queue.ephemeral() as q``.

    Every blocking method has an async form on ``.aio`` (``await q.aio.get()``). Mutations
    take an optional ``request_id``: a retried request with the same id is applied once.

    Attributes:
        name: the queue's name.
    """

    delete = _DeleteQueue()
    ephemeral = _EphemeralQueue()

    def __init__(
        self,
        name: str,
        *,
        create_if_missing: bool = True,
        max_attempts: int | None = None,
        maxsize: int | None = None,
        client: ClientConfig | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 0:
            raise InvalidConfigError(f"max_attempts must be 0 (no limit) or more, got {max_attempts}")
        if maxsize is not None and maxsize < 0:
            raise InvalidConfigError(f"maxsize must be 0 (unbounded) or more, got {maxsize}")
        self.name = name
        self._create_if_missing = create_if_missing
        self._max_attempts = max_attempts
        self._maxsize = maxsize
        self._config = client
        self._hydrated = False
        self.aio = _QueueAio(self)

    @classmethod
    def from_name(
        cls,
        name: str,
        create_if_missing: bool = True,
        *,
        max_attempts: int | None = None,
        maxsize: int | None = None,
        client: ClientConfig | None = None,
    ) -> Queue:
        """A handle on the named queue; nothing is sent until its first use.

        Args:
            name: 1-128 letters, digits, ``.``, ``-`` or ``_``.
            create_if_missing: create the queue on first use when it does not exist;
                otherwise calls on a missing queue raise ``NotFoundError``.
            max_attempts: claims an item gets before it moves to ``<name>.dlq`` (0: no
                limit). Set when the queue is created; None keeps an existing queue's.
            maxsize: items each partition holds (visible, delayed or leased, until acked)
                before ``put`` waits or fails (0: unbounded). Set when the queue is
                created; None keeps an existing queue's.
            client: the control plane to use (the configured one when None).

        Raises:
            FailedPreconditionError: (on first use) the queue exists with another
                ``max_attempts`` or ``maxsize``.
        """
        return cls(name, create_if_missing=create_if_missing, max_attempts=max_attempts, maxsize=maxsize, client=client)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def info(self) -> QueueInfo:
        """Returns the queue's state (rev, length, max_attempts, maxsize)."""
        return run_sync(self.aio.info(), "queue.info()")

    def put(
        self,
        value: Any,
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str = "",
        request_id: str | None = None,
    ) -> None:
        """Appends one item; returns once it is durable.

        Args:
            value: anything cloudpickle can serialize, up to 1 MiB serialized.
            block: when the partition holds ``maxsize`` items, wait for room (else fail
                at once).
            timeout: seconds to wait for room at most (None: as long as it takes).
            partition: the partition to append to (each keeps its own FIFO order).
            request_id: applies a retried put once.

        Raises:
            SerializationError: the value cannot be pickled or is over 1 MiB.
            QueueFullError: the partition stayed full (at once with ``block=False``).
        """
        run_sync(
            self.aio.put(value, block=block, timeout=timeout, partition=partition, request_id=request_id),
            "queue.put()",
        )

    def put_many(
        self,
        values: Iterable[Any],
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str = "",
        request_id: str | None = None,
    ) -> None:
        """Appends items in order, all or none; returns once they are durable. Under a
        ``maxsize`` they go in together once they all fit (see :meth:`put`).

        Raises:
            InvalidArgumentError: more items than the queue's ``maxsize``: they never fit.
        """
        run_sync(
            self.aio.put_many(values, block=block, timeout=timeout, partition=partition, request_id=request_id),
            "queue.put_many()",
        )

    def get(self, *, block: bool = True, timeout: float | None = None, partition: str = "") -> Any:
        """Removes and returns the next item: claim and ack in one step, at-most-once.

        Args:
            block: wait for an item when none is visible.
            timeout: seconds to wait at most (None: as long as it takes).
            partition: the partition to take from.

        Raises:
            queue.Empty: no item arrived in time (or none was there, with ``block=False``).
        """
        return run_sync(self.aio.get(block=block, timeout=timeout, partition=partition), "queue.get()")

    def get_many(self, n: int, *, block: bool = True, timeout: float | None = None, partition: str = "") -> list[Any]:
        """Removes and returns up to ``n`` items at once (at-most-once); waits like :meth:`get`
        for the first, and returns an empty list when none arrived in time."""
        return run_sync(self.aio.get_many(n, block=block, timeout=timeout, partition=partition), "queue.get_many()")

    def claim(
        self,
        n: int = 1,
        *,
        lease_s: float = 30.0,
        wait_s: float = 0.0,
        partition: str = "",
        request_id: str | None = None,
    ) -> list[Claim]:
        """Leases up to ``n`` visible items for ``lease_s`` seconds: at-least-once.

        Ack each claim when done; one whose lease runs out is visible again.

        Args:
            n: the most items to claim.
            lease_s: how long the claims hold (renew them to keep them longer).
            wait_s: seconds to wait for an item when none is visible.
            partition: the partition to claim from.
            request_id: a retried claim with the same id returns the claims still held.

        Returns:
            The claims, oldest item first; empty when none arrived within ``wait_s``.
        """
        return run_sync(
            self.aio.claim(n, lease_s=lease_s, wait_s=wait_s, partition=partition, request_id=request_id),
            "queue.claim()",
        )

    def ack(self, *claims: str | Claim, request_id: str | None = None) -> None:
        """Acknowledges claims, all or none: their items are gone for good.

        Raises:
            FailedPreconditionError: a claim's lease expired, or it was released or acked.
        """
        run_sync(self.aio.ack(*claims, request_id=request_id), "queue.ack()")

    def renew(self, claim: str | Claim, lease_s: float, *, request_id: str | None = None) -> datetime:
        """Extends a claim's lease to ``lease_s`` seconds from now; returns the new deadline.

        Raises:
            FailedPreconditionError: the claim is stale.
        """
        return run_sync(self.aio.renew(claim, lease_s, request_id=request_id), "queue.renew()")

    def release(
        self, claim: str | Claim, delay_s: float = 0.0, *, error: str = "", request_id: str | None = None
    ) -> bool:
        """Gives a claimed item back, visible again after ``delay_s`` seconds.

        Args:
            claim: the claim or its receipt.
            delay_s: seconds before the item is visible again.
            error: why the attempt failed; kept with the item (and its dead letter).
            request_id: applies a retried release once.

        Returns:
            Whether the item used up ``max_attempts`` and moved to the dead-letter queue.

        Raises:
            FailedPreconditionError: the claim is stale.
        """
        return run_sync(self.aio.release(claim, delay_s, error=error, request_id=request_id), "queue.release()")

    def len(self, partition: str | None = None) -> int:
        """Counts the items not yet acked (leased ones included), in one partition or all."""
        return run_sync(self.aio.len(partition), "queue.len()")

    def clear(self, partition: str | None = None, *, request_id: str | None = None) -> int:
        """Removes every item of one partition, or of all when None; returns how many."""
        return run_sync(self.aio.clear(partition, request_id=request_id), "queue.clear()")

    def redrive(self, *, request_id: str | None = None) -> int:
        """Moves every item of the dead-letter queue back, oldest first, with a fresh attempt
        count; returns how many."""
        return run_sync(self.aio.redrive(request_id=request_id), "queue.redrive()")

    def watch(
        self, *, snapshot: bool = False, after_rev: int | None = None, partition: str | None = None
    ) -> Iterator[QueueWatchItem]:
        """Streams the queue's changes until the loop stops or the queue is deleted.

        Yields, in order: with ``snapshot``, a :class:`QueueItemState` per item as of one
        rev, then :class:`~apothic.watch.SnapshotEnd`; then a :class:`QueueChange` per
        committed mutation, revs strictly increasing with none missing or repeated;
        :class:`~apothic.watch.Progress` when nothing changed for a while; and
        :class:`~apothic.watch.Reset` when changes after the watcher's rev are no longer
        retained (a fresh snapshot follows when ``snapshot`` is set). A lease that runs out
        makes no change: its item is simply visible again.

        The watch starts when iteration does. To see everything after a point you reached
        earlier, pass that point's rev (``q.info().rev``) as ``after_rev``.

        Args:
            snapshot: first yield the queue's items.
            after_rev: resume after this rev (a change's or progress marker's ``rev``);
                the snapshot is then sent only after a reset.
            partition: only this partition's items and events.

        Raises:
            NotFoundError: the queue does not exist, or was deleted while watched.
            InvalidArgumentError: ``after_rev`` is past the queue's rev.
        """
        return iter_sync(self.aio.watch(snapshot=snapshot, after_rev=after_rev, partition=partition), "queue.watch()")
