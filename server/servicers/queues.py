"""QueueService: durable named queues (see apothic.server.queues for the guarantees)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from apothic._proto.v1 import queue_service_pb2 as q_pb
from apothic._proto.v1 import queue_service_pb2_grpc as q_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server import queue_log
from apothic.server.auth import current_account
from apothic.server.queue_log import ItemSnapshot, QueueEvent
from apothic.server.queue_state import dt
from apothic.server.queues import DEFAULT_LEASE_S, QueueManager, QueueView, TakenItem
from apothic.server.servicers import convert
from apothic.server.watch import Change, Progress, Reset, SnapshotChunk, SnapshotEnd, WatchItem

T = TypeVar("T")

#: Payload bytes per watch message before a snapshot chunk or a change is split.
WATCH_MESSAGE_BYTES = 4 * 1024 * 1024

_STATES = {
    queue_log.VISIBLE: q_pb.QUEUE_ITEM_STATE_VISIBLE,
    queue_log.DELAYED: q_pb.QUEUE_ITEM_STATE_DELAYED,
    queue_log.LEASED: q_pb.QUEUE_ITEM_STATE_LEASED,
}
_KINDS = {
    queue_log.PUT: q_pb.QUEUE_EVENT_KIND_PUT,
    queue_log.CLAIMED: q_pb.QUEUE_EVENT_KIND_CLAIMED,
    queue_log.RENEWED: q_pb.QUEUE_EVENT_KIND_RENEWED,
    queue_log.ACKED: q_pb.QUEUE_EVENT_KIND_ACKED,
    queue_log.RELEASED: q_pb.QUEUE_EVENT_KIND_RELEASED,
    queue_log.DEAD_LETTERED: q_pb.QUEUE_EVENT_KIND_DEAD_LETTERED,
    queue_log.REMOVED: q_pb.QUEUE_EVENT_KIND_REMOVED,
    queue_log.REDRIVEN: q_pb.QUEUE_EVENT_KIND_REDRIVEN,
}


def _info(view: QueueView) -> q_pb.QueueInfo:
    return q_pb.QueueInfo(
        name=view.name,
        rev=view.rev,
        max_attempts=view.max_attempts,
        length=view.length,
        dead_letter_queue=view.dead_letter_queue,
        maxsize=view.maxsize,
        ephemeral=view.ephemeral,
    )


def _time(seconds: float) -> Timestamp | None:
    return convert.timestamp(dt(seconds)) if seconds else None


def _snapshot_item(item: ItemSnapshot) -> q_pb.QueueItemSnapshot:
    return q_pb.QueueItemSnapshot(
        seq=item.seq,
        partition=item.partition,
        state=_STATES[item.state],
        attempt=item.attempt,
        lease_deadline=_time(item.lease_deadline),
        visible_at=_time(item.visible_at),
        value=pb.Payload(format=convert.FORMAT_CODES[item.format], data=item.data),
        last_error=item.last_error,
    )


def _event(ev: QueueEvent) -> q_pb.QueueEvent:
    return q_pb.QueueEvent(
        kind=_KINDS[ev.kind],
        seq=ev.seq,
        partition=ev.partition,
        attempt=ev.attempt,
        lease_deadline=_time(ev.lease_deadline),
        visible_at=_time(ev.visible_at),
        delay_s=ev.delay_s,
        value=pb.Payload(format=convert.FORMAT_CODES[ev.format], data=ev.data) if ev.format else None,
        last_error=ev.last_error,
        moved_to_seq=ev.moved_to_seq,
    )


def _by_size(entries: Sequence[T], size: Callable[[T], int]) -> list[list[T]]:
    """Splits entries into runs of at most :data:`WATCH_MESSAGE_BYTES` (at least one each)."""
    parts: list[list[T]] = [[]]
    total = 0
    for entry in entries:
        n = size(entry)
        if parts[-1] and total + n > WATCH_MESSAGE_BYTES:
            parts.append([])
            total = 0
        parts[-1].append(entry)
        total += n
    return parts


def _watch_messages(item: WatchItem) -> Iterator[q_pb.WatchQueueResponse]:
    """The messages of one watch item (a large snapshot chunk or change takes several)."""
    if isinstance(item, Change):
        parts = _by_size(item.events, lambda ev: len(ev.data))
        for index, part in enumerate(parts):
            change = q_pb.QueueChange(rev=item.rev, events=[_event(ev) for ev in part], more=index < len(parts) - 1)
            yield q_pb.WatchQueueResponse(change=change)
    elif isinstance(item, SnapshotChunk):
        for part in _by_size(item.entries, lambda entry: len(entry.data)):
            chunk = q_pb.QueueSnapshotChunk(rev=item.rev, items=[_snapshot_item(e) for e in part])
            yield q_pb.WatchQueueResponse(snapshot=chunk)
    elif isinstance(item, SnapshotEnd | Progress | Reset):
        yield q_pb.WatchQueueResponse(**convert.watch_marker(item))


def _item(item: TakenItem) -> q_pb.QueueItem:
    return q_pb.QueueItem(
        value=pb.Payload(format=convert.FORMAT_CODES[item.format], data=item.data),
        receipt=item.receipt,
        attempt=item.attempt,
        lease_deadline=convert.timestamp(item.lease_deadline),
        last_error=item.last_error,
        partition=item.partition,
    )


class QueueServicer(q_grpc.QueueServiceServicer):
    def __init__(self, queues: QueueManager) -> None:
        self.queues = queues

    async def CreateQueue(
        self, request: q_pb.CreateQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.CreateQueueResponse:
        max_attempts = request.max_attempts if request.HasField("max_attempts") else None
        maxsize = request.maxsize if request.HasField("maxsize") else None
        view, created = await self.queues.create(
            current_account.get(), request.name, max_attempts, maxsize=maxsize, ephemeral=request.ephemeral
        )
        return q_pb.CreateQueueResponse(queue=_info(view), created=created)

    async def GetQueue(self, request: q_pb.GetQueueRequest, context: grpc.aio.ServicerContext) -> q_pb.GetQueueResponse:
        return q_pb.GetQueueResponse(queue=_info(await self.queues.get(current_account.get(), request.name)))

    async def DeleteQueue(
        self, request: q_pb.DeleteQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.DeleteQueueResponse:
        await self.queues.delete(current_account.get(), request.name)
        return q_pb.DeleteQueueResponse()

    async def HeartbeatQueue(
        self, request: q_pb.HeartbeatQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.HeartbeatQueueResponse:
        lease_s = await self.queues.heartbeat(current_account.get(), request.name)
        return q_pb.HeartbeatQueueResponse(lease_s=lease_s)

    async def PutItems(self, request: q_pb.PutItemsRequest, context: grpc.aio.ServicerContext) -> q_pb.PutItemsResponse:
        payloads = [(convert.payload_format(p, f"item {i}"), p.data) for i, p in enumerate(request.items)]
        rev = await self.queues.put(
            current_account.get(), request.name, request.partition, payloads, request.request_id, wait_s=request.wait_s
        )
        return q_pb.PutItemsResponse(rev=rev)

    async def GetItems(self, request: q_pb.GetItemsRequest, context: grpc.aio.ServicerContext) -> q_pb.GetItemsResponse:
        items, rev = await self.queues.take(
            current_account.get(),
            request.name,
            request.partition,
            request.n or 1,
            lease_s=None,
            wait_s=request.wait_s,
            request_id=request.request_id,
        )
        return q_pb.GetItemsResponse(items=[_item(i) for i in items], rev=rev)

    async def ClaimItems(
        self, request: q_pb.ClaimItemsRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.ClaimItemsResponse:
        items, rev = await self.queues.take(
            current_account.get(),
            request.name,
            request.partition,
            request.n or 1,
            lease_s=request.lease_s or DEFAULT_LEASE_S,
            wait_s=request.wait_s,
            request_id=request.request_id,
        )
        return q_pb.ClaimItemsResponse(items=[_item(i) for i in items], rev=rev)

    async def AckItems(self, request: q_pb.AckItemsRequest, context: grpc.aio.ServicerContext) -> q_pb.AckItemsResponse:
        rev = await self.queues.ack(current_account.get(), request.name, list(request.receipts), request.request_id)
        return q_pb.AckItemsResponse(rev=rev)

    async def RenewLease(
        self, request: q_pb.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.RenewLeaseResponse:
        deadline, rev = await self.queues.renew(
            current_account.get(), request.name, request.receipt, request.lease_s, request.request_id
        )
        return q_pb.RenewLeaseResponse(lease_deadline=convert.timestamp(deadline), rev=rev)

    async def ReleaseItem(
        self, request: q_pb.ReleaseItemRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.ReleaseItemResponse:
        dead, rev = await self.queues.release(
            current_account.get(), request.name, request.receipt, request.delay_s, request.error, request.request_id
        )
        return q_pb.ReleaseItemResponse(dead_lettered=dead, rev=rev)

    async def GetQueueLength(
        self, request: q_pb.GetQueueLengthRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.GetQueueLengthResponse:
        partition = request.partition if request.HasField("partition") else None
        length, rev = await self.queues.length(current_account.get(), request.name, partition)
        return q_pb.GetQueueLengthResponse(length=length, rev=rev)

    async def ClearQueue(
        self, request: q_pb.ClearQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.ClearQueueResponse:
        partition = request.partition if request.HasField("partition") else None
        removed, rev = await self.queues.clear(current_account.get(), request.name, partition, request.request_id)
        return q_pb.ClearQueueResponse(removed=removed, rev=rev)

    async def RedriveQueue(
        self, request: q_pb.RedriveQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.RedriveQueueResponse:
        moved, rev = await self.queues.redrive(current_account.get(), request.name, request.request_id)
        return q_pb.RedriveQueueResponse(moved=moved, rev=rev)

    async def WatchQueue(
        self, request: q_pb.WatchQueueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[q_pb.WatchQueueResponse]:
        stream: AsyncIterator[Any] = self.queues.watch(
            current_account.get(),
            request.name,
            snapshot=request.snapshot,
            after_rev=request.after_rev if request.HasField("after_rev") else None,
            partition=request.partition if request.HasField("partition") else None,
        )
        async for item in stream:
            for message in _watch_messages(item):
                yield message
