"""The worker's end of a tunnel: a ``WorkerService.Tunnel`` stream it opens, piped to a
service container's port on this machine.

The worker never accepts connections: the control plane asks over the session
(``OpenTunnel``), and the worker dials both the control plane (the stream) and the
container (loopback TCP; a docker container runs with host networking, so its port is
on the host's loopback too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from apothic._proto.v1 import worker_service_pb2 as w_pb

log = logging.getLogger("apothic.worker.tunnel")

#: Bytes read from the service per chunk.
CHUNK_BYTES = 256 * 1024
#: Messages buffered towards the control plane before reading the service waits.
QUEUE_MESSAGES = 64


def _close(error: str = "") -> w_pb.TunnelRequest:
    return w_pb.TunnelRequest(close=w_pb.TunnelClose(error=error))


async def _pump(reader: asyncio.StreamReader, outgoing: asyncio.Queue[w_pb.TunnelRequest | None]) -> None:
    """The service's bytes onto the tunnel, then a close."""
    end = _close()
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            await outgoing.put(w_pb.TunnelRequest(data=w_pb.TunnelData(data=chunk)))
    except (ConnectionError, OSError) as exc:
        end = _close(f"the connection to the service broke: {exc}")
    await outgoing.put(end)
    await outgoing.put(None)


async def serve_tunnel(transport: Any, tunnel_id: str, port: int | None, container_id: str) -> None:
    """Opens tunnel ``tunnel_id`` and pipes it to ``127.0.0.1:port`` until either side ends.

    Args:
        transport: the session transport (its ``tunnel(requests)`` opens the stream).
        tunnel_id: the id the control plane's OpenTunnel named.
        port: the container's service port; None when the container is not serving here.
        container_id: for messages.
    """
    outgoing: asyncio.Queue[w_pb.TunnelRequest | None] = asyncio.Queue(QUEUE_MESSAGES)

    async def requests() -> AsyncIterator[w_pb.TunnelRequest]:
        yield w_pb.TunnelRequest(open=w_pb.TunnelOpen(tunnel_id=tunnel_id))
        while (msg := await outgoing.get()) is not None:
            yield msg

    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    if port is None:
        error = f"container {container_id} is not serving on this worker"
    else:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            error = ""
        except OSError as exc:
            error = f"container {container_id} refused the connection on port {port}: {exc}"
    attach = getattr(transport, "attach_stream", None)
    if attach is not None and writer is not None and reader is not None:
        # A control plane in this process takes the connection itself.
        if not attach(tunnel_id, reader, writer):
            writer.close()
        return
    if error:
        outgoing.put_nowait(_close(error))
        outgoing.put_nowait(None)
    pump: asyncio.Task[None] | None = None
    try:
        async with transport.tunnel(requests()) as responses:
            if reader is not None:
                pump = asyncio.create_task(_pump(reader, outgoing), name=f"tunnel-{tunnel_id}")
            async for msg in responses:
                which = msg.WhichOneof("message")
                if which == "data" and writer is not None:
                    writer.write(msg.data.data)
                    await writer.drain()
                elif which == "close":
                    if msg.close.error or writer is None:
                        break
                    if writer.can_write_eof():
                        writer.write_eof()  # the client is done sending; the service may answer
    except Exception as exc:  # the stream broke or was refused: the ingress sees it end
        log.info("tunnel %s ended: %s", tunnel_id, exc)
    finally:
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if writer is not None:
            writer.close()
