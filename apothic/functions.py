"""Handles for calling deployed functions: ``Function`` (from a decorator) and
``RemoteFunction`` (looked up by name)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from apothic import _serialization as ser
from apothic._client import function_ref, get_client
from apothic._sync import iter_sync, run_sync
from apothic.config import ClientConfig, load_client_config
from apothic.job import Job
from apothic.models import JobEndEvent, JobEvent

if TYPE_CHECKING:
    from apothic.app import App
    from apothic.options import FunctionOptions

P = ParamSpec("P")
R = TypeVar("R")


class _InvocableAio(Generic[P, R]):
    """Async forms: ``await fn.aio.remote(...)``, ``await fn.aio.spawn(...)``…"""

    def __init__(self, owner: _Invocable[P, R]) -> None:
        self._owner = owner

    async def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Calls the function remotely and returns its value."""
        owner = self._owner
        data = ser.dumps_args(args, kwargs, func=owner._signature_source())
        outcome = await get_client(owner._client_config()).invoke(owner._ref(), data)
        return outcome.unwrap()  # type: ignore[no-any-return]

    async def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Starts the function and returns its job once the job is durable."""
        owner = self._owner
        data = ser.dumps_args(args, kwargs, func=owner._signature_source())
        config = owner._client_config()
        job_id = await get_client(config).spawn(owner._ref(), data)
        return Job(job_id, client=config)

    async def remote_events(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[JobEvent]:
        """Starts the function and yields its job's events, ending with ``job.end``."""
        job = await self.spawn(*args, **kwargs)
        async for event in job.aio.watch(snapshot=False):
            yield event
            if isinstance(event, JobEndEvent):
                return


class _Invocable(Generic[P, R]):
    """What both handle kinds share: calling by (app, function) name."""

    function_name: str

    @property
    def app_name(self) -> str:
        """The app the function belongs to."""
        raise NotImplementedError

    def __init__(self) -> None:
        self.aio: _InvocableAio[P, R] = _InvocableAio(self)

    def _ref(self) -> Any:
        return function_ref(self.app_name, self.function_name, self._deployment_id())

    def _deployment_id(self) -> str:
        return ""

    def _client_config(self) -> ClientConfig | None:
        return None

    def _signature_source(self) -> Callable[..., Any] | None:
        return None

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Calls the function remotely, waits, and returns its value.

        Raises:
            Exception: the function's own exception, re-raised with the remote traceback.
            FunctionTimeoutError: the call ran past the function's ``timeout_s``.
            NotFoundError: the app or function is not deployed.
        """
        return run_sync(self.aio.remote(*args, **kwargs), f"{self.function_name}.remote()")

    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Starts the function without waiting; returns its :class:`Job`."""
        return run_sync(self.aio.spawn(*args, **kwargs), f"{self.function_name}.spawn()")

    def remote_events(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[JobEvent]:
        """Starts the function and yields its job's events as they happen."""
        return iter_sync(self.aio.remote_events(*args, **kwargs), f"{self.function_name}.remote_events()")


class RemoteFunction(_Invocable[..., Any]):
    """A deployed function looked up by name; calls go to the app's live deployment."""

    def __init__(self, app_name: str, function_name: str, *, client: ClientConfig | None = None) -> None:
        super().__init__()
        self._app_name = app_name
        self.function_name = function_name
        self._config = client

    @property
    def app_name(self) -> str:
        """The deployed app's name."""
        return self._app_name

    @classmethod
    def from_name(
        cls,
        app_name: str,
        function_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: ClientConfig | None = None,
    ) -> RemoteFunction:
        """Looks up a deployed function by app and function name.

        Nothing is sent until the first call.

        Args:
            app_name: the deployed app's name.
            function_name: the function's name within the app.
            base_url: control-plane address; defaults to the configured one.
            api_key: API key; defaults to the configured one.
            client: a full client configuration, instead of ``base_url``/``api_key``.
        """
        if client is None and (base_url or api_key):
            client = load_client_config(base_url=base_url, api_key=api_key)
        return cls(app_name, function_name, client=client)

    def _client_config(self) -> ClientConfig | None:
        return self._config

    def __repr__(self) -> str:
        return f"RemoteFunction({self.app_name!r}, {self.function_name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteFunction, (self.app_name, self.function_name))


class Function(_Invocable[P, R]):
    """A function decorated with ``@app.function``.

    Calling it directly runs it locally; ``.remote()``, ``.spawn()`` and
    ``.remote_events()`` run it on the runtime, with ``.aio`` forms of each.
    """

    def __init__(self, app: App, raw: Callable[P, R], name: str, options: FunctionOptions) -> None:
        super().__init__()
        self.app = app
        self.raw_function = raw
        self.function_name = name
        self.options = options
        functools.update_wrapper(self, raw)  # type: ignore[arg-type]

    @property
    def app_name(self) -> str:
        """The app the function belongs to."""
        return self.app.name

    def _deployment_id(self) -> str:
        return self.app.deployment_id or ""

    def _client_config(self) -> ClientConfig | None:
        return self.app._client

    def _signature_source(self) -> Callable[..., Any] | None:
        return self.raw_function

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function locally, in this process."""
        return self.raw_function(*args, **kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function locally, in this process."""
        return self.raw_function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Function({self.app.name!r}, {self.function_name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A handle captured by a function that ships by value becomes a by-name lookup.
        return (RemoteFunction, (self.app.name, self.function_name))
