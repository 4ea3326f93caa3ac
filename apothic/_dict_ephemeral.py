"""Ephemeral dicts: ``with Dict.ephemeral() as d`` (``async with Dict.ephemeral.aio()``).

The dict gets a unique name and is created ephemeral: the control plane deletes it when no
heartbeat reached it for its lease (30 s). A background task heartbeats every third of the
lease while the block runs, and the dict is deleted when the block exits; a client that dies
leaks nothing for longer than the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import BlockingInAsyncContextError, NotFoundError

if TYPE_CHECKING:
    from apothic.dict import Dict


async def _open_ephemeral(client: ClientConfig | None) -> tuple[Dict, Callable[[], Coroutine[Any, Any, None]]]:
    """Creates an ephemeral dict and starts heartbeating it; returns it and its closer."""
    from apothic.dict import Dict

    c = get_client(client)
    name = f"ephemeral-{uuid.uuid4().hex}"
    lease_s = await c.create_ephemeral_dict(name)

    async def beat() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await c.heartbeat_dict(name)
            except NotFoundError:
                return  # already deleted: nothing left to keep alive
            except Exception:
                continue  # a transient failure: the next heartbeat still lands within the lease

    task = asyncio.create_task(beat(), name=f"apothic-dict-heartbeat-{name}")

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(NotFoundError):
            await c.delete_dict(name)

    return Dict(name, client=client), close


class Ephemeral:
    """``Dict.ephemeral()``: a dict that lives for a ``with`` block; ``Dict.ephemeral.aio()``
    is the ``async with`` form."""

    @contextlib.contextmanager
    def __call__(self, *, client: ClientConfig | None = None) -> Iterator[Dict]:
        """Creates a dict with a unique name for the ``with`` block and deletes it after.

        While the block runs, a background heartbeat keeps it alive; if this process dies,
        the control plane deletes it once the heartbeats stop (30 s).

        Args:
            client: the control plane to use (the default configuration when None).

        Raises:
            BlockingInAsyncContextError: used inside a running event loop (use
                ``async with Dict.ephemeral.aio() as d``).
        """
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            raise BlockingInAsyncContextError(
                "Dict.ephemeral() blocks, and was used inside a running event loop; use "
                "`async with Dict.ephemeral.aio() as d` instead"
            )
        d, close = run_sync(_open_ephemeral(client), "Dict.ephemeral()")
        try:
            yield d
        finally:
            run_sync(close(), "Dict.ephemeral()")

    @contextlib.asynccontextmanager
    async def aio(self, *, client: ClientConfig | None = None) -> AsyncIterator[Dict]:
        """The async form of ``Dict.ephemeral()``: ``async with Dict.ephemeral.aio() as d``."""
        d, close = await _open_ephemeral(client)
        try:
            yield d
        finally:
            await close()
