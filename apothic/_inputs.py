"""Turning a map's iterables into batches of serialized inputs, without blocking the
SDK's event loop on a slow generator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from apothic import _serialization as ser
from apothic.exceptions import SerializationError

#: Inputs sent in one message.
BATCH = 256

_END = object()


def _calls(iterables: tuple[Iterable[Any], ...], kwargs: dict[str, Any], star: bool) -> Iterator[tuple[tuple, dict]]:
    if star:
        (items,) = iterables
        for item in items:
            yield tuple(item), kwargs
    else:
        for args in zip(*iterables, strict=False):
            yield args, kwargs


def _encode(index: int, call: tuple[tuple, dict], func: Callable[..., Any] | None) -> tuple[int, bytes]:
    try:
        return index, ser.dumps_args(call[0], call[1], func=func)
    except SerializationError as exc:
        raise SerializationError(f"map input {index}: {exc}") from exc


async def input_batches(
    iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...],
    kwargs: dict[str, Any],
    func: Callable[..., Any] | None,
    *,
    star: bool = False,
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Yields lists of ``(index, pickled args)``.

    In-memory sequences are cut into batches directly. Iterators and generators are drained
    on a thread (async iterables on a task) so a slow one never blocks the event loop; what
    has arrived is sent at once, in batches of up to :data:`BATCH`. An exception raised by
    the caller's iterator is re-raised here, ending the map.
    """
    if not iterables:
        return
    if all(isinstance(it, list | tuple | range) for it in iterables):
        batch: list[tuple[int, bytes]] = []
        for index, call in enumerate(_calls(iterables, kwargs, star)):  # type: ignore[arg-type]
            batch.append(_encode(index, call, func))
            if len(batch) >= BATCH:
                yield batch
                batch = []
                await asyncio.sleep(0)
        if batch:
            yield batch
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    if any(isinstance(it, AsyncIterable) for it in iterables):
        if len(iterables) != 1:
            raise TypeError("map takes a single async iterable")
        source: Any = iterables[0]

        async def produce_async() -> None:
            try:
                index = 0
                async for item in source:
                    args = tuple(item) if star else (item,)
                    queue.put_nowait(_encode(index, (args, kwargs), func))
                    index += 1
                queue.put_nowait(_END)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait(exc)

        producer: Any = asyncio.ensure_future(produce_async())
    else:

        def produce() -> None:
            try:
                for index, call in enumerate(_calls(iterables, kwargs, star)):  # type: ignore[arg-type]
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, _encode(index, call, func))
                loop.call_soon_threadsafe(queue.put_nowait, _END)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        producer = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            batch = []
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    return
                if isinstance(item, BaseException):
                    if batch:  # the inputs before the failure still run, like builtin map()
                        yield batch
                    raise item
                batch.append(item)
                if len(batch) >= BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            yield batch
    finally:
        stop.set()
        if isinstance(producer, asyncio.Future) and not producer.done():
            producer.cancel()
