"""The call stream: function, Queue and Dict calls multiplexed over one ``StreamCalls``.

A message on an open stream costs a Python gRPC client and server about half what a unary
call does, and queue and dict operations are small and frequent. :class:`CallStream` opens
the stream on first use, sends each call with a fresh ``call_id`` and resolves the caller's
future when the answer with that id arrives (answers come in completion order). When the
stream breaks, every call in flight fails with the stream's error (the transport retries
those with a request id) and the next call opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import grpc
import grpc.aio

from apothic._proto.v1 import call_service_pb2 as call_pb
from apothic._proto.v1 import call_service_pb2_grpc as call_grpc
from apothic.exceptions import from_grpc_error, from_status

#: Request message full name -> the ``Call.request`` field that carries it.
CALL_FIELDS: dict[str, str] = {
    field.message_type.full_name: field.name
    for field in call_pb.Call.DESCRIPTOR.oneofs_by_name["request"].fields
    if field.message_type is not None
}


#: The status details gRPC's asyncio client sets when sending a message failed inside gRPC
#: (``_AioCall.set_internal_error``, after a failed send batch).
_WRITE_FAILED = "Internal error from Core"


class CallStreamUnsupported(Exception):
    """The control plane has no CallService (an older version): use unary calls."""


class CallStream:
    """One ``StreamCalls`` stream per transport, opened lazily and reopened after a failure.

    Calls that queue up while a message is being written go out together in the next one.

    Args:
        channel: the transport's channel.
        metadata: the transport's call metadata (the API key).
    """

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = call_grpc.CallServiceStub(channel)
        self._metadata = metadata
        self._ids = itertools.count(1)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[call_pb.Call] = []
        #: Calls the caller gave up on, to tell the server.
        self._cancelled: list[int] = []
        self._wake = asyncio.Event()
        self._accepted = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.supported = True

    async def call(self, field: str, request: Any) -> Any:
        """Sends one call and returns its response message.

        Raises:
            ServiceError: the call failed (its status) or the stream broke.
            CallStreamUnsupported: the control plane does not know CallService.
        """
        if self._call is None or self._reader is None or self._reader.done():
            self._open()
        call_id = next(self._ids)
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[call_id] = future
        call = call_pb.Call(call_id=call_id)
        getattr(call, field).CopyFrom(request)
        self._outbox.append(call)
        self._wake.set()
        try:
            result = await future
        except asyncio.CancelledError:
            # The caller gave up (cancelling our wait cancels the future): the server cancels
            # the call too, unless its answer had already arrived.
            if future.cancelled() or not future.done():
                self._cancelled.append(call_id)
                self._wake.set()
            raise
        finally:
            self._pending.pop(call_id, None)
        if result.WhichOneof("result") == "error":
            raise from_status(result.error.code, result.error.message)
        return getattr(result, field)

    def _open(self) -> None:
        # The stream is bound to this loop (as the channel is); kept to create futures
        # without asking for the running loop on every call (a system call).
        loop = self._loop = asyncio.get_running_loop()
        call = self._call = self._stub.StreamCalls(metadata=self._metadata)
        self._accepted = asyncio.Event()
        self._outbox.clear()  # calls of a broken stream were failed by its reader
        self._cancelled.clear()
        self._reader = loop.create_task(self._read(call), name="apothic-call-stream-reader")
        self._writer = loop.create_task(self._write(call), name="apothic-call-stream-writer")

    async def _write(self, call: Any) -> None:
        try:
            # The server's first message (empty) says it accepted the stream. Writing before it
            # could race a rejection (a bad API key) and turn its status into INTERNAL.
            await self._accepted.wait()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._outbox and not self._cancelled:
                    continue
                batch, self._outbox = self._outbox, []
                cancelled, self._cancelled = self._cancelled, []
                await call.write(call_pb.StreamCallsRequest(calls=batch, cancelled_call_ids=cancelled))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The stream broke: its reader fails the calls in flight, the unsent ones too.
            if not call.done():
                call.cancel()

    async def _read(self, call: Any) -> None:
        error: BaseException
        try:
            accepted = self._accepted
            async for message in call:
                accepted.set()
                for result in message.results:
                    future = self._pending.get(result.call_id)
                    if future is not None and not future.done():
                        future.set_result(result)
            error = from_status("UNAVAILABLE", "the control plane closed the call stream")
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
                error = CallStreamUnsupported(err.details() or "")
            elif err.code() == grpc.StatusCode.INTERNAL and err.details() == _WRITE_FAILED:
                # Not the control plane's answer (it fails a call inside the stream, never the
                # stream with INTERNAL): gRPC's own status for a write it could not send, as when
                # the connection dies under it. A broken stream like any other, so the calls
                # that are safe to repeat are retried.
                error = from_status("UNAVAILABLE", "the call stream broke: gRPC could not send a message on it")
            else:
                error = from_grpc_error(err)
        except asyncio.CancelledError:
            error = from_status("CANCELLED", "the call stream was closed")
        finally:
            if not call.done():
                call.cancel()
        if self._call is call:
            self._call = None
            if self._writer is not None:
                self._writer.cancel()
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Ends the stream (calls in flight fail)."""
        call, writer, reader = self._call, self._writer, self._reader
        self._call = None
        if call is not None:
            call.cancel()
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        if reader is not None:
            # Not cancelled: it ends once gRPC has reported the cancelled call's pending read to
            # this loop. Cancelled, it would leave that report to arrive later, maybe after
            # the loop closed (an error gRPC logs on another loop).
            try:
                await asyncio.wait_for(asyncio.shield(reader), 5)
            except TimeoutError:
                reader.cancel()
            except asyncio.CancelledError:
                reader.cancel()
                raise
