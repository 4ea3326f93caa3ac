"""Web services: ``@app.asgi``, ``@app.wsgi_app``, ``@app.web_server``, ``@app.endpoint`` and
``@app.fastapi_endpoint``.

A web function runs in a container on a worker and serves HTTP; the control plane's ingress
routes ``http://HOST:PORT/<app>/<function>/...`` (the prefix stripped) and hosts named
``<function>--<app>.<domain>`` to it, starting a container on demand. Its handle is a
:class:`WebFunction`: ``service_url`` / ``get_web_url()`` name that address.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.exceptions import InvalidConfigError, NotFoundError, UsageError
from apothic.functions import Function, _InvocableAio
from apothic.options import FunctionDefinition, FunctionOptions, _positive, validate_options

if TYPE_CHECKING:
    from apothic.app import App

P = ParamSpec("P")
R = TypeVar("R")

#: What each decorator runs (see apothic._container.web).
KINDS = ("asgi", "wsgi", "web_server", "endpoint", "fastapi_endpoint")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class _WebAio(_InvocableAio[P, R]):
    """Async forms of a web function's methods (``await service.aio.get_web_url()``)."""

    def __init__(self, owner: WebFunction[P, R]) -> None:
        super().__init__(owner)
        self._web = owner

    async def get_web_url(self) -> str:
        """The URL the control plane's HTTP ingress serves the function at.

        Raises:
            NotFoundError: the app has no live deployment with this web function.
        """
        fn = self._web
        deployment = fn.app.deployment
        if deployment is not None and fn.function_name in deployment.web_urls:
            return deployment.web_urls[fn.function_name]
        for dep in await get_client(fn.app._client).list_deployments(fn.app.name, limit=10):
            if fn.function_name in dep.web_urls:
                return dep.web_urls[fn.function_name]
        raise NotFoundError(
            f"web function {fn.function_name!r} of app {fn.app.name!r} is not deployed; "
            "deploy the app (apothic deploy / apothic run) first"
        )

    async def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Web functions are called over HTTP, not with ``remote()``."""
        raise UsageError(self._web._http_hint("remote()"))

    async def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Web functions are called over HTTP, not with ``spawn()``."""
        raise UsageError(self._web._http_hint("spawn()"))


class WebFunction(Function[P, R]):
    """A function that serves HTTP (from ``@app.asgi``, ``@app.endpoint``…).

    Calling it directly runs it locally (an ASGI app factory returns its app). On the
    runtime it is reached over HTTP at :attr:`service_url`.
    """

    def __init__(self, app: App, raw: Callable[P, R], name: str, options: FunctionOptions, web: dict[str, Any]) -> None:
        super().__init__(app, raw, name, options)
        #: The web settings shipped in the function's options (``kind``, ``port``…).
        self.web = web
        self.aio: _WebAio[P, R] = _WebAio(self)

    def _http_hint(self, what: str) -> str:
        return (
            f"{self.function_name} is a web service ({self.web['kind']}); call it over HTTP at "
            f"{self.function_name}.get_web_url() instead of {what}"
        )

    def get_web_url(self) -> str:
        """The URL the control plane's HTTP ingress serves the function at (see
        :meth:`_WebAio.get_web_url`)."""
        return run_sync(self.aio.get_web_url(), f"{self.function_name}.get_web_url()")

    @property
    def service_url(self) -> str:
        """The URL the function is served at (``get_web_url()``)."""
        return self.get_web_url()

    def __repr__(self) -> str:
        return f"WebFunction({self.app.name!r}, {self.function_name!r}, kind={self.web['kind']!r})"


def decorator(
    app: App,
    kind: str,
    func: Callable[..., Any] | None,
    options: dict[str, Any],
    *,
    port: int | None = None,
    method: str | None = None,
) -> Any:
    """The decorator ``@app.<kind>(...)`` returns (or its result, when used bare).

    Raises:
        InvalidConfigError: an option is invalid, or the name is already taken.
    """
    where = {"wsgi": "wsgi_app"}.get(kind, kind)
    service_timeout = options.pop("service_startup_timeout_s", None)
    startup_timeout = options.pop("startup_timeout", None)
    try:
        opts = validate_options(**options)
    except TypeError as exc:
        raise InvalidConfigError(f"@app.{where}: {exc}") from None
    web: dict[str, Any] = {"kind": kind}
    if port is not None:
        if callable(port):
            raise InvalidConfigError("@app.web_server needs the port its server listens on: @app.web_server(8000)")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidConfigError(f"@app.web_server: port must be an integer from 1 to 65535, got {port!r}")
        web["port"] = port
    if method is not None:
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise InvalidConfigError(f"@app.{where}: method must be one of {', '.join(HTTP_METHODS)}, got {method!r}")
        web["method"] = method.upper()
    for opt, value in (("startup_timeout", startup_timeout), ("service_startup_timeout_s", service_timeout)):
        if value is not None:
            try:
                _positive(opt, value)
            except InvalidConfigError as exc:
                raise InvalidConfigError(f"@app.{where}: {exc}") from None
    timeout = service_timeout or startup_timeout or opts.startup_timeout_s
    web["service_startup_timeout_s"] = float(timeout)
    opts = replace(opts, startup_timeout_s=float(timeout))

    def decorate(raw: Callable[P, R]) -> WebFunction[P, R]:
        if isinstance(raw, Function):
            raise InvalidConfigError(f"{raw.function_name} is already an Apothic function")
        if not callable(raw):
            raise InvalidConfigError(f"@app.{where} must decorate a function, got {raw!r}")
        if opts.schedule is not None:
            raise InvalidConfigError(f"@app.{where}: a web service cannot have a schedule")
        name = opts.name or raw.__name__
        if name in app.functions:
            raise InvalidConfigError(f"app {app.name!r} already has a function named {name!r}")
        handle: WebFunction[P, R] = WebFunction(app, raw, name, opts, web)
        app.functions[name] = handle
        return handle

    if func is not None:
        return decorate(func)
    return decorate


def with_web(definition: FunctionDefinition, fn: Function[Any, Any]) -> FunctionDefinition:
    """A function's deployable definition, carrying its web settings when it serves HTTP."""
    if not isinstance(fn, WebFunction):
        return definition
    doc = json.loads(definition.options_json)
    doc["web"] = fn.web
    return replace(definition, options_json=json.dumps(doc, sort_keys=True, default=repr))
