"""Web decorators: options, handles and what a deploy ships (no runtime)."""

from __future__ import annotations

import json

import pytest

import apothic
from apothic.exceptions import InvalidConfigError
from apothic.web import WebFunction


def _doc(app: apothic.App, name: str) -> dict:
    (spec,) = [d for d in app._definitions() if d.name == name]
    return json.loads(spec.options_json)


def test_each_decorator_ships_its_kind_and_settings() -> None:
    app = apothic.App("web-decorators")

    @app.asgi
    def bare() -> None: ...

    @app.asgi(keep_warm_s=30, service_startup_timeout_s=12, cpu=1)
    def api() -> None: ...

    @app.wsgi_app()
    def legacy() -> None: ...

    @app.web_server(8080, startup_timeout=5)
    def server() -> None: ...

    @app.endpoint(method="post")
    def add(a: int) -> int:
        return a

    @app.fastapi_endpoint()
    def fast() -> None: ...

    assert isinstance(api, WebFunction) and api.__name__ == "api"
    assert add(2) == 2  # still callable locally
    assert _doc(app, "bare")["web"] == {"kind": "asgi", "service_startup_timeout_s": 60.0}
    doc = _doc(app, "api")
    assert doc["web"] == {"kind": "asgi", "service_startup_timeout_s": 12.0}
    assert doc["keep_warm_s"] == 30 and doc["cpu"] == 1
    assert _doc(app, "legacy")["web"]["kind"] == "wsgi"
    assert _doc(app, "server")["web"] == {"kind": "web_server", "port": 8080, "service_startup_timeout_s": 5.0}
    assert _doc(app, "add")["web"] == {"kind": "endpoint", "method": "POST", "service_startup_timeout_s": 60.0}
    assert _doc(app, "fast")["web"]["method"] == "GET"
    # The container's startup deadline is the service's startup timeout.
    (spec,) = [d for d in app._definitions() if d.name == "server"]
    assert spec.startup_timeout_s == 5.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda app: app.web_server(lambda: None), "needs the port"),
        (lambda app: app.web_server(70000), "port must be an integer"),
        (lambda app: app.endpoint(method="FETCH"), "method must be one of"),
        (lambda app: app.asgi(nope=1), "@app.asgi"),
        (lambda app: app.asgi(service_startup_timeout_s=-1), "service_startup_timeout_s must be greater than zero"),
        (lambda app: app.asgi(schedule=apothic.Period(seconds=5))(lambda: None), "cannot have a schedule"),
    ],
)
def test_bad_options_name_the_fix(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidConfigError, match=message):
        make(apothic.App("web-bad"))


def test_names_are_unique_across_functions_and_services() -> None:
    app = apothic.App("web-names")

    @app.function()
    def twice() -> None: ...

    with pytest.raises(InvalidConfigError, match="already has a function named 'twice'"):
        app.asgi(name="twice")(lambda: None)
