"""Web services end to end: each decorator through the HTTP ingress and a worker's tunnel,
websockets, streaming responses and concurrent requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest
import websockets

from apothic.exceptions import UsageError
from apothic.runtime import LocalRuntime
from apothic.testing import deployed
from tests.e2e.apps import web


@pytest.fixture(scope="module")
def web_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    with deployed(web.app, apothic_runtime):
        yield web


def test_asgi_route_prefix_is_stripped(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    url = web_app.api.get_web_url()
    assert url == f"{apothic_runtime.http_url}/e2e-web/api"
    assert web_app.api.service_url == url
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "path": "/health", "prefix": "/e2e-web/api"}


def test_web_url_async_and_on_deployment(web_app: ModuleType) -> None:
    url = asyncio.run(web_app.api.aio.get_web_url())
    assert url.endswith("/e2e-web/api")
    assert web_app.app.deployment.web_urls["add"].endswith("/e2e-web/add")
    assert "not_web" not in web_app.app.deployment.web_urls


def test_host_header_routing(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(f"{apothic_runtime.http_url}/health", headers={"Host": "api--e2e-web.apps.example"}, timeout=30)
    assert r.status_code == 200
    assert r.json()["path"] == "/health"


def test_request_body_round_trips(web_app: ModuleType) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    r = httpx.post(f"{web_app.api.get_web_url()}/echo", content=body, timeout=30)
    assert r.status_code == 200
    assert r.content == body


def test_keep_alive_connection_serves_many_requests_and_services(web_app: ModuleType) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            assert client.get(f"{web_app.api.get_web_url()}/health").status_code == 200
        # The same connection moves on to another service.
        assert client.get(f"{web_app.add.get_web_url()}?a=1&b=2").json() == {"sum": 3}
        assert client.get(f"{web_app.api.get_web_url()}/health").json()["ok"] is True


def test_wsgi_app(web_app: ModuleType) -> None:
    r = httpx.get(f"{web_app.legacy.get_web_url()}/some/path", timeout=30)
    assert r.status_code == 200
    assert r.text == "wsgi GET /some/path"


def test_web_server(web_app: ModuleType) -> None:
    r = httpx.get(f"{web_app.plain_server.get_web_url()}/hello?x=1", timeout=30)
    assert r.status_code == 200
    assert r.text == "plain /hello?x=1"


def test_endpoint_maps_query_to_parameters(web_app: ModuleType) -> None:
    r = httpx.get(web_app.add.get_web_url(), params={"a": 40, "b": 2}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"sum": 42}


def test_endpoint_bad_parameter_is_422(web_app: ModuleType) -> None:
    r = httpx.get(web_app.add.get_web_url(), params={"a": "not a number"}, timeout=30)
    assert r.status_code == 422
    assert "detail" in r.json()


def test_endpoint_error_is_500_with_json(web_app: ModuleType) -> None:
    r = httpx.get(web_app.fails.get_web_url(), params={"x": 7}, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"] == "ValueError"
    assert r.json()["message"] == "bad x: 7"


def test_fastapi_endpoint_with_pydantic_models(web_app: ModuleType) -> None:
    items = [{"name": "a", "qty": 2}, {"name": "b", "qty": 3}]
    r = httpx.post(web_app.order.get_web_url(), json=items, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"total": 5, "items": items}


def test_websocket_echo(web_app: ModuleType) -> None:
    url = web_app.api.get_web_url().replace("http://", "ws://") + "/ws"

    async def talk() -> list[str]:
        async with websockets.connect(url, open_timeout=30) as ws:
            answers = []
            for word in ("one", "two", "three"):
                await ws.send(word)
                answers.append(await ws.recv())
            return answers

    assert asyncio.run(talk()) == ["echo: one", "echo: two", "echo: three"]


def test_streaming_response_arrives_as_it_is_produced(web_app: ModuleType) -> None:
    url = f"{web_app.api.get_web_url()}/stream"
    httpx.get(f"{web_app.api.get_web_url()}/health", timeout=30)  # warm
    with httpx.stream("GET", url, timeout=30) as r:
        start = time.monotonic()
        chunks = []
        for chunk in r.iter_text():
            chunks.append((time.monotonic() - start, chunk))
    assert "".join(c for _, c in chunks) == "".join(f"chunk {i}\n" for i in range(5))
    assert chunks[0][0] < 0.25  # the first chunk came long before the last (1.2 s later)
    assert chunks[-1][0] > 1.0


def test_fifty_concurrent_requests(web_app: ModuleType) -> None:
    url = f"{web_app.api.get_web_url()}/slow"
    httpx.get(f"{web_app.api.get_web_url()}/health", timeout=30)  # warm

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            answers = await asyncio.gather(*(client.get(url, params={"s": "0.5"}) for _ in range(50)))
        return [r.status_code for r in answers]

    start = time.monotonic()
    codes = asyncio.run(burst())
    assert codes == [200] * 50
    assert time.monotonic() - start < 5  # concurrently, not 50 x 0.5 s


def test_remote_on_a_web_function_names_http(web_app: ModuleType) -> None:
    with pytest.raises(UsageError, match="get_web_url"):
        web_app.add.remote(1)
