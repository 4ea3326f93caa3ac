"""DictService: named key-value dicts with versions, compare-and-set, transactions, leases,
fenced locks, watches and ephemeral dicts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio

from apothic._proto.v1 import dict_service_pb2 as dict_pb
from apothic._proto.v1 import dict_service_pb2_grpc as dict_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.dict_watch import DictEventRecord
from apothic.server.dicts import (
    DictCompare,
    DictDelete,
    DictEntryRecord,
    DictLeaseRecord,
    DictManager,
    DictOp,
    DictPut,
    DictRecord,
)
from apothic.server.errors import InvalidArgument
from apothic.server.servicers.convert import FORMAT_CODES, payload_format, timestamp, watch_marker
from apothic.server.watch import Change, Progress, Reset, SnapshotChunk, SnapshotEnd, WatchItem

_COMPARE_OPS = {
    dict_pb.DICT_COMPARE_OP_EQUAL: "==",
    dict_pb.DICT_COMPARE_OP_NOT_EQUAL: "!=",
    dict_pb.DICT_COMPARE_OP_GREATER: ">",
    dict_pb.DICT_COMPARE_OP_LESS: "<",
}


def _info(record: DictRecord, length: int) -> dict_pb.DictInfo:
    return dict_pb.DictInfo(
        dict_id=record.dict_id,
        name=record.name,
        rev=record.rev,
        length=length,
        ephemeral=record.expires_at is not None,
    )


def _entry(entry: DictEntryRecord, *, with_value: bool = True) -> dict_pb.DictEntry:
    value = pb.Payload(format=FORMAT_CODES[entry.format], data=entry.value) if with_value else None
    return dict_pb.DictEntry(
        key=entry.key,
        value=value,
        version=entry.version,
        mod_rev=entry.mod_rev,
        create_rev=entry.create_rev,
        lease_id=entry.lease,
    )


def _event(event: DictEventRecord) -> dict_pb.DictEvent:
    if event.entry is None:
        return dict_pb.DictEvent(delete=dict_pb.DictDeletion(key=event.key))
    return dict_pb.DictEvent(put=_entry(event.entry))


def _watch_item(item: WatchItem) -> dict_pb.WatchDictResponse:
    if isinstance(item, Change):
        return dict_pb.WatchDictResponse(
            change=dict_pb.DictChange(rev=item.rev, events=[_event(e) for e in item.events])
        )
    if isinstance(item, SnapshotChunk):
        return dict_pb.WatchDictResponse(
            snapshot=dict_pb.DictSnapshotChunk(rev=item.rev, entries=[_entry(e) for e in item.entries])
        )
    assert isinstance(item, SnapshotEnd | Progress | Reset)
    return dict_pb.WatchDictResponse(**watch_marker(item))


def _lease(lease: DictLeaseRecord) -> dict_pb.DictLease:
    return dict_pb.DictLease(lease_id=lease.lease_id, ttl_s=lease.ttl_s, deadline=timestamp(lease.deadline))


def _ops(ops: list[dict_pb.DictOp], branch: str) -> list[DictOp]:
    out: list[DictOp] = []
    for op in ops:
        which = op.WhichOneof("op")
        if which == "put":
            fmt = payload_format(op.put.value, f"the value of key {op.put.key!r}")
            out.append(DictPut(op.put.key, op.put.value.data, fmt))
        elif which == "delete":
            out.append(DictDelete(op.delete.key))
        else:
            raise InvalidArgument(f"an operation of the {branch} branch is neither a put nor a delete")
    return out


class DictServicer(dict_grpc.DictServiceServicer):
    def __init__(self, dicts: DictManager) -> None:
        self.dicts = dicts

    async def CreateDict(
        self, request: dict_pb.CreateDictRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.CreateDictResponse:
        record, length, created = await self.dicts.create(
            current_account.get(), request.name, exist_ok=request.exist_ok, ephemeral=request.ephemeral
        )
        lease_s = self.dicts.ephemeral_lease_s if record.expires_at is not None else 0.0
        return dict_pb.CreateDictResponse(dict=_info(record, length), created=created, lease_s=lease_s)

    async def HeartbeatDict(
        self, request: dict_pb.HeartbeatDictRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.HeartbeatDictResponse:
        lease_s = await self.dicts.heartbeat(current_account.get(), request.name)
        return dict_pb.HeartbeatDictResponse(lease_s=lease_s)

    async def GetDict(
        self, request: dict_pb.GetDictRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.GetDictResponse:
        record, length = await self.dicts.info(current_account.get(), request.name)
        return dict_pb.GetDictResponse(dict=_info(record, length))

    async def DeleteDict(
        self, request: dict_pb.DeleteDictRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.DeleteDictResponse:
        await self.dicts.delete_dict(current_account.get(), request.name)
        return dict_pb.DeleteDictResponse()

    async def GetDictValue(
        self, request: dict_pb.GetDictValueRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.GetDictValueResponse:
        entry, rev = await self.dicts.get(current_account.get(), request.name, request.key)
        if entry is None:
            return dict_pb.GetDictValueResponse(found=False, rev=rev)
        return dict_pb.GetDictValueResponse(found=True, entry=_entry(entry), rev=rev)

    async def PutDictValue(
        self, request: dict_pb.PutDictValueRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.PutDictValueResponse:
        fmt = payload_format(request.value, f"the value of key {request.key!r}")
        outcome = await self.dicts.put(
            current_account.get(),
            request.name,
            request.key,
            request.value.data,
            fmt,
            if_absent=request.if_absent,
            if_version=request.if_version if request.HasField("if_version") else None,
            lease=request.lease_id,
            fence=(request.fence.lock, request.fence.token) if request.HasField("fence") else None,
            request_id=request.request_id,
        )
        return dict_pb.PutDictValueResponse(version=outcome.version, rev=outcome.rev)

    async def DeleteDictValue(
        self, request: dict_pb.DeleteDictValueRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.DeleteDictValueResponse:
        outcome = await self.dicts.delete(
            current_account.get(), request.name, request.key, request_id=request.request_id
        )
        return dict_pb.DeleteDictValueResponse(deleted=outcome.deleted, rev=outcome.rev)

    async def ListDictEntries(
        self, request: dict_pb.ListDictEntriesRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.ListDictEntriesResponse:
        entries, more, rev = await self.dicts.list_entries(
            current_account.get(),
            request.name,
            prefix=request.prefix,
            start_after=request.start_after,
            limit=request.limit,
        )
        return dict_pb.ListDictEntriesResponse(
            entries=[_entry(e, with_value=not request.keys_only) for e in entries], more=more, rev=rev
        )

    async def ExecuteDictTxn(
        self, request: dict_pb.ExecuteDictTxnRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.ExecuteDictTxnResponse:
        compares = []
        for c in request.compares:
            op = _COMPARE_OPS.get(c.op)
            if op is None:
                raise InvalidArgument(f"the compare on key {c.key!r} has no valid op")
            compares.append(DictCompare(c.key, op, c.version))
        outcome = await self.dicts.txn(
            current_account.get(),
            request.name,
            compares,
            _ops(list(request.then_ops), "then"),
            _ops(list(request.else_ops), "else"),
            request_id=request.request_id,
        )
        return dict_pb.ExecuteDictTxnResponse(succeeded=outcome.succeeded, rev=outcome.rev)

    async def GrantDictLease(
        self, request: dict_pb.GrantDictLeaseRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.GrantDictLeaseResponse:
        lease = await self.dicts.grant(current_account.get(), request.name, request.ttl_s)
        return dict_pb.GrantDictLeaseResponse(lease=_lease(lease))

    async def KeepDictLeaseAlive(
        self, request: dict_pb.KeepDictLeaseAliveRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.KeepDictLeaseAliveResponse:
        lease = await self.dicts.keepalive(current_account.get(), request.name, request.lease_id)
        return dict_pb.KeepDictLeaseAliveResponse(lease=_lease(lease))

    async def RevokeDictLease(
        self, request: dict_pb.RevokeDictLeaseRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.RevokeDictLeaseResponse:
        revoked, rev = await self.dicts.revoke(current_account.get(), request.name, request.lease_id)
        return dict_pb.RevokeDictLeaseResponse(revoked=revoked, rev=rev)

    async def AcquireDictLock(
        self, request: dict_pb.AcquireDictLockRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.AcquireDictLockResponse:
        value = None
        if request.HasField("value"):
            value = (request.value.data, payload_format(request.value, f"the value of lock {request.lock!r}"))
        acquired = await self.dicts.acquire_lock(
            current_account.get(), request.name, request.lock, request.ttl_s, request.timeout_s, value=value
        )
        if acquired is None:
            return dict_pb.AcquireDictLockResponse(acquired=False)
        lease, token = acquired
        return dict_pb.AcquireDictLockResponse(acquired=True, lease=_lease(lease), token=token)

    async def ReleaseDictLock(
        self, request: dict_pb.ReleaseDictLockRequest, context: grpc.aio.ServicerContext
    ) -> dict_pb.ReleaseDictLockResponse:
        released = await self.dicts.release_lock(current_account.get(), request.name, request.lock, request.token)
        return dict_pb.ReleaseDictLockResponse(released=released)

    async def WatchDict(
        self, request: dict_pb.WatchDictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dict_pb.WatchDictResponse]:
        async for item in self.dicts.watch(
            current_account.get(),
            request.name,
            snapshot=request.snapshot,
            after_rev=request.after_rev if request.HasField("after_rev") else None,
            prefix=request.prefix,
        ):
            yield _watch_item(item)
