"""Dict calls of the client transport (DictService)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC
from typing import Any

from apothic import _serialization as ser
from apothic._proto.v1 import types_pb2 as pb
from apothic._transport import FORMAT_FROM_PB, Transport, watch_marker_from_pb
from apothic.exceptions import InvalidConfigError


class DictCalls(Transport):
    """DictService RPCs; part of :class:`apothic._client.Client`."""

    @property
    def _dicts(self) -> Any:
        stub = self.__dict__.get("_dict_stub")
        if stub is None:
            from apothic._proto.v1 import dict_service_pb2_grpc as dict_grpc

            stub = self.__dict__["_dict_stub"] = dict_grpc.DictServiceStub(self._channel)
        return stub

    async def create_dict(self, name: str, *, exist_ok: bool) -> tuple[int, bool]:
        """Creates a dict (or finds it when ``exist_ok``); returns its rev and whether it was
        created."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.CreateDict, dict_pb.CreateDictRequest(name=name, exist_ok=exist_ok))
        return int(resp.dict.rev), bool(resp.created)

    async def create_ephemeral_dict(self, name: str) -> float:
        """Creates an ephemeral dict (failing when the name is taken); returns how many
        seconds it lives without a heartbeat."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.CreateDict, dict_pb.CreateDictRequest(name=name, ephemeral=True))
        return float(resp.lease_s)

    async def heartbeat_dict(self, name: str) -> float:
        """Keeps an ephemeral dict alive; returns its lease in seconds."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.HeartbeatDict, dict_pb.HeartbeatDictRequest(name=name))
        return float(resp.lease_s)

    async def get_dict(self, name: str) -> tuple[int, int]:
        """Returns a dict's rev and number of keys."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GetDict, dict_pb.GetDictRequest(name=name))
        return int(resp.dict.rev), int(resp.dict.length)

    async def delete_dict(self, name: str) -> None:
        """Deletes a dict and its keys."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        await self._unary(self._dicts.DeleteDict, dict_pb.DeleteDictRequest(name=name))

    @staticmethod
    def _dict_entry(entry: Any) -> Any:
        from apothic.dict import DictEntry

        value = None
        if entry.HasField("value"):
            value = ser.loads_value(FORMAT_FROM_PB.get(entry.value.format, ser.CLOUDPICKLE), entry.value.data)
        return DictEntry(
            key=entry.key,
            value=value,
            version=entry.version,
            mod_rev=entry.mod_rev,
            create_rev=entry.create_rev,
            lease_id=entry.lease_id,
        )

    async def dict_get(self, name: str, key: str) -> Any:
        """Returns one key as a :class:`apothic.dict.DictEntry`, or None when it is missing."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GetDictValue, dict_pb.GetDictValueRequest(name=name, key=key))
        return self._dict_entry(resp.entry) if resp.found else None

    async def dict_put(
        self,
        name: str,
        key: str,
        value: Any,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease_id: str = "",
        fence: tuple[str, int] | None = None,
        request_id: str = "",
    ) -> tuple[int, int]:
        """Writes one key (value cloudpickled), optionally attached to a lease or fenced by
        ``(lock, token)``; returns its new version and the dict's rev."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb
        from apothic.dict import encode_value

        req = dict_pb.PutDictValueRequest(
            name=name,
            key=key,
            value=pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=encode_value(key, value)),
            if_absent=if_absent,
            request_id=request_id,
            lease_id=lease_id,
        )
        if if_version is not None:
            req.if_version = if_version
        if fence is not None:
            req.fence.lock, req.fence.token = fence
        resp = await self._unary(self._dicts.PutDictValue, req)
        return int(resp.version), int(resp.rev)

    async def dict_delete(self, name: str, key: str, *, request_id: str = "") -> tuple[bool, int]:
        """Deletes one key; returns whether it existed and the dict's rev."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.DeleteDictValueRequest(name=name, key=key, request_id=request_id)
        resp = await self._unary(self._dicts.DeleteDictValue, req)
        return bool(resp.deleted), int(resp.rev)

    async def dict_list(
        self, name: str, *, prefix: str = "", start_after: str = "", limit: int = 0, keys_only: bool = False
    ) -> tuple[list[Any], bool]:
        """One page of entries in key order, and whether more follow."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.ListDictEntriesRequest(
            name=name, prefix=prefix, start_after=start_after, limit=limit, keys_only=keys_only
        )
        resp = await self._unary(self._dicts.ListDictEntries, req)
        return [self._dict_entry(e) for e in resp.entries], bool(resp.more)

    async def dict_txn(
        self, name: str, compares: list[Any], then: list[Any], else_: list[Any], *, request_id: str = ""
    ) -> Any:
        """Runs a transaction of :mod:`apothic.dict` compares and ops; returns a
        :class:`apothic.dict.DictTxnResult`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb
        from apothic.dict import DictDelete, DictPut, DictTxnResult, encode_value

        ops_pb = {
            "==": dict_pb.DICT_COMPARE_OP_EQUAL,
            "!=": dict_pb.DICT_COMPARE_OP_NOT_EQUAL,
            ">": dict_pb.DICT_COMPARE_OP_GREATER,
            "<": dict_pb.DICT_COMPARE_OP_LESS,
        }

        def op_pb(op: Any) -> Any:
            if isinstance(op, DictPut):
                data = encode_value(op.key, op.value)
                value = pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=data)
                return dict_pb.DictOp(put=dict_pb.DictPutOp(key=op.key, value=value))
            if isinstance(op, DictDelete):
                return dict_pb.DictOp(delete=dict_pb.DictDeleteOp(key=op.key))
            raise InvalidConfigError(f"a txn operation must be a DictPut or DictDelete, not {type(op).__name__}")

        compares_pb = []
        for c in compares:
            if c.op not in ops_pb:
                raise InvalidConfigError(f"compare op {c.op!r} is not one of {', '.join(ops_pb)}")
            compares_pb.append(dict_pb.DictCompare(key=c.key, op=ops_pb[c.op], version=c.version))
        req = dict_pb.ExecuteDictTxnRequest(
            name=name,
            compares=compares_pb,
            then_ops=[op_pb(o) for o in then],
            else_ops=[op_pb(o) for o in else_],
            request_id=request_id,
        )
        resp = await self._unary(self._dicts.ExecuteDictTxn, req)
        return DictTxnResult(succeeded=bool(resp.succeeded), rev=int(resp.rev))

    @staticmethod
    def _dict_lease(lease: Any) -> Any:
        from apothic.dict import Lease

        return Lease(lease_id=lease.lease_id, ttl_s=lease.ttl_s, deadline=lease.deadline.ToDatetime(tzinfo=UTC))

    async def dict_grant(self, name: str, ttl_s: float) -> Any:
        """Grants a lease; returns a :class:`apothic.dict.Lease`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        resp = await self._unary(self._dicts.GrantDictLease, dict_pb.GrantDictLeaseRequest(name=name, ttl_s=ttl_s))
        return self._dict_lease(resp.lease)

    async def dict_keepalive(self, name: str, lease_id: str) -> Any:
        """Extends a lease to now + its TTL; returns the :class:`apothic.dict.Lease`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.KeepDictLeaseAliveRequest(name=name, lease_id=lease_id)
        resp = await self._unary(self._dicts.KeepDictLeaseAlive, req)
        return self._dict_lease(resp.lease)

    async def dict_revoke(self, name: str, lease_id: str) -> bool:
        """Revokes a lease (deleting its keys); returns whether it was live."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.RevokeDictLeaseRequest(name=name, lease_id=lease_id)
        resp = await self._unary(self._dicts.RevokeDictLease, req)
        return bool(resp.revoked)

    async def dict_acquire_lock(
        self, name: str, lock: str, ttl_s: float, timeout_s: float, *, value: bytes | None = None
    ) -> tuple[Any, int] | None:
        """One acquisition attempt (waiting up to ``timeout_s`` server-side); returns the
        :class:`apothic.dict.Lease` and the fencing token, or None on timeout. ``value``
        (cloudpickled) is what the lock key holds; by default its lease id."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.AcquireDictLockRequest(name=name, lock=lock, ttl_s=ttl_s, timeout_s=timeout_s)
        if value is not None:
            req.value.CopyFrom(pb.Payload(format=pb.PAYLOAD_FORMAT_CLOUDPICKLE, data=value))
        resp = await self._unary(self._dicts.AcquireDictLock, req)
        if not resp.acquired:
            return None
        return self._dict_lease(resp.lease), int(resp.token)

    async def dict_release_lock(self, name: str, lock: str, token: int) -> bool:
        """Releases a lock held with ``token``; returns whether it still was."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb

        req = dict_pb.ReleaseDictLockRequest(name=name, lock=lock, token=token)
        resp = await self._unary(self._dicts.ReleaseDictLock, req)
        return bool(resp.released)

    async def dict_watch(
        self, name: str, *, snapshot: bool, after_rev: int | None, prefix: str
    ) -> AsyncGenerator[Any, None]:
        """Streams a dict's watch: :class:`apothic.dict.DictEntry` for each snapshot entry,
        :class:`apothic.dict.DictChange` for each change, and the markers of
        :mod:`apothic.watch`."""
        from apothic._proto.v1 import dict_service_pb2 as dict_pb
        from apothic.dict import DictChange, DictEvent

        req = dict_pb.WatchDictRequest(name=name, snapshot=snapshot, prefix=prefix)
        if after_rev is not None:
            req.after_rev = after_rev
        async for resp in self._stream(self._dicts.WatchDict, req):
            which = resp.WhichOneof("event")
            if which == "snapshot":
                for entry in resp.snapshot.entries:
                    yield self._dict_entry(entry)
            elif which == "change":
                events = []
                for ev in resp.change.events:
                    if ev.WhichOneof("event") == "put":
                        events.append(DictEvent(type="put", key=ev.put.key, entry=self._dict_entry(ev.put)))
                    else:
                        events.append(DictEvent(type="delete", key=ev.delete.key))
                yield DictChange(rev=resp.change.rev, events=tuple(events))
            elif which is not None:
                yield watch_marker_from_pb(which, getattr(resp, which))
