"""QueueService: durable named queues (see apothic.server.queues for the guarantees)."""

from __future__ import annotations

import grpc.aio

from apothic._proto.v1 import queue_service_pb2 as q_pb
from apothic._proto.v1 import queue_service_pb2_grpc as q_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.queues import DEFAULT_LEASE_S, QueueManager, QueueView, TakenItem
from apothic.server.servicers import convert


def _info(view: QueueView) -> q_pb.QueueInfo:
    return q_pb.QueueInfo(
        name=view.name,
        rev=view.rev,
        max_attempts=view.max_attempts,
        length=view.length,
        dead_letter_queue=view.dead_letter_queue,
    )


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
        view, created = await self.queues.create(current_account.get(), request.name, max_attempts)
        return q_pb.CreateQueueResponse(queue=_info(view), created=created)

    async def GetQueue(self, request: q_pb.GetQueueRequest, context: grpc.aio.ServicerContext) -> q_pb.GetQueueResponse:
        return q_pb.GetQueueResponse(queue=_info(await self.queues.get(current_account.get(), request.name)))

    async def DeleteQueue(
        self, request: q_pb.DeleteQueueRequest, context: grpc.aio.ServicerContext
    ) -> q_pb.DeleteQueueResponse:
        await self.queues.delete(current_account.get(), request.name)
        return q_pb.DeleteQueueResponse()

    async def PutItems(self, request: q_pb.PutItemsRequest, context: grpc.aio.ServicerContext) -> q_pb.PutItemsResponse:
        payloads = [(convert.payload_format(p, f"item {i}"), p.data) for i, p in enumerate(request.items)]
        rev = await self.queues.put(
            current_account.get(), request.name, request.partition, payloads, request.request_id
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
