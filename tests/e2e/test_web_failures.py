"""Web services under bad input: unknown names, oversized bodies, crashes, services that
never bind, slow clients; and how service containers scale."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from types import ModuleType
from urllib.parse import urlsplit

import httpx
import pytest

import apothic
from apothic.runtime import LocalRuntime
from apothic.testing import deployed, unique_name, wait_for
from tests.e2e.apps import web


@pytest.fixture(scope="module")
def web_app(apothic_runtime: LocalRuntime) -> Iterator[ModuleType]:
    with deployed(web.app, apothic_runtime):
        yield web


def _containers(runtime: LocalRuntime, function: str) -> list[str]:
    """Ids of the live containers of one of the web app's functions."""
    assert runtime.plane is not None
    scheduler = runtime.plane.scheduler

    async def read() -> list[str]:
        return [
            c.container_id
            for (_, name), pool in scheduler.pools.items()
            if name == function and pool.deployment.app_name == web.app.name
            for c in pool.containers
            if c.state in ("starting", "ready")
        ]

    return runtime.run_coroutine(read())  # type: ignore[no-any-return]


def _raw(url: str, request: bytes, *, timeout: float = 30) -> bytes:
    """Sends raw bytes to the ingress and reads until it closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_unknown_app_is_404_naming_it(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(f"{apothic_runtime.http_url}/no-such-app/fn/x", timeout=30)
    assert r.status_code == 404
    assert r.json() == {"error": "app 'no-such-app' is not deployed", "status": 404}


def test_unknown_function_is_404_naming_it(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(f"{apothic_runtime.http_url}/e2e-web/nope/", timeout=30)
    assert r.status_code == 404
    assert "no function 'nope'" in r.json()["error"]


def test_function_that_is_not_a_web_service_is_404(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(f"{apothic_runtime.http_url}/e2e-web/not_web/", timeout=30)
    assert r.status_code == 404
    assert "not a web service" in r.json()["error"]


def test_path_without_app_and_function_is_404(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    r = httpx.get(f"{apothic_runtime.http_url}/", timeout=30)
    assert r.status_code == 404
    assert "/<app>/<function>/" in r.json()["error"]


def test_body_over_the_limit_is_413(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    assert apothic_runtime.plane is not None
    limit = apothic_runtime.plane.ingress.max_body_bytes
    head = f"POST /e2e-web/api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
    answer = _raw(apothic_runtime.http_url, head + b"x" * 1024)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"over the ingress limit" in answer


def test_malformed_request_is_400(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    answer = _raw(apothic_runtime.http_url, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_crash_during_a_request_is_502_and_the_container_is_replaced(
    web_app: ModuleType, apothic_runtime: LocalRuntime
) -> None:
    url = web_app.crashy.get_web_url()
    first = httpx.get(f"{url}/pid", timeout=30).json()["pid"]
    r = httpx.get(f"{url}/crash", timeout=30)
    assert r.status_code == 502
    assert "failed the request" in r.json()["error"]
    second = httpx.get(f"{url}/pid", timeout=30).json()["pid"]
    assert second != first


def test_service_that_never_binds_times_out_with_its_output(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    start = time.monotonic()
    r = httpx.get(web_app.never_binds.get_web_url(), timeout=60)
    assert r.status_code == 504
    body = r.json()
    assert "never_binds" in body["error"]
    assert "did not become ready within 2s" in body["error"]
    assert "binding soon" in body["error"]  # the container's output tail
    assert time.monotonic() - start < 15


def test_slow_clients_do_not_block_others(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    url = web_app.api.get_web_url()
    parts = urlsplit(url)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    slow_head = socket.create_connection((parts.hostname, parts.port))
    slow_reader = socket.create_connection((parts.hostname, parts.port))
    slow_reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # One client sends half a request head and stalls; another asks for 8 MiB and never reads.
        slow_head.sendall(b"GET /e2e-web/api/health HTTP/1.1\r\nHost: x\r\n")
        slow_reader.sendall(b"GET /e2e-web/api/big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        start = time.monotonic()
        for _ in range(5):
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert time.monotonic() - start < 3
    finally:
        slow_head.close()
        slow_reader.close()


def test_idle_service_scales_to_zero(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    url = web_app.crashy.get_web_url()
    assert httpx.get(f"{url}/pid", timeout=30, headers={"Connection": "close"}).status_code == 200
    assert _containers(apothic_runtime, "crashy")
    # scaledown_window_s=1: gone a moment after the last connection closed.
    wait_for(lambda: not _containers(apothic_runtime, "crashy"), timeout=10, what="crashy scaled to zero")
    # The next request starts one again.
    assert httpx.get(f"{url}/pid", timeout=30).status_code == 200


def test_keep_warm_holds_a_container_after_the_last_request(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    url = web_app.warm.get_web_url()
    assert httpx.get(url + "/", timeout=30, headers={"Connection": "close"}).text == "warm"
    (container,) = _containers(apothic_runtime, "warm")
    time.sleep(2.0)  # past scaledown_window_s=1, inside keep_warm_s=4
    assert _containers(apothic_runtime, "warm") == [container]
    wait_for(lambda: not _containers(apothic_runtime, "warm"), timeout=10, what="warm scaled down after keep_warm_s")


def test_tunnel_over_grpc_from_a_dialing_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker that dials the control plane over gRPC (not in process) serves a service:
    the WorkerService.Tunnel RPC carries the connection."""
    from apothic.worker.agent import Worker
    from apothic.worker.settings import WorkerSettings

    runtime = LocalRuntime(workers=0).start()
    try:

        async def add_worker() -> Worker:
            worker = Worker(
                WorkerSettings(
                    base_url=runtime.address,
                    api_key=runtime.api_key,
                    worker_id="workers:dialer",
                    state_dir=tmp_path / "worker",
                )
            )
            runtime._worker_tasks.append(asyncio.create_task(worker.run()))
            runtime.workers.append(worker)
            await asyncio.wait_for(worker.connected.wait(), 30)
            return worker

        runtime.run_coroutine(add_worker())
        app = apothic.App(unique_name("web-grpc"))

        @app.asgi()
        def echo() -> object:
            async def asgi(scope, receive, send):  # type: ignore[no-untyped-def]
                body = b""
                while True:
                    message = await receive()
                    body += message.get("body", b"")
                    if not message.get("more_body"):
                        break
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})

            return asgi

        with deployed(app, runtime):
            r = httpx.post(echo.get_web_url(), content=b"through grpc" * 1000, timeout=30)
            assert r.status_code == 200
            assert r.content == b"through grpc" * 1000
    finally:
        runtime.stop()


def test_calling_a_web_function_as_a_job_names_http(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    from apothic.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="is a web service"):
        apothic.RemoteFunction.from_name(web.app.name, "add").remote(1)


def test_chunked_body_over_the_limit_is_413(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    assert apothic_runtime.plane is not None
    ingress = apothic_runtime.plane.ingress
    limit, ingress.max_body_bytes = ingress.max_body_bytes, 64 * 1024
    try:

        def body() -> Iterator[bytes]:
            for _ in range(64):
                yield b"x" * 4096

        r = httpx.post(f"{web_app.api.get_web_url()}/echo", content=body(), timeout=30)
        assert r.status_code == 413
        assert "chunked request body" in r.json()["error"]
        small = httpx.post(f"{web_app.api.get_web_url()}/echo", content=iter([b"a" * 100, b"b" * 100]), timeout=30)
        assert small.status_code == 200 and small.content == b"a" * 100 + b"b" * 100
    finally:
        ingress.max_body_bytes = limit


def test_bad_content_length_is_400(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    answer = _raw(apothic_runtime.http_url, b"POST /e2e-web/api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_service_output_is_kept_and_followed(web_app: ModuleType, apothic_runtime: LocalRuntime) -> None:
    """What a service prints outside any job streams to ``TailServiceLogs`` followers as it
    is printed, and its tail stays readable."""
    from apothic._client import get_client

    deployment_id = web.app.deployment_id or ""

    async def follow_while_requesting() -> list[str]:
        client = get_client(web.app._client)
        seen: list[str] = []

        async def follow() -> None:
            async for line in client.tail_service_logs(deployment_id, "add", follow=True):
                seen.append(line.data)
                if "adding 20 and 22" in line.data:
                    return

        task = asyncio.ensure_future(follow())
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(await web_app.add.aio.get_web_url(), params={"a": 20, "b": 22})
        assert r.json() == {"sum": 42}
        await asyncio.wait_for(task, 10)
        return seen

    seen = asyncio.run(follow_while_requesting())
    assert any("adding 20 and 22" in chunk for chunk in seen)

    async def tail() -> list[str]:
        client = get_client(web.app._client)
        return [line.data async for line in client.tail_service_logs(deployment_id, "add")]

    assert any("adding 20 and 22" in chunk for chunk in asyncio.run(tail()))
