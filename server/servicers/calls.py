"""CallService: function, Queue and Dict calls multiplexed over one stream per client.

Each call on the stream runs the unary servicer method of the same name, as a task of its
own, so a blocking claim does not hold up the calls behind it; answers go back in
completion order, matched by ``call_id``. Tasks inherit the stream's context, so they run
as the account the stream authenticated as.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc.aio

from apothic._proto.v1 import call_service_pb2 as call_pb
from apothic._proto.v1 import call_service_pb2_grpc as call_grpc
from apothic.server.errors import DomainError

log = logging.getLogger("apothic.server.calls")

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _handlers(servicers: list[object]) -> dict[str, Handler]:
    """The servicer method behind each field of a call's ``request`` oneof (field
    ``put_items`` carries a ``PutItemsRequest``: method ``PutItems``)."""
    handlers: dict[str, Handler] = {}
    for field in call_pb.Call.DESCRIPTOR.oneofs_by_name["request"].fields:
        assert field.message_type is not None  # every member of the oneof is a message
        method = field.message_type.name.removesuffix("Request")
        for servicer in servicers:
            handler = getattr(servicer, method, None)
            if handler is not None:
                handlers[field.name] = handler
                break
        else:  # pragma: no cover - caught by the tests at start-up
            raise RuntimeError(f"no servicer implements {method} for call field {field.name}")
    return handlers


def _error(call_id: int, code: str, message: str) -> call_pb.CallResult:
    return call_pb.CallResult(call_id=call_id, error=call_pb.CallError(code=code, message=message))


class CallServicer(call_grpc.CallServiceServicer):
    """Runs the calls of each stream on the servicers that own them.

    Args:
        servicers: the FunctionService, QueueService and DictService servicers.
    """

    def __init__(self, *servicers: object) -> None:
        self._handlers = _handlers(list(servicers))
        #: The request reader of each open stream.
        self._readers: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Stops taking calls (for shutdown): each stream ends once its running calls answered."""
        for reader in list(self._readers):
            reader.cancel()

    async def StreamCalls(
        self, request_iterator: AsyncIterator[call_pb.StreamCallsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[call_pb.StreamCallsResponse]:
        results: list[call_pb.CallResult] = []
        ready = asyncio.Event()
        # Kept: asyncio.create_task asks for the running loop on every call (a system call).
        loop = asyncio.get_running_loop()
        reading = True
        running: dict[int, asyncio.Task[None]] = {}

        def answer(result: call_pb.CallResult) -> None:
            results.append(result)
            ready.set()

        async def run(call_id: int, field: str, request: Any) -> None:
            try:
                response = await self._handlers[field](request, context)
                result = call_pb.CallResult(call_id=call_id)
                getattr(result, field).CopyFrom(response)
            except DomainError as err:
                result = _error(call_id, err.code, str(err))
            except asyncio.CancelledError:
                running.pop(call_id, None)
                raise
            except Exception as exc:
                log.exception("call %s on a call stream failed", field)
                result = _error(call_id, "INTERNAL", f"the control plane failed the call: {exc}")
            running.pop(call_id, None)
            answer(result)

        async def read() -> None:
            nonlocal reading
            try:
                async for message in request_iterator:
                    for call_id in message.cancelled_call_ids:
                        task = running.pop(call_id, None)
                        if task is not None:
                            task.cancel()
                    for call in message.calls:
                        call_id = call.call_id
                        field = call.WhichOneof("request")
                        if field is None:
                            answer(_error(call_id, "INVALID_ARGUMENT", "a call carried no request"))
                        elif call_id in running:
                            message_ = f"call id {call_id} is already in flight on this stream"
                            answer(_error(call_id, "INVALID_ARGUMENT", message_))
                        else:
                            running[call_id] = loop.create_task(run(call_id, field, getattr(call, field)))
                if running:
                    await asyncio.gather(*running.values(), return_exceptions=True)
            finally:
                if running:  # closing: the calls already taken still get their answers
                    await asyncio.gather(*running.values(), return_exceptions=True)
                reading = False
                ready.set()

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            # An empty first message says the stream was accepted (see CallService's comment).
            yield call_pb.StreamCallsResponse()
            while True:
                if not results:
                    if not reading:
                        break
                    await ready.wait()
                    ready.clear()
                    continue
                # Everything answered while the last batch was being written goes together.
                batch, results[:] = list(results), []
                yield call_pb.StreamCallsResponse(results=batch)
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # surfaces an error of the request stream itself
        finally:
            for task in [reader, *running.values()]:
                task.cancel()
            for task in [reader, *running.values()]:
                with contextlib.suppress(BaseException):
                    await task
