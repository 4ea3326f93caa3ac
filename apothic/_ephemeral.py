"""What ephemeral queues and dicts share: a heartbeat for the life of a block, a delete when
it ends, and the blocking form of the ``async with``.

The control plane deletes an ephemeral object whose heartbeats stopped for its lease, so a
client that dies leaks nothing for longer than that; a block that ends deletes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from apothic._sync import run_sync
from apothic.exceptions import NotFoundError, ServiceError

T = TypeVar("T")

log = logging.getLogger("apothic.ephemeral")


@contextlib.asynccontextmanager
async def kept_alive(
    what: str,
    *,
    every_s: float,
    beat: Callable[[], Awaitable[object]],
    delete: Callable[[], Awaitable[object]],
    delete_errors: tuple[type[BaseException], ...] = (ServiceError,),
) -> AsyncIterator[None]:
    """Calls ``beat`` every ``every_s`` seconds in the background for the block, then stops
    and calls ``delete`` (ignoring ``delete_errors``: the server deletes it anyway).

    A heartbeat answered NOT_FOUND stops the beating (the object is gone); another failed
    heartbeat is logged and the next one still lands within the lease.
    """

    async def heartbeat() -> None:
        try:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await beat()
                except NotFoundError:
                    log.warning("%s is gone: deleted, or expired without heartbeats", what)
                    return
                except ServiceError as exc:
                    log.warning("heartbeat of %s failed: %s", what, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("heartbeats of %s stopped", what)

    beating = asyncio.create_task(heartbeat(), name=f"apothic-heartbeat-{what}")
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        with contextlib.suppress(*delete_errors):
            await delete()


@contextlib.contextmanager
def blocking(cm: AbstractAsyncContextManager[T], what: str, *, async_form: str) -> Iterator[T]:
    """Runs an ``async with`` block's enter and exit on the SDK's loop for a ``with`` block."""
    value = run_sync(cm.__aenter__(), what, async_form=async_form)
    try:
        yield value
    except BaseException as exc:
        if not run_sync(cm.__aexit__(type(exc), exc, exc.__traceback__), what, async_form=async_form):
            raise
    else:
        run_sync(cm.__aexit__(None, None, None), what, async_form=async_form)
