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

Example::

    q = apothic.Queue.from_name("jobs", max_attempts=3)
    q.put({"url": "https://example.com"})
    for claim in q.claim(lease_s=60, wait_s=10):
        handle(claim.value)
        q.ack(claim)
"""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apothic import _serialization as ser
from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, SerializationError

__all__ = ["Claim", "Queue", "QueueInfo", "QueueItem"]

#: A GetItems/ClaimItems call waits at most this long before the SDK asks again.
_WAIT_SLICE_S = 20.0
#: Largest item, in bytes once serialized (the server enforces it too).
MAX_ITEM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class QueueInfo:
    """A queue's state.

    Attributes:
        name: the queue's name.
        rev: bumped by every committed mutation; never goes backwards, across restarts too.
        max_attempts: claims an item gets before it is dead-lettered (0: no limit).
        length: items not yet acked, leased ones included.
        dead_letter_queue: the name of the queue dead-lettered items move to.
    """

    name: str
    rev: int
    max_attempts: int
    length: int
    dead_letter_queue: str


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
            await client.create_queue(q.name, q._max_attempts)
            q._hydrated = True
        return client

    async def info(self) -> QueueInfo:
        """Returns the queue's state."""
        return await (await self._client()).get_queue(self._q.name)  # type: ignore[no-any-return]

    async def put(self, value: Any, *, partition: str = "", request_id: str | None = None) -> None:
        """Appends one item (see :meth:`Queue.put`)."""
        await self.put_many([value], partition=partition, request_id=request_id)

    async def put_many(self, values: Iterable[Any], *, partition: str = "", request_id: str | None = None) -> None:
        """Appends items in order, atomically (see :meth:`Queue.put_many`)."""
        items = [_encode(v, i) for i, v in enumerate(values)]
        if not items:
            return
        await (await self._client()).put_items(self._q.name, items, partition=partition, request_id=request_id or "")

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
        run_sync(self.aio(name, client=client), "Queue.delete()")


class Queue:
    """A durable named queue. Get one with :meth:`Queue.from_name`.

    Every blocking method has an async form on ``.aio`` (``await q.aio.get()``). Mutations
    take an optional ``request_id``: a retried request with the same id is applied once.

    Attributes:
        name: the queue's name.
    """

    delete = _DeleteQueue()

    def __init__(
        self,
        name: str,
        *,
        create_if_missing: bool = True,
        max_attempts: int | None = None,
        client: ClientConfig | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 0:
            raise InvalidConfigError(f"max_attempts must be 0 (no limit) or more, got {max_attempts}")
        self.name = name
        self._create_if_missing = create_if_missing
        self._max_attempts = max_attempts
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
        client: ClientConfig | None = None,
    ) -> Queue:
        """A handle on the named queue; nothing is sent until its first use.

        Args:
            name: 1-128 letters, digits, ``.``, ``-`` or ``_``.
            create_if_missing: create the queue on first use when it does not exist;
                otherwise calls on a missing queue raise ``NotFoundError``.
            max_attempts: claims an item gets before it moves to ``<name>.dlq`` (0: no
                limit). Set when the queue is created; None keeps an existing queue's.
            client: the control plane to use (the configured one when None).
        """
        return cls(name, create_if_missing=create_if_missing, max_attempts=max_attempts, client=client)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def info(self) -> QueueInfo:
        """Returns the queue's state (rev, length, max_attempts)."""
        return run_sync(self.aio.info(), "queue.info()")

    def put(self, value: Any, *, partition: str = "", request_id: str | None = None) -> None:
        """Appends one item; returns once it is durable.

        Args:
            value: anything cloudpickle can serialize, up to 1 MiB serialized.
            partition: the partition to append to (each keeps its own FIFO order).
            request_id: applies a retried put once.

        Raises:
            SerializationError: the value cannot be pickled or is over 1 MiB.
        """
        run_sync(self.aio.put(value, partition=partition, request_id=request_id), "queue.put()")

    def put_many(self, values: Iterable[Any], *, partition: str = "", request_id: str | None = None) -> None:
        """Appends items in order, all or none; returns once they are durable (see :meth:`put`)."""
        run_sync(self.aio.put_many(values, partition=partition, request_id=request_id), "queue.put_many()")

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
