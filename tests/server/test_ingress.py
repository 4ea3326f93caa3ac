"""The ingress's request routing and head parsing (no sockets)."""

from __future__ import annotations

import pytest

from apothic.server.ingress import HttpError, Route, _rewrite, error_response, parse_head, route


def test_path_form_strips_the_prefix() -> None:
    assert route(b"/shop/api/items/7?full=1", "127.0.0.1:8000") == Route(
        app="shop", function="api", target=b"/items/7?full=1", prefix="/shop/api"
    )
    assert route(b"/shop/api", "h").target == b"/"
    assert route(b"/shop/api?x=1", "h").target == b"/?x=1"


def test_host_form_keeps_the_path() -> None:
    assert route(b"/items", "api--shop.apps.example.com:8000") == Route(
        app="shop", function="api", target=b"/items", prefix=""
    )


@pytest.mark.parametrize("target", [b"/", b"/shop", b"/shop/", b"//api"])
def test_a_path_without_app_and_function_is_404(target: bytes) -> None:
    with pytest.raises(HttpError) as err:
        route(target, "localhost")
    assert err.value.status == 404


def test_parse_head_fast_path() -> None:
    head = b"POST /a/b/c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    target, headers = parse_head(head)
    assert target == b"/a/b/c"
    assert headers == {b"host": b"x", b"content-length": b"3", b"x-a": b"1, 2"}


@pytest.mark.parametrize(
    "head",
    [
        b"NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    ],
)
def test_parse_head_rejects_malformed_heads(head: bytes) -> None:
    with pytest.raises(HttpError) as err:
        parse_head(head)
    assert err.value.status == 400


def test_rewrite_replaces_the_target_and_names_the_prefix() -> None:
    head = b"GET /shop/api/items HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _rewrite(head, route(b"/shop/api/items", "x"))
    assert out == b"GET /items HTTP/1.1\r\nx-forwarded-prefix: /shop/api\r\nHost: x\r\n\r\n"


def test_error_response_is_json_and_closes() -> None:
    raw = error_response(404, "app 'x' is not deployed", startup_log_tail="")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found")
    assert b"connection: close" in head
    assert body == b'{"error": "app \'x\' is not deployed", "status": 404, "startup_log_tail": ""}'
