"""Handles for calling deployed functions: ``Function`` (from a decorator) and
``RemoteFunction`` (looked up by name)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from apothic import _serialization as ser
from apothic._inputs import input_batches
from apothic._lazy import function_ref, get_client
from apothic._sync import iter_sync, run_sync
from apothic.config import ClientConfig, load_client_config
from apothic.exceptions import InvalidConfigError
from apothic.job import Job
from apothic.models import JobEndEvent, JobEvent, Outcome

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

    async def remote_gen(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Any]:
        """Calls a generator function and yields its items as it produces them.

        Raises:
            Exception: what the generator raised, after the items it yielded before.
        """
        owner = self._owner
        data = ser.dumps_args(args, kwargs, func=owner._signature_source())
        async for item in get_client(owner._client_config()).invoke_stream(owner._ref(), data):
            if isinstance(item, tuple):
                yield ser.loads_value(*item)
            else:
                item.unwrap()

    async def map(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """Runs the function once per input and yields the results (see :meth:`_Invocable.map`)."""
        async for value in self._map(iterables, kwargs, order_outputs, return_exceptions, timeout_s, star=False):
            yield value

    async def starmap(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """Like :meth:`map`, with each item unpacked into positional arguments."""
        async for value in self._map((items,), kwargs, order_outputs, return_exceptions, timeout_s, star=True):
            yield value

    async def for_each(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        kwargs: dict[str, Any] | None = None,
        ignore_exceptions: bool = False,
    ) -> None:
        """Runs the function over the inputs for their effects; raises the first failure
        unless ``ignore_exceptions``."""
        async for _ in self._map(iterables, kwargs, False, ignore_exceptions, None, star=False):
            pass

    async def spawn_map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None) -> list[Job]:
        """Starts one job per input without waiting; returns the jobs once all are durable."""
        owner = self._owner
        config = owner._client_config()
        client = get_client(config)
        ids: list[str] = []
        async for batch in input_batches(iterables, kwargs or {}, owner._signature_source()):
            ids += await client.spawn_many(owner._ref(), [data for _, data in batch])
        return [Job(job_id, client=config) for job_id in ids]

    async def _map(
        self,
        iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...],
        kwargs: dict[str, Any] | None,
        order_outputs: bool,
        return_exceptions: bool,
        timeout_s: float | None,
        *,
        star: bool,
    ) -> AsyncIterator[Any]:
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidConfigError(f"map timeout_s must be greater than zero, got {timeout_s}")
        owner = self._owner
        batches = input_batches(iterables, kwargs or {}, owner._signature_source(), star=star)
        stream = get_client(owner._client_config()).map(owner._ref(), batches).__aiter__()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        held: dict[int, Outcome] = {}
        next_index = 0
        try:
            while True:
                try:
                    if deadline is None:
                        index, outcome = await stream.__anext__()
                    else:
                        left = deadline - loop.time()
                        index, outcome = await asyncio.wait_for(stream.__anext__(), max(left, 0))
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise TimeoutError(f"map did not finish within {timeout_s}s") from None
                if not order_outputs:
                    yield _value_of(index, outcome, return_exceptions)
                    continue
                held[index] = outcome
                while next_index in held:
                    yield _value_of(next_index, held.pop(next_index), return_exceptions)
                    next_index += 1
            for index in sorted(held):
                yield _value_of(index, held[index], return_exceptions)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


def _value_of(index: int, outcome: Outcome, return_exceptions: bool) -> Any:
    """A map input's value, or its error (raised, or returned when asked)."""
    try:
        return outcome.unwrap()
    except Exception as exc:
        exc.add_note(f"(raised by map input {index})")
        if return_exceptions:
            return exc
        raise


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

    def remote_gen(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
        """Calls a generator function and yields its items as it produces them."""
        return iter_sync(self.aio.remote_gen(*args, **kwargs), f"{self.function_name}.remote_gen()")

    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[Any]:
        """Runs the function once per input, in parallel, and yields the results.

        Inputs stream to the runtime in batches over one call while results stream back.

        Args:
            iterables: one iterable per positional parameter, zipped (like ``map()``).
            kwargs: keyword arguments passed to every call.
            order_outputs: yield results in input order (default) or as they finish.
            return_exceptions: yield a failed input's exception instead of raising it.
            timeout_s: seconds the whole map may take.

        Raises:
            Exception: the first failed input's own exception, noting its index.
            TimeoutError: the map ran past ``timeout_s``.
        """
        return iter_sync(
            self.aio.map(
                *iterables,
                kwargs=kwargs,
                order_outputs=order_outputs,
                return_exceptions=return_exceptions,
                timeout_s=timeout_s,
            ),
            f"{self.function_name}.map()",
        )

    def starmap(
        self,
        items: Iterable[Any],
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`map`, with each item unpacked into positional arguments."""
        return iter_sync(
            self.aio.starmap(
                items,
                kwargs=kwargs,
                order_outputs=order_outputs,
                return_exceptions=return_exceptions,
                timeout_s=timeout_s,
            ),
            f"{self.function_name}.starmap()",
        )

    def for_each(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        """Runs the function over the inputs for their effects, waiting for all of them."""
        run_sync(
            self.aio.for_each(*iterables, kwargs=kwargs, ignore_exceptions=ignore_exceptions),
            f"{self.function_name}.for_each()",
        )

    def spawn_map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None) -> list[Job]:
        """Starts one job per input without waiting; returns the jobs once all are durable."""
        return run_sync(self.aio.spawn_map(*iterables, kwargs=kwargs), f"{self.function_name}.spawn_map()")


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
