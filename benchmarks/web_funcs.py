"""The web app :mod:`benchmarks.ingress` measures: one Starlette app, served both through
Apothic's ingress (``@app.asgi``) and by uvicorn directly (``benchmarks.web_funcs:asgi_app``)."""

from __future__ import annotations

from typing import Any

import apothic

app = apothic.App("bench-web")


def make_app() -> Any:
    """A Starlette app answering ``GET /hello`` with a small JSON body."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    return Starlette(routes=[Route("/hello", hello)])


@app.asgi(keep_warm_s=300)
def hello() -> Any:
    """The same app, as an Apothic web service."""
    return make_app()


def asgi_app_factory() -> Any:
    """For ``uvicorn --factory benchmarks.web_funcs:asgi_app_factory``."""
    return make_app()
