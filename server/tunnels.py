"""Tunnels: byte pipes between the HTTP ingress and a service container on a worker.

The ingress asks for a tunnel (:meth:`TunnelBroker.create`), which puts an ``OpenTunnel``
command on the worker's session; the worker dials back with a ``WorkerService.Tunnel``
stream naming the tunnel, and the servicer attaches that stream here
(:meth:`TunnelBroker.attach`). From then on the ingress writes the client's bytes with
:meth:`Tunnel.send` and reads the service's with :meth:`Tunnel.recv`. Queues are bounded,
so a slow reader on either side slows its own writer only.

A worker in the control plane's own process (``apothic up``'s local worker) skips the
stream: it connects to the container and hands that connection over
(:meth:`TunnelBroker.attach_stream`), and the ingress reads and writes it directly, which
saves two task switches each way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from apothic.server import ids

#: Chunks buffered per direction before the writer waits.
QUEUE_CHUNKS = 64
#: Bytes read from a handed-over container connection at once.
STREAM_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class TunnelClosed:
    """The end of one direction: clean when ``error`` is empty."""

    error: str = ""


Chunk = bytes | TunnelClosed


class Tunnel:
    """One client connection's pipe to one service container."""

    def __init__(self, tunnel_id: str, container_id: str) -> None:
        self.tunnel_id = tunnel_id
        self.container_id = container_id
        #: Client bytes for the worker; a TunnelClosed ends them.
        self.to_worker: asyncio.Queue[Chunk] = asyncio.Queue(QUEUE_CHUNKS)
        #: Service bytes from the worker; a TunnelClosed ends them.
        self.from_worker: asyncio.Queue[Chunk] = asyncio.Queue(QUEUE_CHUNKS)
        self.attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: The ingress is done with the tunnel.
        self.closed = False
        #: The worker's stream ended: nothing reads ``to_worker`` any more.
        self.worker_gone = False
        #: The container connection itself, when an in-process worker handed it over.
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    @property
    def stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The container connection an in-process worker handed over, if any."""
        return self._stream

    async def send(self, data: bytes) -> None:
        """Sends client bytes to the service (waits while the worker is behind)."""
        if self._stream is not None:
            writer = self._stream[1]
            if not writer.is_closing():
                writer.write(data)
                await writer.drain()
            return
        if not (self.closed or self.worker_gone) and data:
            await self.to_worker.put(data)

    async def send_eof(self, error: str = "") -> None:
        """No more client bytes (a half-close); an error ends the tunnel."""
        if self._stream is not None:
            writer = self._stream[1]
            if error or not writer.can_write_eof():
                writer.close()
            elif not writer.is_closing():
                writer.write_eof()
            return
        if not (self.closed or self.worker_gone):
            await self.to_worker.put(TunnelClosed(error))

    async def recv(self) -> Chunk:
        """The service's next bytes, or TunnelClosed at its end."""
        if self._stream is not None and not self.closed:
            try:
                data = await self._stream[0].read(STREAM_CHUNK_BYTES)
            except (ConnectionError, OSError) as exc:
                return TunnelClosed(f"the connection to the service broke: {exc}")
            return data or TunnelClosed()
        return await self.from_worker.get()

    def detach(self) -> None:
        """The worker's stream ended: unblocks and ignores later sends."""
        self.worker_gone = True
        while not self.to_worker.empty():
            self.to_worker.get_nowait()

    def abort(self, error: str) -> None:
        """Ends the tunnel from the ingress side without waiting for room in the queues."""
        if self.closed:
            return
        self.closed = True
        if self._stream is not None:
            self._stream[1].close()
        if not self.attached.done():
            self.attached.set_exception(ConnectionError(error))
        for queue in (self.to_worker, self.from_worker):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(TunnelClosed(error or "closed"))


class TunnelBroker:
    """Tunnels the ingress asked for, until their worker attaches them."""

    def __init__(self) -> None:
        self._pending: dict[str, Tunnel] = {}

    def create(self, container_id: str) -> Tunnel:
        """A new tunnel waiting for the worker of ``container_id`` to attach it."""
        tunnel = Tunnel(ids.new_id("tunnels"), container_id)
        self._pending[tunnel.tunnel_id] = tunnel
        return tunnel

    def attach(self, tunnel_id: str) -> Tunnel | None:
        """The waiting tunnel ``tunnel_id``, now attached; None when nobody waits for it."""
        tunnel = self._pending.pop(tunnel_id, None)
        if tunnel is None or tunnel.attached.done():
            return None
        tunnel.attached.set_result(None)
        return tunnel

    def attach_stream(self, tunnel_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Attaches waiting tunnel ``tunnel_id`` to a connection to its container (from a
        worker in this process); False when nobody waits for it (the caller closes it)."""
        tunnel = self._pending.pop(tunnel_id, None)
        if tunnel is None or tunnel.attached.done():
            return False
        tunnel._stream = (reader, writer)
        tunnel.attached.set_result(None)
        return True

    def forget(self, tunnel: Tunnel) -> None:
        """Stops waiting for a tunnel (the ingress gave up on it)."""
        self._pending.pop(tunnel.tunnel_id, None)
