"""The client transport's base: one gRPC channel, its metadata, and error mapping.

The SDK touches gRPC stubs only in the ``apothic._client*`` modules, all built on
:class:`Transport`. Every RPC error is mapped to an exception from
:mod:`apothic.exceptions` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from apothic import _serialization as ser
from apothic._proto.v1 import types_pb2 as pb
from apothic.config import ClientConfig
from apothic.exceptions import from_grpc_error

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
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


class Transport:
    """A channel to one control plane, bound to the event loop that created it."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel = grpc.aio.insecure_channel(config.base_url, options=CHANNEL_OPTIONS)
        self._metadata = (("authorization", f"Bearer {config.api_key}"),)

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        call = method(request, metadata=self._metadata)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        finally:
            call.cancel()
