"""Web services for the e2e web tests (tests/e2e/test_web_*.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

import apothic

app = apothic.App("e2e-web")

#: Ports the web_server functions listen on inside their containers (loopback).
SERVER_PORT = 18761
SILENT_PORT = 18762


@app.asgi()
def api() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {"ok": True, "path": request.url.path, "prefix": request.headers.get("x-forwarded-prefix", "")}
        )

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def slow(request: Request) -> JSONResponse:
        import asyncio

        await asyncio.sleep(float(request.query_params.get("s", "0.2")))
        return JSONResponse({"pid": os.getpid()})

    async def stream(request: Request) -> StreamingResponse:
        import asyncio

        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(5):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.3)

        return StreamingResponse(chunks(), media_type="text/plain")

    async def big(request: Request) -> Response:
        return Response(b"x" * (8 * 1024 * 1024), media_type="application/octet-stream")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(f"echo: {text}")
        except Exception:
            pass

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
            Route("/stream", stream),
            Route("/big", big),
            WebSocketRoute("/ws", ws),
        ]
    )


@app.asgi(scaledown_window_s=1.0)
def crashy() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def pid(request: Any) -> JSONResponse:
        return JSONResponse({"pid": os.getpid()})

    async def crash(request: Any) -> JSONResponse:
        os._exit(3)

    async def crash_later(request: Any) -> JSONResponse:
        import asyncio

        print("about to crash", flush=True)
        await asyncio.sleep(0.3)  # the request's job is reported as running by now
        os._exit(3)

    return Starlette(routes=[Route("/pid", pid), Route("/crash", crash), Route("/crash-later", crash_later)])


@app.wsgi_app()
def legacy() -> Any:
    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"wsgi {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return wsgi


class _Handle:
    def __init__(self, server: Any) -> None:
        self.server = server

    def close(self) -> None:
        self.server.shutdown()


@app.web_server(SERVER_PORT, startup_timeout=20)
def plain_server() -> _Handle:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = f"plain {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", SERVER_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return _Handle(server)


@app.web_server(SILENT_PORT, startup_timeout=2)
def never_binds() -> None:
    print("starting up, binding soon", flush=True)
    time.sleep(60)


@app.endpoint()
def add(a: int, b: int = 0) -> dict[str, int]:
    print(f"adding {a} and {b}")
    return {"sum": a + b}


@app.endpoint()
def fails(x: int = 0) -> dict[str, int]:
    raise ValueError(f"bad x: {x}")


class Item(BaseModel):
    name: str
    qty: int


class Order(BaseModel):
    total: int
    items: list[Item]


@app.fastapi_endpoint(method="POST")
def order(items: list[Item]) -> Order:
    return Order(total=sum(i.qty for i in items), items=items)


@app.asgi(keep_warm_s=4.0, scaledown_window_s=1.0)
def warm() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("warm")

    return Starlette(routes=[Route("/", hello)])


@app.function()
def not_web(x: int) -> int:
    return x
