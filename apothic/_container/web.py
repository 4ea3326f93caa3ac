"""Web service containers: run the user's app on a loopback port and report it.

``APOTHIC_WEB`` (JSON, from the function's options) names the kind:

- ``asgi``: the function returns an ASGI app; uvicorn serves it;
- ``wsgi``: the function returns a WSGI app; uvicorn serves it through a WSGI adapter;
- ``endpoint`` / ``fastapi_endpoint``: the function itself answers ``/``: FastAPI maps query
  parameters and a JSON body to its parameters and its return value to JSON;
- ``web_server``: the function starts a server listening on ``port`` itself (and may
  return a handle with a ``close()``, called when the container stops).

:func:`start` returns once the port accepts connections; the worker tunnels client
connections to it (a docker container runs with host networking, so the port is on the
host's loopback as well).
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from apothic._container.request_trail import RequestTrail

#: How often a web_server's port is probed while it starts.
PROBE_INTERVAL_S = 0.05


class WebService:
    """A started service: its port, and how to stop it."""

    def __init__(self, port: int, close: Callable[[], None] | None = None) -> None:
        self.port = port
        self._close = close

    def close(self) -> None:
        if self._close is not None:
            with contextlib.suppress(Exception):
                self._close()


def _free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets that say TCP, and
    # accepted connections inherit this one's protocol (with 0, each answer waited ~40 ms
    # for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _is_asgi3(app: Any) -> bool:
    """Whether ``app`` speaks ASGI 3 (one ``async (scope, receive, send)`` call), as uvicorn
    decides it."""
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app):
        return inspect.iscoroutinefunction(app)
    return callable(app) and inspect.iscoroutinefunction(app.__call__)


def _serve_asgi(app: Any, trail: RequestTrail | None, *, lifespan: bool = True) -> WebService:
    """Serves an ASGI app with uvicorn on a thread; ``trail`` reports its requests."""
    import uvicorn

    if trail is not None:
        if not _is_asgi3(app):
            from uvicorn.middleware.asgi2 import ASGI2Middleware

            app = ASGI2Middleware(app)
        app = trail.wrap(app)
    sock = _free_socket()
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="auto" if lifespan else "off",
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported as the startup failure
            failed.append(exc)

    thread = threading.Thread(target=run, name="apothic-uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if failed or not thread.is_alive():
            raise RuntimeError(f"the web server stopped while starting: {failed[0] if failed else 'no error'}")
        time.sleep(0.01)

    def close() -> None:
        server.should_exit = True
        thread.join(5)

    return WebService(sock.getsockname()[1], close)


def endpoint_app(func: Callable[..., Any], method: str) -> Any:
    """An ASGI app that answers ``method /`` by calling ``func``: query parameters and a JSON
    body become its arguments, its return value (dicts, lists, pydantic models…) the JSON
    answer; an exception becomes a 500 with a JSON body naming it."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(Exception)
    async def _error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=500,
            content={
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
            },
        )

    app.add_api_route("/", func, methods=[method.upper()])
    return app


def start(func: Callable[..., Any], options: dict[str, Any], trail: RequestTrail | None = None) -> WebService:
    """Starts the service the function describes and returns once its port accepts
    connections. ``trail`` reports each HTTP request an ASGI or WSGI service answers.

    Raises:
        Exception: what the user's function raised, or the server's startup error.
    """
    kind = options.get("kind")
    if kind == "asgi":
        app = func()
        if inspect.isawaitable(app):
            raise TypeError("@app.asgi: the function must return an ASGI app, not a coroutine; make it a plain def")
        return _serve_asgi(app, trail)
    if kind == "wsgi":
        app = func()
        try:
            from a2wsgi import WSGIMiddleware  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from uvicorn.middleware.wsgi import WSGIMiddleware
        return _serve_asgi(WSGIMiddleware(app), trail, lifespan=False)
    if kind in ("endpoint", "fastapi_endpoint"):
        return _serve_asgi(endpoint_app(func, str(options.get("method") or "GET")), trail)
    if kind == "web_server":
        port = int(options["port"])
        # The function may return at once (a server on a thread or a subprocess) or serve
        # forever itself: it runs on a thread either way.
        outcome: list[Any] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                outcome.append(func())
            except BaseException as exc:  # noqa: BLE001 - re-raised as the startup failure
                errors.append(exc)

        threading.Thread(target=call, name="apothic-web-server", daemon=True).start()
        while True:  # the worker stops the container at its startup timeout
            if errors:
                raise errors[0]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(PROBE_INTERVAL_S)
        close = getattr(outcome[0], "close", None) if outcome else None
        return WebService(port, close if callable(close) else None)
    raise ValueError(f"unknown web service kind {kind!r}")
