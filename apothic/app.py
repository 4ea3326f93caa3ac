"""``App``: a named group of functions that deploys as one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from apothic import _source, web
from apothic._lazy import get_client
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, UsageError
from apothic.functions import Function
from apothic.models import DeploymentInfo, ScheduleInfo
from apothic.options import FunctionDefinition, check_schedule_target, definition, validate_options

if TYPE_CHECKING:
    from apothic._client_image import BuildProgress

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds between heartbeats that keep an ephemeral run's deployment alive.
HEARTBEAT_INTERVAL_S = 5.0


def _pickle_by_value(func: Callable[..., Any]) -> bytes:
    import cloudpickle

    return bytes(cloudpickle.dumps(func))


class _AppAio:
    """Async forms of :class:`App`'s methods (``await app.aio.deploy()``)."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def deploy(self, *, ephemeral: bool = False, progress: BuildProgress | None = None) -> str:
        """Builds the functions' images, deploys the app and returns the deployment id once
        it has committed.

        Args:
            ephemeral: an ephemeral deployment stops when this client stops heartbeating;
                :meth:`App.run` uses it.
            progress: receives image build output (:class:`~apothic.models.ImageBuildLine`)
                and results (:class:`~apothic.models.ImageBuildResult`) as they arrive.

        Raises:
            ImageBuildError: an image failed to build; the message names the step and
                quotes the end of its output.
        """
        app = self._app
        if not app.functions:
            raise UsageError(f"app {app.name!r} has no functions to deploy; decorate one with @app.function()")
        defs = app._definitions()
        modules = {f.raw_function.__module__ for f in app.functions.values()} - {"__main__"}
        archive = _source.build_archive(modules)
        info = await get_client(app._client).deploy(app.name, defs, archive, ephemeral=ephemeral, progress=progress)
        app.deployment_id = info.deployment_id
        app.deployment = info
        return info.deployment_id

    async def stop(self) -> None:
        """Stops this process's deployment of the app."""
        app = self._app
        if app.deployment_id:
            await get_client(app._client).stop_deployment(app.deployment_id)

    async def schedules(self) -> list[ScheduleInfo]:
        """The app's scheduled functions in its live deployment, with their next run."""
        return await get_client(self._app._client).list_schedules(self._app.name)

    @contextlib.asynccontextmanager
    async def run(self, *, progress: BuildProgress | None = None) -> AsyncIterator[App]:
        """Deploys the app ephemerally for the block, heartbeating, and stops it after
        (``progress``: see :meth:`deploy`)."""
        await self.deploy(ephemeral=True, progress=progress)
        client = get_client(self._app._client)
        deployment_id = self._app.deployment_id or ""

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
                with contextlib.suppress(Exception):
                    await client.heartbeat_deployment(deployment_id)

        task = asyncio.create_task(beat())
        try:
            yield self._app
        finally:
            task.cancel()
            with contextlib.suppress(Exception):
                await client.stop_deployment(deployment_id)


class App:
    """A named group of functions, deployed together.

    Example::

        app = apothic.App("hello")

        @app.function(timeout_s=60)
        def square(x: int) -> int:
            return x * x

        @app.local_entrypoint()
        def main():
            print(square.remote(7))

    Args:
        name: the app's name; deploys of the same name replace the live version.
        client: where to deploy; defaults to the configured control plane.
    """

    def __init__(self, name: str, *, client: ClientConfig | None = None) -> None:
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise InvalidConfigError(f"app name must be letters, digits, '-' or '_', got {name!r}")
        self.name = name
        self.functions: dict[str, Function[Any, Any]] = {}
        self.local_entrypoints: dict[str, Callable[..., Any]] = {}
        self.deployment_id: str | None = None
        self.deployment: DeploymentInfo | None = None
        self._client = client
        self.aio = _AppAio(self)

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (App, (self.name,))

    @overload
    def function(self, _func: Callable[P, R], /) -> Function[P, R]: ...

    @overload
    def function(self, _func: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Function[P, R]]: ...

    def function(self, _func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Registers a function to run on the runtime.

        Works as ``@app.function`` and ``@app.function(...)``. Options (all keyword):
        ``name``, ``timeout_s``, ``startup_timeout_s``, ``retries``, ``max_containers``,
        ``min_containers``, ``buffer_containers``, ``scaledown_window_s``, ``keep_warm_s``,
        ``concurrent_requests``, ``tasks_per_container``, ``max_pending_tasks``, ``cpu``,
        ``memory_mb``, ``disk_mb``, ``gpu``, ``region``, ``arch``, ``max_cost_per_hour``,
        ``verified``, ``labels``, ``offer_filters``, ``env``, ``serialized``, ``schedule``
        (:class:`~apothic.Cron` or :class:`~apothic.Period`: runs the function, with no
        arguments, once per tick while the app is deployed), ``secrets`` (a list of
        :class:`~apothic.Secret`: their values become the containers' environment
        variables, a later secret's key overriding an earlier one's; the deploy fails
        when a named one does not exist), ``volumes`` (``{"/abs/path": Volume}``: the
        volume's files appear in that directory in the containers; see
        :meth:`~apothic.Volume.commit`).

        Returns:
            A :class:`Function` handle that keeps the function's signature.

        Raises:
            InvalidConfigError: an option is invalid, or the name is already taken.
        """
        try:
            opts = validate_options(**options)
        except TypeError as exc:
            raise InvalidConfigError(f"@app.function: {exc}") from None

        def decorate(func: Callable[P, R]) -> Function[P, R]:
            if isinstance(func, Function):
                raise InvalidConfigError(f"{func.function_name} is already an Apothic function")
            if not callable(func):
                raise InvalidConfigError(f"@app.function must decorate a function, got {func!r}")
            name = opts.name or func.__name__
            if name in self.functions:
                raise InvalidConfigError(f"app {self.name!r} already has a function named {name!r}")
            check_schedule_target(name, opts, func)
            handle: Function[P, R] = Function(self, func, name, opts)
            self.functions[name] = handle
            return handle

        if _func is not None:
            return decorate(_func)
        return decorate

    # -- web services (logic in apothic.web) --------------------------------------------

    def asgi(self, _func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Registers a function that returns an ASGI app, served over HTTP (see
        :mod:`apothic.web`). Takes ``@app.function``'s options plus ``keep_warm_s`` and
        ``service_startup_timeout_s``; works with or without parentheses.

        Returns:
            A :class:`~apothic.web.WebFunction`; ``service_url`` names its address.
        """
        return web.decorator(self, "asgi", _func, options)

    def wsgi_app(self, _func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Registers a function that returns a WSGI app, served over HTTP (options as
        :meth:`asgi`)."""
        return web.decorator(self, "wsgi", _func, options)

    def web_server(self, port: int, *, startup_timeout: float | None = None, **options: Any) -> Any:
        """Registers a function that starts a server listening on ``port`` in its container
        (it may return a handle whose ``close()`` stops it); ``startup_timeout``: seconds
        the port may take to accept connections (options as :meth:`asgi`)."""
        return web.decorator(self, "web_server", None, {**options, "startup_timeout": startup_timeout}, port=port)

    def endpoint(self, _func: Callable[..., Any] | None = None, /, *, method: str = "GET", **options: Any) -> Any:
        """Registers a plain function as an HTTP endpoint: query parameters and a JSON body
        become its arguments, its return value (dicts, lists, pydantic models) the JSON
        answer, an exception a 500 with a JSON body (options as :meth:`asgi`)."""
        return web.decorator(self, "endpoint", _func, options, method=method)

    def fastapi_endpoint(
        self, _func: Callable[..., Any] | None = None, /, *, method: str = "GET", **options: Any
    ) -> Any:
        """Like :meth:`endpoint`, with FastAPI's parameter declarations (``Query``,
        ``Body``, pydantic models) honoured."""
        return web.decorator(self, "fastapi_endpoint", _func, options, method=method)

    def cls(self, _cls: type | None = None, /, **options: Any) -> Any:
        """Registers a stateful class: its ``@apothic.method()`` methods run remotely on
        instances that keep their state in their container (see :mod:`apothic.cls`).

        Works as ``@app.cls`` and ``@app.cls(...)``; takes the options of
        :meth:`function` (``max_containers`` defaults to 1, so an instance's state is one).

        Returns:
            A :class:`~apothic.cls.Cls`: call it for an instance, ``.named(name)`` for a
            shared one.

        Raises:
            InvalidConfigError: an invalid option, or a class without remote methods.
        """
        from apothic.cls import Cls

        def decorate(klass: type) -> Cls:
            if not isinstance(klass, type):
                raise InvalidConfigError(f"@app.cls must decorate a class, got {klass!r}")
            return Cls(self, klass, options)

        if _cls is not None:
            return decorate(_cls)
        return decorate

    def sandbox(self, **options: Any) -> Any:
        """Creates a sandbox on this app's control plane and waits until it runs commands:
        ``apothic.Sandbox.create(...)`` with the app's client (see :class:`apothic.Sandbox`)."""
        from apothic.sandbox import Sandbox

        return Sandbox.create(client=self._client, **options)

    def local_entrypoint(self, _func: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Marks a function that ``apothic run FILE`` calls locally after deploying.

        Works with or without parentheses.
        """

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            self.local_entrypoints[name or func.__name__] = func
            return func

        if _func is not None:
            return decorate(_func)
        return decorate

    def _definitions(self) -> list[FunctionDefinition]:
        defs = []
        for name, fn in self.functions.items():
            raw = fn.raw_function
            by_value = raw.__module__ == "__main__" or fn.options.serialized or "<locals>" in raw.__qualname__
            spec = definition(
                name,
                fn.options,
                raw,
                module="" if by_value else raw.__module__,
                qualname=raw.__qualname__,
                pickled=_pickle_by_value(raw) if by_value else b"",
            )
            defs.append(web.with_web(spec, fn))
        return defs

    def deploy(self, *, progress: BuildProgress | None = None) -> str:
        """Builds the functions' images, deploys the app and returns the deployment id once
        it has committed (see :meth:`_AppAio.deploy`)."""
        return run_sync(self.aio.deploy(progress=progress), "app.deploy()")

    def stop(self) -> None:
        """Stops this process's deployment of the app."""
        run_sync(self.aio.stop(), "app.stop()")

    def schedules(self) -> list[ScheduleInfo]:
        """The app's scheduled functions in its live deployment, with their next run and
        last run (``apothic app schedules APP`` shows the same)."""
        return run_sync(self.aio.schedules(), "app.schedules()")

    @contextlib.contextmanager
    def run(self, *, progress: BuildProgress | None = None) -> Iterator[App]:
        """Deploys the app ephemerally for the ``with`` block and stops it afterwards
        (``progress`` receives image build output; see :meth:`_AppAio.deploy`)."""
        cm = self.aio.run(progress=progress)
        run_sync(cm.__aenter__(), "App.run()")
        try:
            yield self
        except BaseException as exc:
            run_sync(cm.__aexit__(type(exc), exc, exc.__traceback__), "App.run()")
            raise
        else:
            run_sync(cm.__aexit__(None, None, None), "App.run()")
