"""The client transport's base: one gRPC channel, its metadata, and error mapping.

The SDK touches gRPC stubs only in the ``apothic._client*`` modules, all built on
:class:`Transport`. Every RPC error is mapped to an exception from
:mod:`apothic.exceptions` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from apothic import _serialization as ser
from apothic._call_stream import CALL_FIELDS, CallStream, CallStreamUnsupported
from apothic._proto.v1 import types_pb2 as pb
from apothic.config import ClientConfig
from apothic.exceptions import ServiceError, from_grpc_error
from apothic.watch import Progress, Reset, SnapshotEnd, WatchMarker

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: How long a call with a request id is retried while the control plane is unavailable.
UNAVAILABLE_RETRY_S = 30.0
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 1.0
#: Message full name -> whether it has a ``request_id`` field.
_HAS_REQUEST_ID: dict[str, bool] = {}
#: The unary calls that change nothing (their request messages): safe to repeat as they are.
#: The long polls (WaitJob, WaitSandbox) are not among them: their callers keep a deadline.
_READS = frozenset(
    f"apothic.v1.{name}Request"
    for name in (
        "GetBalance", "GetDeployment", "GetDict", "GetDictValue", "GetFile", "GetJob", "GetJobLogs", "GetQueue",
        "GetQueueLength", "GetSandbox", "GetVolume", "ListApps", "ListCharges", "ListDeployments",
        "ListDictEntries", "ListDir", "ListFiles", "ListJobs", "ListSandboxes", "ListSchedules", "ListSecrets",
        "ListVolumes", "ReadFile",
    )
)  # fmt: skip
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

FORMAT_TO_PB: dict[str, pb.PayloadFormat.ValueType] = {
    ser.CLOUDPICKLE: pb.PAYLOAD_FORMAT_CLOUDPICKLE,
    ser.JSON: pb.PAYLOAD_FORMAT_JSON,
}
FORMAT_FROM_PB: dict[int, str] = {v: k for k, v in FORMAT_TO_PB.items()}


def _time(ts: Any) -> datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC)


def watch_marker_from_pb(which: str, msg: Any) -> WatchMarker:
    """The SDK form of a ``WatchSnapshotEnd``/``WatchProgress``/``WatchReset`` message;
    ``which`` is its oneof field name (``snapshot_end``, ``progress`` or ``reset``)."""
    if which == "snapshot_end":
        return SnapshotEnd(rev=msg.rev)
    if which == "progress":
        return Progress(rev=msg.rev)
    if which == "reset":
        return Reset(after_rev=msg.after_rev, oldest_rev=msg.oldest_rev, rev=msg.rev, reason=msg.reason)
    raise ValueError(f"not a watch marker: {which!r}")


def _idempotent(request: Any) -> bool:
    """Whether ``request`` carries a request id (filled in here when empty)."""
    descriptor = request.DESCRIPTOR
    has = _HAS_REQUEST_ID.get(descriptor.full_name)
    if has is None:
        has = _HAS_REQUEST_ID[descriptor.full_name] = "request_id" in descriptor.fields_by_name
    if has and not request.request_id:
        request.request_id = uuid.uuid4().hex
    return has


class Transport:
    """A channel to one control plane, bound to the event loop that created it."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel = grpc.aio.insecure_channel(config.base_url, options=CHANNEL_OPTIONS)
        self._metadata = (("authorization", f"Bearer {config.api_key}"),)
        self._calls = CallStream(self._channel, self._metadata)
        #: Whether the control plane has answered a call of this transport yet.
        self._reached = False

    async def close(self) -> None:
        """Closes the call stream and the channel."""
        await self._calls.close()
        await self._channel.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """Calls a unary RPC; maps its error.

        Function calls and Queue and Dict data calls go over the call stream (see :mod:`apothic._call_stream`),
        unless a timeout is given or the control plane has no CallService; everything else is
        a plain unary call.

        A request with a ``request_id`` field gets a fresh id when it has none, which makes it
        safe to repeat: while the control plane is unreachable (restarting, or it died after
        receiving the call) it is retried with the same id for up to
        :data:`UNAVAILABLE_RETRY_S` seconds, and the server applies it once. A read (a call
        that changes nothing, :data:`_READS`) is retried the same way once the control plane
        has answered this transport before: a restart is ridden out, while a wrong or dead
        address still fails at once.
        """
        retry = _idempotent(request) or (self._reached and request.DESCRIPTOR.full_name in _READS)
        field = CALL_FIELDS.get(request.DESCRIPTOR.full_name) if timeout is None else None
        give_up = 0.0  # set on the first failure (asking for the loop's clock costs a syscall)
        delay = RETRY_FIRST_DELAY_S
        while True:
            try:
                if field is not None and self._calls.supported:
                    try:
                        response = await self._calls.call(field, request)
                    except CallStreamUnsupported:
                        continue
                else:
                    response = await method(request, metadata=self._metadata, timeout=timeout)
                self._reached = True
                return response
            except grpc.aio.AioRpcError as err:
                error = from_grpc_error(err)
            except ServiceError as err:
                error = err
            if error.code != "UNAVAILABLE":
                self._reached = True  # it answered, with an error
                raise error from None
            if not retry:
                raise error from None
            now = asyncio.get_running_loop().time()
            if not give_up:
                give_up = now + UNAVAILABLE_RETRY_S
            if now + delay > give_up:
                raise error from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        call = method(request, metadata=self._metadata)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        finally:
            call.cancel()
