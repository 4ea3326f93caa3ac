"""How a worker's session reaches the control plane.

:class:`GrpcTransport` dials the control plane (the normal case: workers only dial out).
:class:`InProcessTransport` hands the session straight to a control plane running in the
same process (``apothic up``'s local worker), skipping serialization and loopback hops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc.aio

from apothic._proto.v1 import worker_service_pb2 as w_pb
from apothic._proto.v1 import worker_service_pb2_grpc as w_grpc

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

Requests = AsyncIterator[w_pb.SessionRequest]
Responses = AsyncIterator[w_pb.SessionResponse]
TunnelRequests = AsyncIterator[w_pb.TunnelRequest]
TunnelResponses = AsyncIterator[w_pb.TunnelResponse]


class SessionTransport(Protocol):
    """Opens one session: sends ``requests``, yields the control plane's messages."""

    def open(self, requests: Requests) -> contextlib.AbstractAsyncContextManager[Responses]: ...


class GrpcTransport:
    """A session over ``WorkerService.Session`` on a channel the worker dials."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._stub: w_grpc.WorkerServiceStub | None = None

    @contextlib.asynccontextmanager
    async def open(self, requests: Requests) -> AsyncIterator[Responses]:
        async with grpc.aio.insecure_channel(self.base_url, options=_CHANNEL_OPTIONS) as channel:
            self._stub = w_grpc.WorkerServiceStub(channel)
            call = self._stub.Session(requests, metadata=self._metadata)
            try:
                yield call.__aiter__()
            finally:
                self._stub = None
                call.cancel()

    @contextlib.asynccontextmanager
    async def tunnel(self, requests: TunnelRequests) -> AsyncIterator[TunnelResponses]:
        """A ``WorkerService.Tunnel`` stream on the session's channel."""
        if self._stub is None:
            raise ConnectionError("the worker has no open session to tunnel through")
        call = self._stub.Tunnel(requests, metadata=self._metadata)
        try:
            yield call.__aiter__()
        finally:
            call.cancel()


class InProcessTransport:
    """A session handed directly to a control plane's session handler in this process."""

    def __init__(
        self,
        handler: Callable[[Requests, Any], Responses],
        base_url: str,
        tunnel_handler: Callable[[TunnelRequests, Any], TunnelResponses] | None = None,
        stream_handler: Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], bool] | None = None,
    ) -> None:
        self._handler = handler
        self._tunnel_handler = tunnel_handler
        #: Hands a connection to a container straight to the control plane's tunnel
        #: (``TunnelBroker.attach_stream``): no stream in between.
        self.attach_stream = stream_handler
        self.base_url = base_url

    @contextlib.asynccontextmanager
    async def open(self, requests: Requests) -> AsyncIterator[Responses]:
        responses = self._handler(requests, None)
        try:
            yield responses
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    @contextlib.asynccontextmanager
    async def tunnel(self, requests: TunnelRequests) -> AsyncIterator[TunnelResponses]:
        """A tunnel handed straight to the control plane's tunnel handler."""
        if self._tunnel_handler is None:
            raise ConnectionError("this in-process transport has no tunnel handler")
        responses = self._tunnel_handler(requests, None)
        try:
            yield responses
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
