"""The HTTP ingress: routes client connections to web service containers on workers.

A raw asyncio TCP server. For each request it reads only the head (parsed with ``h11``),
picks the service from the path (``/<app>/<function>/...``, the prefix stripped before
the request reaches the service) or the ``Host`` header (``<function>--<app>.<anything>``),
and pipes the connection's bytes through a tunnel to a live container of that service
(see :mod:`apothic.server.tunnels`), starting one when none runs. Bodies, streaming
responses and websockets pass through unchanged. Each client connection gets its own
tunnel, so a slow client holds up nobody else.

Keep-alive works: later requests on a connection are routed too; one that names another
service closes the first tunnel and opens another (clients do not pipeline, so the first
service's response is complete by then). A chunked request body or an upgrade
(websockets) switches the connection to a plain pipe until it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import h11

from apothic.server.deployments import DeploymentManager
from apothic.server.models import DeploymentRecord, FunctionSpecRecord
from apothic.server.scheduler import ContainerHandle, FunctionPool, Scheduler
from apothic.server.tunnels import Tunnel, TunnelBroker, TunnelClosed
from apothic.server.web import web_options

log = logging.getLogger("apothic.server.ingress")

#: Largest request head accepted (request line plus headers).
MAX_HEAD_BYTES = 64 * 1024
#: Seconds a worker has to open a tunnel it was asked for.
TUNNEL_OPEN_TIMEOUT_S = 10.0
#: Extra seconds the ingress waits beyond a service's startup timeout, so the worker's own
#: report (with the container's output) arrives first.
STARTUP_SLACK_S = 5.0
#: Bytes read from a client per chunk.
CHUNK_BYTES = 256 * 1024
#: Seconds a client without a tunnel yet has to send a whole request head (a client that
#: has one is timed by its service, which closes idle keep-alive connections).
HEAD_TIMEOUT_S = 60.0

_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
_REASONS.update({502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"})


class HttpError(Exception):
    """An answer the ingress gives itself: a status and a message for the JSON body."""

    def __init__(self, status: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: More fields of the JSON body (``startup_log_tail``).
        self.extra = extra


def error_response(status: int, message: str, **extra: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON body; the connection closes after it."""
    body = json.dumps({"error": message, "status": status, **extra}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Route:
    """Where a request goes."""

    app: str
    function: str
    #: The request target the service sees (the path prefix stripped).
    target: bytes
    #: The prefix that was stripped ("" for the Host form).
    prefix: str


def route(target: bytes, host: str) -> Route:
    """Routes a request by its ``Host`` (``fn--app.anything``) or its path (``/app/fn/...``).

    Raises:
        HttpError: 404 when the request names no app and function.
    """
    label = host.split(":", 1)[0].split(".", 1)[0]
    if "--" in label:
        function, _, app = label.partition("--")
        if function and app:
            return Route(app=app, function=function, target=target or b"/", prefix="")
    path, sep, query = target.partition(b"?")
    parts = path.decode("latin-1").split("/", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise HttpError(
            404,
            f"no web service at {path.decode('latin-1')!r}: requests go to /<app>/<function>/... "
            "or to a host named <function>--<app>.<domain>",
        )
    rest = "/" + (parts[3] if len(parts) > 3 else "")
    return Route(
        app=parts[1],
        function=parts[2],
        target=rest.encode("latin-1") + sep + query,
        prefix=f"/{parts[1]}/{parts[2]}",
    )


@dataclass(eq=False)
class _Upstream:
    """The tunnel a client connection is piped through now."""

    key: tuple[str, str]
    tunnel: Tunnel
    container: ContainerHandle
    #: A request was sent and no byte of its answer came back yet.
    awaiting: bool = False
    #: Done when the service's side ended (a task, or a _ResponsePipe's future).
    pump: asyncio.Future[None] | None = None
    released: bool = field(default=False)


class Ingress:
    """The control plane's HTTP server for web services.

    Args:
        deployments: where live deployments are looked up by app name.
        scheduler: starts service containers and asks workers for tunnels.
        tunnels: tunnels waiting for their worker.
        host: address to listen on.
        port: port to listen on; 0 picks a free one.
        max_body_bytes: largest request body (by Content-Length) accepted; larger ones get 413.
    """

    def __init__(
        self,
        *,
        deployments: DeploymentManager,
        scheduler: Scheduler,
        tunnels: TunnelBroker,
        host: str,
        port: int,
        max_body_bytes: int,
    ) -> None:
        self.deployments = deployments
        self.scheduler = scheduler
        self.tunnels = tunnels
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://host:port`` of the ingress."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listens; a configured port that is taken falls back to a free one (logged)."""
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=CHUNK_BYTES)
        except OSError as exc:
            if not self.port:
                raise
            log.warning("HTTP ingress: port %s is not available (%s); using a free port", self.port, exc)
            self._server = await asyncio.start_server(self._accept, self.host, 0, limit=CHUNK_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP ingress listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- one client connection ---------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: _Upstream | None = None
        try:
            upstream = await self._serve(reader, writer)
        except HttpError as err:
            with contextlib.suppress(Exception):
                writer.write(error_response(err.status, err.message, **err.extra))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the ingress is stopping
        except Exception:
            log.exception("ingress connection failed")
            with contextlib.suppress(Exception):
                writer.write(error_response(502, "the ingress failed to forward the request"))
        finally:
            self._connections.discard(task)
            if upstream is not None:
                await self._release(upstream)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Upstream | None:
        """Forwards requests until the client or the service closes; returns the last upstream."""
        buf = bytearray()
        upstream: _Upstream | None = None
        try:
            while True:
                if upstream is None:
                    try:
                        head = await asyncio.wait_for(_read_head(reader, buf), HEAD_TIMEOUT_S)
                    except TimeoutError:
                        break
                else:
                    head = await _read_head(reader, buf)
                if head is None:
                    break
                target, headers = parse_head(head)
                host = headers.get(b"host", b"").decode("latin-1")
                where = route(target, host)
                length = _content_length(headers)
                if length > self.max_body_bytes:
                    raise HttpError(
                        413,
                        f"the request body is {length:,} bytes, over the ingress limit of "
                        f"{self.max_body_bytes:,} bytes",
                    )
                key = (where.app, where.function)
                if upstream is None or upstream.key != key or upstream.pump is None or upstream.pump.done():
                    if upstream is not None:
                        await self._release(upstream)
                    upstream = await self._connect(where, writer)
                upstream.awaiting = True
                await upstream.tunnel.send(_rewrite(head, where))
                chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
                if chunked or b"upgrade" in headers.get(b"connection", b"").lower():
                    # A chunked body is counted against the limit as it streams (framing
                    # included); an upgraded connection is not an HTTP body any more.
                    await _pipe_rest(reader, buf, upstream.tunnel, self.max_body_bytes if chunked else None)
                    break
                await _forward_body(reader, buf, length, upstream.tunnel)
        except BaseException:
            if upstream is not None:
                await self._release(upstream)
            raise
        if upstream is not None:
            await upstream.tunnel.send_eof()
            if upstream.pump is not None:
                with contextlib.suppress(Exception):
                    await upstream.pump
        return upstream

    async def _release(self, upstream: _Upstream) -> None:
        if upstream.released:
            return
        upstream.released = True
        upstream.tunnel.abort("the client connection ended")
        if upstream.pump is not None and not upstream.pump.done():
            upstream.pump.cancel()
            with contextlib.suppress(BaseException):
                await upstream.pump
        self.scheduler.tunnel_closed(upstream.container)

    async def _connect(self, where: Route, writer: asyncio.StreamWriter) -> _Upstream:
        deployment, spec = self._resolve(where)
        pool = self.scheduler.pool(deployment, spec)
        container = await self._container(pool, where)
        tunnel = self.tunnels.create(container.container_id)
        self.scheduler.open_tunnel(container, tunnel.tunnel_id)
        upstream = _Upstream(key=(where.app, where.function), tunnel=tunnel, container=container)
        try:
            await asyncio.wait_for(asyncio.shield(tunnel.attached), TUNNEL_OPEN_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            self.tunnels.forget(tunnel)
            await self._release(upstream)
            raise HttpError(
                502, f"the worker running {where.function!r} of app {where.app!r} did not open a tunnel"
            ) from None
        stream = tunnel.stream
        if stream is not None:
            upstream.pump = _ResponsePipe.install(upstream, stream[1], writer, where)
        else:
            upstream.pump = asyncio.create_task(self._respond(upstream, writer, where))
        return upstream

    def _resolve(self, where: Route) -> tuple[DeploymentRecord, FunctionSpecRecord]:
        """The live deployment of the app and the service's spec.

        Raises:
            HttpError: 404 naming the unknown app or function, or a function that is not a
                web service.
        """
        live = [d for d in self.deployments.live() if d.app_name == where.app]
        if not live:
            raise HttpError(404, f"app {where.app!r} is not deployed")
        deployment = max(live, key=lambda d: d.created_at)
        spec = deployment.function(where.function)
        if spec is None:
            raise HttpError(404, f"app {where.app!r} has no function {where.function!r}")
        if web_options(spec) is None:
            raise HttpError(
                404,
                f"function {where.function!r} of app {where.app!r} is not a web service; "
                "decorate it with @app.asgi, @app.wsgi_app, @app.web_server, @app.endpoint or @app.fastapi_endpoint",
            )
        return deployment, spec

    async def _container(self, pool: FunctionPool, where: Route) -> ContainerHandle:
        """A ready container of the service, started on demand within its startup timeout.

        Raises:
            HttpError: 503 when it cannot start (no worker can run it, or its container
                failed to start), 504 when none was ready in time.
        """
        assert pool.web is not None
        timeout = pool.web.startup_timeout_s
        deadline = time.monotonic() + timeout + STARTUP_SLACK_S
        name = f"{where.function!r} of app {where.app!r}"
        while True:
            container = self.scheduler.service_container(pool)
            if container is not None:
                return container
            reason = self.scheduler.service_unplaceable(pool)
            if reason:
                raise HttpError(503, reason)
            changed = pool.changed
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HttpError(
                    504,
                    f"web service {name} did not start within its startup timeout of {timeout:g}s",
                    startup_log_tail=pool.log_text(),
                ) from None
            failure = pool.startup_failure
            if failure and not any(c.state == "ready" for c in pool.containers):
                status = 504 if "did not become ready" in failure else 503
                raise HttpError(
                    status, f"web service {name} failed to start: {failure}", startup_log_tail=pool.log_text()
                )

    async def _respond(self, upstream: _Upstream, writer: asyncio.StreamWriter, where: Route) -> None:
        """The service's bytes to the client; a 502 when it ends without answering."""
        tunnel = upstream.tunnel
        service_closed = False
        try:
            while True:
                chunk = await tunnel.recv()
                if upstream.released:
                    return  # the connection moved on to another service, or ended
                if isinstance(chunk, TunnelClosed):
                    service_closed = True
                    if upstream.awaiting:
                        why = chunk.error or "it closed the connection without answering"
                        message = f"web service {where.function!r} of app {where.app!r} failed the request: {why}"
                        writer.write(error_response(502, message))
                        await writer.drain()
                    break
                upstream.awaiting = False
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            service_closed = True
        finally:
            if service_closed:
                # The service closed: so does the client connection (the request loop sees EOF).
                writer.close()


class _ResponsePipe(asyncio.Protocol):
    """The service's bytes straight to the client, in the container connection's own
    callbacks (no task wakes up per chunk); used when an in-process worker handed that
    connection over. Reading pauses while the client is behind."""

    #: Bytes waiting to go to the client before reading from the service pauses.
    HIGH_WATER = 1 << 20

    def __init__(
        self, upstream: _Upstream, service: asyncio.StreamWriter, client: asyncio.StreamWriter, where: Route
    ) -> None:
        self.upstream = upstream
        self.service: asyncio.Transport = service.transport  # type: ignore[assignment]
        self.client = client
        self.where = where
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resuming: asyncio.Task[None] | None = None

    @classmethod
    def install(
        cls, upstream: _Upstream, service: asyncio.StreamWriter, client: asyncio.StreamWriter, where: Route
    ) -> asyncio.Future[None]:
        pipe = cls(upstream, service, client, where)
        service.transport.set_protocol(pipe)
        return pipe.done

    def data_received(self, data: bytes) -> None:
        if self.upstream.released or self.client.is_closing():
            return
        self.upstream.awaiting = False
        self.client.write(data)
        if self.client.transport.get_write_buffer_size() > self.HIGH_WATER:
            self.service.pause_reading()
            self._resuming = asyncio.ensure_future(self._resume())

    async def _resume(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.client.drain()
        if not self.service.is_closing():
            self.service.resume_reading()

    def eof_received(self) -> bool:
        return False  # the service is done sending: close, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upstream.released and not self.client.is_closing():
            if self.upstream.awaiting:
                why = f"the connection broke: {exc}" if exc else "it closed the connection without answering"
                name = f"{self.where.function!r} of app {self.where.app!r}"
                self.client.write(error_response(502, f"web service {name} failed the request: {why}"))
            self.client.close()  # the service closed: so does the client connection
        if not self.done.done():
            self.done.set_result(None)


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The target and the headers (lower-cased names) of a request head.

    A well-formed HTTP/1.1 head takes a fast path (h11 costs ~30 us a head, about a tenth
    of the whole round trip through the ingress); anything else is handed to h11, whose
    verdict decides.

    Raises:
        HttpError: 400 for a malformed head.
    """
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    headers: dict[bytes, bytes] = {}
    if len(parts) == 3 and parts[2] in (b"HTTP/1.1", b"HTTP/1.0") and parts[1][:1] == b"/" and parts[0].isalpha():
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name:
                break
            key = name.lower()
            value = value.strip()
            headers[key] = headers[key] + b", " + value if key in headers else value
        else:
            if parts[2] == b"HTTP/1.0" or b"host" in headers:
                return parts[1], headers
    request = _parse_h11(head)
    return request.target, {k: v for k, v in request.headers}


def _parse_h11(head: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HttpError(400, f"malformed HTTP request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HttpError(400, "malformed HTTP request")
    return event


def _rewrite(head: bytes, where: Route) -> bytes:
    """The head with the service's own target, and the stripped prefix in a header."""
    line_end = head.index(b"\r\n")
    method, _, rest = head[:line_end].partition(b" ")
    _, _, version = rest.rpartition(b" ")
    line = b"%s %s %s\r\n" % (method, where.target, version)
    extra = b"x-forwarded-prefix: %s\r\n" % where.prefix.encode("latin-1") if where.prefix else b""
    return line + extra + head[line_end + 2 :]


async def _read_head(reader: asyncio.StreamReader, buf: bytearray) -> bytes | None:
    """The next request head (through its blank line), or None at a clean end of stream."""
    start = 0
    while (end := buf.find(b"\r\n\r\n", start)) < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpError(431, f"the request head is over {MAX_HEAD_BYTES:,} bytes")
        start = max(0, len(buf) - 3)
        chunk = await reader.read(CHUNK_BYTES)
        if not chunk:
            if buf.strip():
                raise HttpError(400, "the connection closed in the middle of a request head")
            return None
        buf += chunk
    head = bytes(buf[: end + 4])
    del buf[: end + 4]
    return head


async def _forward_body(reader: asyncio.StreamReader, buf: bytearray, length: int, tunnel: Tunnel) -> None:
    """Sends exactly ``length`` body bytes; bytes past them stay in ``buf`` (the next request)."""
    if buf and length:
        take = min(length, len(buf))
        await tunnel.send(bytes(buf[:take]))
        del buf[:take]
        length -= take
    while length > 0:
        chunk = await reader.read(min(length, CHUNK_BYTES))
        if not chunk:
            raise ConnectionError("the client closed the connection in the middle of a request body")
        await tunnel.send(chunk)
        length -= len(chunk)


async def _pipe_rest(reader: asyncio.StreamReader, buf: bytearray, tunnel: Tunnel, limit: int | None) -> None:
    """Sends everything the client sends from now on, until it closes (then a half-close).

    Raises:
        HttpError: 413 once more than ``limit`` bytes came (None: no limit).
    """
    sent = 0
    chunk = bytes(buf)
    buf.clear()
    while True:
        if chunk:
            sent += len(chunk)
            if limit is not None and sent > limit:
                raise HttpError(413, f"the chunked request body is over the ingress limit of {limit:,} bytes")
            await tunnel.send(chunk)
        chunk = await reader.read(CHUNK_BYTES)
        if not chunk:
            return


def _content_length(headers: dict[bytes, bytes]) -> int:
    """The request's Content-Length (0 without one).

    Raises:
        HttpError: 400 for a value that is not a non-negative integer.
    """
    value = headers.get(b"content-length", b"0").strip() or b"0"
    if not value.isdigit():
        raise HttpError(400, f"malformed Content-Length: {value[:40].decode('latin-1')!r}")
    return int(value)
