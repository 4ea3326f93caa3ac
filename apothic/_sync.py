"""The blocking facade: one background event loop runs the async core for blocking callers.

The SDK is written async-first. A blocking method runs its coroutine on this loop and waits;
calling one from inside a running event loop raises an error that names the ``.aio`` form.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from apothic.exceptions import BlockingInAsyncContextError

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _ensure_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    loop = _loop
    if loop is not None and not loop.is_closed():
        return loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="apothic-sync-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def _shutdown() -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)


def background_loop() -> asyncio.AbstractEventLoop:
    """The loop blocking calls run on."""
    return _ensure_loop()


def _check_not_in_loop(what: str, *, iterator: bool = False, async_form: str | None = None) -> None:
    running = asyncio._get_running_loop()  # None outside a loop, without raising
    if running is None:
        return
    if running is not _loop:
        if async_form is None:
            owner, _, method = what.rpartition(".")
            call = f"{owner}.aio.{method.removesuffix('()')}(...)"
            usage = f"async for ... in {call}" if iterator else f"await {call}"
            async_form = usage if owner else f"the .aio form of {what}"
        raise BlockingInAsyncContextError(
            f"{what} blocks, and was called inside a running event loop; use `{async_form}` instead"
        )


def run_sync(coro: Coroutine[Any, Any, T], what: str, *, async_form: str | None = None) -> T:
    """Runs ``coro`` on the background loop and returns its result.

    Args:
        coro: the async implementation.
        what: the blocking method's name, for the error raised inside an event loop.
        async_form: what that error tells to use instead (default: ``await
            Owner.aio.method(...)`` derived from ``what``).

    Raises:
        BlockingInAsyncContextError: called from inside a running event loop.
    """
    try:
        _check_not_in_loop(what, async_form=async_form)
    except BlockingInAsyncContextError:
        coro.close()
        raise
    loop = _ensure_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise BlockingInAsyncContextError(f"{what} cannot block the SDK's own event loop")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


#: Items an async iterator may run ahead of its blocking consumer.
_ITER_AHEAD = 1024
_DONE = object()


def iter_sync(aiter: AsyncIterator[T], what: str) -> Iterator[T]:
    """Iterates an async iterator from blocking code.

    A task on the background loop drains the iterator into a thread-safe queue (up to
    :data:`_ITER_AHEAD` items ahead), so a fast stream costs one queue hand-off per item
    rather than a loop round trip.
    """
    _check_not_in_loop(what, iterator=True)
    loop = _ensure_loop()
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    room = threading.Semaphore(_ITER_AHEAD)
    stopped = threading.Event()

    async def pump() -> None:
        try:
            async for item in aiter:
                while not room.acquire(blocking=False):
                    if stopped.is_set():
                        return
                    await asyncio.sleep(0.001)
                items.put((True, item))
            items.put((True, _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            items.put((False, exc))

    future = asyncio.run_coroutine_threadsafe(pump(), loop)
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            room.release()
            yield item
    finally:
        stopped.set()
        if not future.done():
            loop.call_soon_threadsafe(future.cancel)
            # Finalized by the garbage collector on the loop's own thread, waiting would
            # block the very loop that has to run the cancellation.
            if threading.current_thread() is not _thread:
                with contextlib.suppress(BaseException):
                    future.result(timeout=10)
