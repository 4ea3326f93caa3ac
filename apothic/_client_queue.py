"""Queue calls of the client transport (QueueService)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from apothic import _serialization as ser
from apothic._proto.v1 import types_pb2 as pb
from apothic._transport import FORMAT_FROM_PB, FORMAT_TO_PB, Transport, _time, watch_marker_from_pb
from apothic.exceptions import QueueFullError, ResourceExhaustedError
from apothic.queue import QueueChange, QueueEvent, QueueInfo, QueueItem, QueueItemState, QueueWatchItem

#: Wire names of item states and event kinds (``QUEUE_ITEM_STATE_VISIBLE`` -> ``visible``).
_STATE_PREFIX = "QUEUE_ITEM_STATE_"
_KIND_PREFIX = "QUEUE_EVENT_KIND_"


class QueueCalls(Transport):
    """QueueService RPCs; part of :class:`apothic._client.Client`."""

    def _queue_stub(self) -> Any:
        stub = self.__dict__.get("_queue_service")
        if stub is None:
            from apothic._proto.v1 import queue_service_pb2_grpc as q_grpc

            stub = self.__dict__["_queue_service"] = q_grpc.QueueServiceStub(self._channel)
        return stub

    async def create_queue(
        self, name: str, max_attempts: int | None = None, *, maxsize: int | None = None, ephemeral: bool = False
    ) -> QueueInfo:
        """Creates a queue, or returns the existing one (an ephemeral one is always new; an
        empty name then gets a unique one)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.CreateQueueRequest(name=name, max_attempts=max_attempts, maxsize=maxsize, ephemeral=ephemeral)
        return _queue_info(await self._unary(self._queue_stub().CreateQueue, req))

    async def heartbeat_queue(self, name: str) -> float:
        """Keeps an ephemeral queue alive; returns its lease in seconds."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        resp = await self._unary(self._queue_stub().HeartbeatQueue, q_pb.HeartbeatQueueRequest(name=name))
        return float(resp.lease_s)

    async def get_queue(self, name: str) -> QueueInfo:
        """Returns a queue's state."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        return _queue_info(await self._unary(self._queue_stub().GetQueue, q_pb.GetQueueRequest(name=name)))

    async def delete_queue(self, name: str) -> None:
        """Deletes a queue and its dead-letter queue."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        await self._unary(self._queue_stub().DeleteQueue, q_pb.DeleteQueueRequest(name=name))

    async def put_items(
        self, name: str, items: list[tuple[str, bytes]], *, partition: str, wait_s: float = 0.0, request_id: str
    ) -> int:
        """Appends ``(format, data)`` items, waiting up to ``wait_s`` for room under the
        queue's maxsize; returns the queue's rev once they committed.

        Raises:
            QueueFullError: the partition stayed full.
        """
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        payloads = [pb.Payload(format=FORMAT_TO_PB[fmt], data=data) for fmt, data in items]
        req = q_pb.PutItemsRequest(name=name, partition=partition, items=payloads, request_id=request_id, wait_s=wait_s)
        try:
            return int((await self._unary(self._queue_stub().PutItems, req)).rev)
        except ResourceExhaustedError as exc:
            # The one limit a put can hit: the partition's maxsize.
            raise QueueFullError(str(exc), code=exc.code) from None

    async def get_items(self, name: str, n: int, *, wait_s: float, partition: str, request_id: str) -> list[QueueItem]:
        """Removes up to ``n`` items (claim and ack in one step)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.GetItemsRequest(name=name, partition=partition, n=n, wait_s=wait_s, request_id=request_id)
        return [_queue_item(i) for i in (await self._unary(self._queue_stub().GetItems, req)).items]

    async def claim_items(
        self, name: str, n: int, *, lease_s: float, wait_s: float, partition: str, request_id: str
    ) -> list[QueueItem]:
        """Leases up to ``n`` items."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ClaimItemsRequest(
            name=name, partition=partition, n=n, lease_s=lease_s, wait_s=wait_s, request_id=request_id
        )
        return [_queue_item(i) for i in (await self._unary(self._queue_stub().ClaimItems, req)).items]

    async def ack_items(self, name: str, receipts: list[str], *, request_id: str) -> int:
        """Acknowledges claims; returns the queue's rev."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.AckItemsRequest(name=name, receipts=receipts, request_id=request_id)
        return int((await self._unary(self._queue_stub().AckItems, req)).rev)

    async def renew_lease(self, name: str, receipt: str, lease_s: float, *, request_id: str) -> datetime:
        """Extends a claim's lease; returns its new deadline."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.RenewLeaseRequest(name=name, receipt=receipt, lease_s=lease_s, request_id=request_id)
        resp = await self._unary(self._queue_stub().RenewLease, req)
        return resp.lease_deadline.ToDatetime(tzinfo=UTC)

    async def release_item(self, name: str, receipt: str, delay_s: float, error: str, *, request_id: str) -> bool:
        """Gives a claimed item back; returns whether it moved to the dead-letter queue."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ReleaseItemRequest(name=name, receipt=receipt, delay_s=delay_s, error=error, request_id=request_id)
        return bool((await self._unary(self._queue_stub().ReleaseItem, req)).dead_lettered)

    async def queue_length(self, name: str, partition: str | None) -> int:
        """Counts items not yet acked, in one partition or all (None)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.GetQueueLengthRequest(name=name, partition=partition)
        return int((await self._unary(self._queue_stub().GetQueueLength, req)).length)

    async def clear_queue(self, name: str, partition: str | None, *, request_id: str) -> int:
        """Removes the items of one partition or all (None); returns how many."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.ClearQueueRequest(name=name, partition=partition, request_id=request_id)
        return int((await self._unary(self._queue_stub().ClearQueue, req)).removed)

    async def redrive_queue(self, name: str, *, request_id: str) -> int:
        """Moves the dead-letter queue's items back; returns how many."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.RedriveQueueRequest(name=name, request_id=request_id)
        return int((await self._unary(self._queue_stub().RedriveQueue, req)).moved)

    async def watch_queue(
        self, name: str, *, snapshot: bool, after_rev: int | None, partition: str | None
    ) -> AsyncIterator[QueueWatchItem]:
        """Streams a queue's watch: snapshot items, markers and changes (a change split over
        several messages comes out whole)."""
        from apothic._proto.v1 import queue_service_pb2 as q_pb

        req = q_pb.WatchQueueRequest(name=name, snapshot=snapshot, after_rev=after_rev, partition=partition)
        events: list[QueueEvent] = []
        async for resp in self._stream(self._queue_stub().WatchQueue, req):
            which = resp.WhichOneof("event")
            if which == "change":
                events += [_queue_event(q_pb, e) for e in resp.change.events]
                if not resp.change.more:
                    yield QueueChange(rev=resp.change.rev, events=events)
                    events = []
            elif which == "snapshot":
                for item in resp.snapshot.items:
                    yield _queue_item_state(q_pb, item)
            elif which is not None:
                yield watch_marker_from_pb(which, getattr(resp, which))


def _queue_info(resp: Any) -> QueueInfo:
    q = resp.queue
    return QueueInfo(
        name=q.name,
        rev=q.rev,
        max_attempts=q.max_attempts,
        length=q.length,
        dead_letter_queue=q.dead_letter_queue,
        maxsize=q.maxsize,
        ephemeral=q.ephemeral,
    )


def _queue_item(item: Any) -> QueueItem:
    return QueueItem(
        format=FORMAT_FROM_PB.get(item.value.format, ser.CLOUDPICKLE),
        data=item.value.data,
        receipt=item.receipt,
        attempt=item.attempt,
        lease_deadline=_time(item.lease_deadline) if item.HasField("lease_deadline") else None,
        last_error=item.last_error,
        partition=item.partition,
    )


def _payload(value: Any) -> tuple[str, bytes]:
    return FORMAT_FROM_PB.get(value.format, ser.CLOUDPICKLE), value.data


def _queue_item_state(q_pb: Any, item: Any) -> QueueItemState:
    fmt, data = _payload(item.value)
    return QueueItemState(
        seq=item.seq,
        partition=item.partition,
        state=q_pb.QueueItemState.Name(item.state).removeprefix(_STATE_PREFIX).lower(),
        attempt=item.attempt,
        lease_deadline=_time(item.lease_deadline) if item.HasField("lease_deadline") else None,
        visible_at=_time(item.visible_at) if item.HasField("visible_at") else None,
        last_error=item.last_error,
        format=fmt,
        data=data,
    )


def _queue_event(q_pb: Any, ev: Any) -> QueueEvent:
    fmt, data = _payload(ev.value) if ev.HasField("value") else ("", b"")
    return QueueEvent(
        kind=q_pb.QueueEventKind.Name(ev.kind).removeprefix(_KIND_PREFIX).lower(),
        seq=ev.seq,
        partition=ev.partition,
        attempt=ev.attempt,
        lease_deadline=_time(ev.lease_deadline) if ev.HasField("lease_deadline") else None,
        visible_at=_time(ev.visible_at) if ev.HasField("visible_at") else None,
        delay_s=ev.delay_s,
        last_error=ev.last_error,
        moved_to_seq=ev.moved_to_seq,
        format=fmt,
        data=data,
    )
