"""Ephemeral dicts: ``with Dict.ephemeral() as d`` (``async with Dict.ephemeral.aio()``).

The dict gets a unique name and is created ephemeral: the control plane deletes it when no
heartbeat reached it for its lease (30 s). A background task heartbeats every third of the
lease while the block runs, and the dict is deleted when the block exits; a client that dies
leaks nothing for longer than the lease.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from apothic._ephemeral import blocking, kept_alive
from apothic._lazy import get_client
from apothic.config import ClientConfig
from apothic.exceptions import NotFoundError

if TYPE_CHECKING:
    from apothic.dict import Dict


class Ephemeral:
    """``Dict.ephemeral()``: a dict that lives for a ``with`` block; ``Dict.ephemeral.aio()``
    is the ``async with`` form."""

    def __call__(self, *, client: ClientConfig | None = None) -> contextlib.AbstractContextManager[Dict]:
        """Creates a dict with a unique name for the ``with`` block and deletes it after.

        While the block runs, a background heartbeat keeps it alive; if this process dies,
        the control plane deletes it once the heartbeats stop (30 s).

        Args:
            client: the control plane to use (the default configuration when None).

        Raises:
            BlockingInAsyncContextError: used inside a running event loop (use
                ``async with Dict.ephemeral.aio() as d``).
        """
        return blocking(self.aio(client=client), "Dict.ephemeral()", async_form="async with Dict.ephemeral.aio() as d")

    @contextlib.asynccontextmanager
    async def aio(self, *, client: ClientConfig | None = None) -> AsyncIterator[Dict]:
        """The async form of ``Dict.ephemeral()``: ``async with Dict.ephemeral.aio() as d``."""
        from apothic.dict import Dict

        c = get_client(client)
        name = f"ephemeral-{uuid.uuid4().hex}"
        lease_s = await c.create_ephemeral_dict(name)
        async with kept_alive(
            f"ephemeral dict {name!r}",
            every_s=lease_s / 3,
            beat=lambda: c.heartbeat_dict(name),
            delete=lambda: c.delete_dict(name),
            delete_errors=(NotFoundError,),
        ):
            yield Dict(name, client=client)
