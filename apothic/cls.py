"""Stateful classes: ``@app.cls`` with ``@enter``, ``@exit`` and ``@method``.

::

    @app.cls(timeout_s=60)
    class Counter:
        def __init__(self, start: int = 0) -> None:
            self.start = start

        @apothic.enter()
        def open(self) -> None:          # once per instance, in its container
            self.count = self.start

        @apothic.method()
        def add(self, n: int) -> int:
            self.count += n
            return self.count

        @apothic.exit()
        def close(self) -> None:         # when the container stops
            ...

    c = Counter(10)                      # an ephemeral instance: its own state
    c.add.remote(1)                      # 11
    shared = Counter.named("hits")       # the same name: the same live instance and state
    shared.add.spawn(1); shared.add.map([1, 2, 3])
    ref = shared.to_ref()                # a string another process reattaches with Cls.from_ref

A class deploys as one function (named after the class) whose containers hold its
instances (see :mod:`apothic._cls_runtime`). By default a class runs in one container
(``max_containers=1``), so an instance's state is the same for every caller; with more
containers each keeps its own copy of an instance (as Modal's classes do). Methods may
be async (then the whole class should be: an all-async class interleaves calls).
``@apothic.concurrent`` on the class lets one container run several calls at once.

``@apothic.batched`` on a method (with or without ``@method()``, as Modal's
``@modal.batched``)::

    @apothic.batched(max_batch_size=8, wait_ms=50)
    def embed(self, texts: list[str]) -> list[int]:   # called once per batch
        return [len(t) for t in texts]

    c.embed.remote("one text")          # each caller passes one input, gets its element
    list(c.embed.map(texts))            # concurrent calls of one instance share batches

The calls of one batched method on one instance are grouped inside the container up to
``max_batch_size`` or ``wait_ms``; a result of the wrong length or an exception fails
every caller of that batch. To let batches form, the class's container takes up to the
largest ``max_batch_size`` inputs at once, while its other method bodies keep the
class's own limit (``@concurrent``'s ``max_inputs``; one at a time without it), a whole
batch counting as one body. ``@concurrent`` on the class and ``@batched`` methods
therefore mix: ``@concurrent(max_inputs=4)`` with a ``max_batch_size=16`` method takes
16 inputs per container and runs at most 4 bodies at once. ``@batched`` on the class
itself, ``@concurrent`` on a method, and a batched generator are refused at decoration.

Generator methods (sync or async) stream their items: ``c.tokens.remote_gen(n)`` (and
``.aio.remote_gen``) yields them as the method produces them. The control plane streams
only from a function declared a generator, so a class with generator methods deploys a
second function, ``<Class>__gen``, that serves them in containers of its own: an
instance used by both kinds of method is constructed (and ``@enter``-ed) once in each,
and the two copies do not share state. Calling a generator method with ``.remote()``,
``.spawn()`` or ``.map()`` (or a plain one with ``.remote_gen()``) raises ``TypeError``.
"""

from __future__ import annotations

import base64
import builtins
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from apothic._cls_runtime import (
    ENTER,
    EXIT,
    GEN_SUFFIX,
    LIFECYCLE_ATTR,
    METHOD,
    TERMINATE,
    is_generator,
    make_dispatcher,
    make_gen_dispatcher,
    marked,
)
from apothic.concurrency import BATCHED_ATTR, CONCURRENT_ATTR, BatchedConfig, ConcurrentConfig, concurrent
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, NotFoundError
from apothic.functions import RemoteFunction, _Invocable
from apothic.job import Job

if TYPE_CHECKING:
    from apothic.app import App

F = TypeVar("F", bound=Callable[..., Any])


def _marker(kind: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        if not callable(func):
            raise InvalidConfigError(f"@apothic.{kind}() must decorate a method, got {func!r}")
        _check_method(func, kind)
        setattr(func, LIFECYCLE_ATTR, kind)
        return func

    return decorate


def _check_method(func: Any, kind: str) -> None:
    """Refuses markers that contradict each other on one function.

    Raises:
        InvalidConfigError: ``@batched`` on a lifecycle hook or a generator, or
            ``@concurrent`` on a method.
    """
    name = getattr(func, "__qualname__", repr(func))
    if hasattr(func, BATCHED_ATTR):
        if kind != METHOD:
            raise InvalidConfigError(f"{name}: @batched goes on a remote method, not on an @{kind}() hook")
        if is_generator(func):
            raise InvalidConfigError(f"{name}: a generator method cannot be @batched")
    if hasattr(func, CONCURRENT_ATTR):
        raise InvalidConfigError(f"{name}: @apothic.concurrent goes on the class, not on a method")


def enter() -> Callable[[F], F]:
    """Marks a method that runs once when an instance starts in its container."""
    return _marker(ENTER)


def exit() -> Callable[[F], F]:  # noqa: A001 - the name users expect (modal.exit)
    """Marks a method that runs when the instance's container stops (scale-down, the app
    stopped, SIGTERM)."""
    return _marker(EXIT)


def method() -> Callable[[F], F]:
    """Marks a method callable remotely (``instance.name.remote(...)``, ``.spawn``, ``.map``,
    ``.aio``)."""
    return _marker(METHOD)


def _encode_params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (tuple(args), dict(kwargs))


class _MethodAio:
    """Async forms: ``await instance.add.aio.remote(1)``."""

    def __init__(self, handle: RemoteMethod) -> None:
        self._h = handle

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the method and returns its value."""
        self._h._check(args, kwargs)
        return await self._h._function.aio.remote(self._h._header, *args, **kwargs)

    async def spawn(self, *args: Any, **kwargs: Any) -> Job:
        """Starts the method and returns its job once durable."""
        self._h._check(args, kwargs)
        return await self._h._function.aio.spawn(self._h._header, *args, **kwargs)

    async def remote_gen(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Calls a generator method and yields its items as it produces them."""
        self._h._check(args, kwargs, streaming=True)
        async for item in self._h._gen_function().aio.remote_gen(self._h._header, *args, **kwargs):
            yield item

    async def map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Calls the method once per input and yields the results in order."""
        self._h._check_kind(streaming=False)
        rows = ((self._h._header, *row) for row in zip(*iterables, strict=False))
        async for value in self._h._function.aio.starmap(rows, kwargs=kwargs):
            yield value


class RemoteMethod:
    """One remote method of an instance: ``.remote``, ``.spawn``, ``.map``, ``.starmap``,
    ``.spawn_map`` and ``.aio``."""

    def __init__(self, instance: Instance, name: str, local: Callable[..., Any] | None) -> None:
        self._instance = instance
        self._name = name
        self._local = local
        self._function: _Invocable[..., Any] = instance._cls._function()
        self._header = (instance.key, instance._params, name)
        self.aio = _MethodAio(self)

    def __repr__(self) -> str:
        return f"RemoteMethod({self._instance!r}.{self._name})"

    def _check_kind(self, *, streaming: bool) -> None:
        """Refuses a generator method called for a value, and the other way round (known
        here for a local class; a class looked up by name is checked by its container)."""
        if self._local is None:
            return
        qualified = f"{self._instance._cls.name}.{self._name}"
        if is_generator(self._local) and not streaming:
            raise TypeError(f"{qualified} is a generator method: iterate over its items with .remote_gen(...)")
        if streaming and not is_generator(self._local):
            raise TypeError(f"{qualified} is not a generator method; call it with .remote(...)")

    def _check(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, streaming: bool = False) -> None:
        self._check_kind(streaming=streaming)
        if self._local is not None:
            try:
                inspect.signature(self._local).bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self._instance._cls.name}.{self._name}(): {exc}") from None

    def _gen_function(self) -> _Invocable[..., Any]:
        found = self._instance._cls._gen_function()
        assert found is not None, "_check_kind refused a generator call on a class without generator methods"
        return found

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the method on the instance and returns its value (its exception re-raised)."""
        self._check(args, kwargs)
        return self._function.remote(self._header, *args, **kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> Job:
        """Starts the method and returns its job once durable."""
        self._check(args, kwargs)
        return self._function.spawn(self._header, *args, **kwargs)

    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Calls a generator method and yields its items as it produces them.

        Raises:
            TypeError: the method is not a generator method.
            Exception: what the method raised, after the items it yielded before.
        """
        self._check(args, kwargs, streaming=True)
        return self._gen_function().remote_gen(self._header, *args, **kwargs)

    def map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, **opts: Any) -> Iterator[Any]:
        """Calls the method once per input (zipped iterables) and yields the results."""
        self._check_kind(streaming=False)
        return self._function.starmap(
            ((self._header, *row) for row in zip(*iterables, strict=False)), kwargs=kwargs, **opts
        )

    def starmap(
        self, rows: Iterable[Iterable[Any]], kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Iterator[Any]:
        """Calls the method once per argument tuple and yields the results."""
        self._check_kind(streaming=False)
        return self._function.starmap(((self._header, *row) for row in rows), kwargs=kwargs, **opts)

    def spawn_map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None) -> builtins.list[Job]:
        """Starts one job per input; returns their handles."""
        self._check_kind(streaming=False)
        return [self.spawn(*row, **(kwargs or {})) for row in zip(*iterables, strict=False)]


class Instance:
    """A handle on one instance of a deployed class. Attribute access gives its remote
    methods; it pickles (and :meth:`to_ref` gives a string) so another process can reattach."""

    def __init__(self, cls: Cls | RemoteCls, key: str, params: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        self._cls = cls
        self.key = key
        self._params = params

    def __repr__(self) -> str:
        return f"{self._cls.name}Instance({self.key!r})"

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(self, name, self._cls._method(name))

    def terminate(self) -> None:
        """Runs the instance's ``@exit`` methods and drops it; later calls on it fail (in
        the containers of the class's generator methods too, when it has any)."""
        header = (self.key, self._params, TERMINATE)
        self._cls._function().remote(header)
        gen = self._cls._gen_function()
        if gen is None:
            return
        try:
            for _ in gen.remote_gen(header):
                pass
        except NotFoundError:
            if not isinstance(self._cls, RemoteCls):
                raise  # a class looked up by name may have no generator methods

    def to_ref(self) -> str:
        """A string naming this instance; :meth:`Cls.from_ref` reattaches to it anywhere."""
        import cloudpickle

        params = base64.b64encode(cloudpickle.dumps(self._params)).decode()
        return json.dumps({"app": self._cls.app_name, "cls": self._cls.name, "key": self.key, "params": params})

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cls.from_ref, (self.to_ref(),))


class Cls:
    """What ``@app.cls`` returns: call it for an ephemeral instance, :meth:`named` for a
    shared one; ``.local_class`` is the class itself."""

    def __init__(self, app: App, raw: type, options: dict[str, Any]) -> None:
        self.app = app
        self.local_class = raw
        self.name = raw.__name__
        methods = marked(raw, METHOD)
        if not methods:
            raise InvalidConfigError(
                f"class {raw.__name__} has no @apothic.method(); mark the methods to call remotely"
            )
        if hasattr(raw, BATCHED_ATTR):
            raise InvalidConfigError(f"class {raw.__name__}: @batched goes on its methods, not on the class")
        self._methods = {name: getattr(raw, name) for name in methods}
        for name in methods:
            _check_method(inspect.getattr_static(raw, name), METHOD)
        plain = [m for m in self._methods.values() if not is_generator(m)]
        gens = [m for m in self._methods.values() if is_generator(m)]
        batches: list[BatchedConfig] = [getattr(m, BATCHED_ATTR) for m in plain if hasattr(m, BATCHED_ATTR)]
        class_concurrent: ConcurrentConfig | None = getattr(raw, CONCURRENT_ATTR, None)
        options = {"max_containers": 1, **options, "serialized": True}
        options.pop("name", None)  # the class's functions are named after it
        if batches:
            dispatcher, options_main = self._batched_dispatcher(raw, plain, batches, class_concurrent, options)
        else:
            dispatcher = make_dispatcher(raw, is_async=bool(plain) and all(map(inspect.iscoroutinefunction, plain)))
            if class_concurrent is not None:
                setattr(dispatcher, CONCURRENT_ATTR, class_concurrent)
            options_main = options
        self._fn = app.function(**options_main, name=self.name)(dispatcher)
        self._gen_fn: _Invocable[..., Any] | None = None
        if gens:
            gen_dispatcher = make_gen_dispatcher(raw, is_async=all(map(inspect.isasyncgenfunction, gens)))
            if class_concurrent is not None:
                setattr(gen_dispatcher, CONCURRENT_ATTR, class_concurrent)
            self._gen_fn = app.function(**options, name=self.name + GEN_SUFFIX)(gen_dispatcher)
        self.__doc__ = raw.__doc__

    @staticmethod
    def _batched_dispatcher(
        raw: type,
        plain: builtins.list[Callable[..., Any]],
        batches: builtins.list[BatchedConfig],
        class_concurrent: ConcurrentConfig | None,
        options: dict[str, Any],
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The dispatcher of a class with ``@batched`` methods, and its function options.

        The container must hold a whole batch, so the dispatcher takes up to the largest
        ``max_batch_size`` inputs at once (or the class's own limit, if larger); the
        dispatcher's gate keeps method bodies to the class's own limit.

        Raises:
            InvalidConfigError: ``concurrent_requests`` is not a positive integer.
        """
        limit = target = 1
        if class_concurrent is not None:
            limit, target = class_concurrent.max_inputs, class_concurrent.target_inputs
        options = dict(options)
        if "concurrent_requests" in options:
            requests = options.pop("concurrent_requests")
            if class_concurrent is not None:
                raise InvalidConfigError(f"{raw.__name__}: use either concurrent_requests= or @concurrent, not both")
            if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
                raise InvalidConfigError(f"concurrent_requests must be a positive integer, got {requests!r}")
            limit = target = requests
        batch = max(c.max_batch_size for c in batches)
        max_inputs = max(limit, batch)
        dispatcher = make_dispatcher(raw, is_async=all(map(inspect.iscoroutinefunction, plain)), limit=limit)
        concurrent(max_inputs=max_inputs, target_inputs=min(max(target, batch), max_inputs))(dispatcher)
        return dispatcher, options

    @property
    def app_name(self) -> str:
        return self.app.name

    def _function(self) -> _Invocable[..., Any]:
        return self._fn

    def _gen_function(self) -> _Invocable[..., Any] | None:
        return self._gen_fn

    def _method(self, name: str) -> Callable[..., Any]:
        found = self._methods.get(name)
        if found is None:
            raise AttributeError(
                f"{self.name}.{name} is not a remote method; decorate it with @apothic.method() to call it remotely"
            )
        return found

    def __repr__(self) -> str:
        return f"Cls({self.app.name!r}, {self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Instance:
        """A new ephemeral instance constructed with these arguments (in its container, on
        its first call)."""
        inspect.signature(self.local_class).bind(*args, **kwargs)
        return Instance(self, f"ephemeral-{uuid.uuid4().hex}", _encode_params(args, kwargs))

    def named(self, name: str, *args: Any, **kwargs: Any) -> Instance:
        """The instance called ``name``: every handle with that name reaches the same live
        instance; the constructor arguments apply when it is first constructed."""
        if not isinstance(name, str) or not name:
            raise InvalidConfigError(f"an instance name must be a non-empty string, got {name!r}")
        inspect.signature(self.local_class).bind(*args, **kwargs)
        return Instance(self, f"named-{name}", _encode_params(args, kwargs))

    @staticmethod
    def from_name(app_name: str, class_name: str, *, client: ClientConfig | None = None) -> RemoteCls:
        """A deployed class by name, from any process."""
        return RemoteCls(app_name, class_name, client=client)

    @staticmethod
    def from_ref(ref: str, *, client: ClientConfig | None = None) -> Instance:
        """Reattaches to the instance :meth:`Instance.to_ref` named.

        Raises:
            InvalidConfigError: the string is not such a reference.
        """
        import cloudpickle

        try:
            doc = json.loads(ref)
            params = cloudpickle.loads(base64.b64decode(doc["params"]))
            app_name, cls_name, key = doc["app"], doc["cls"], doc["key"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfigError(f"not an instance reference ({exc})") from None
        return Instance(RemoteCls(app_name, cls_name, client=client), key, params)


class RemoteCls:
    """A deployed class looked up by name (``Cls.from_name``); methods are checked by the
    container, not here."""

    def __init__(self, app_name: str, class_name: str, *, client: ClientConfig | None = None) -> None:
        self.app_name = app_name
        self.name = class_name
        self._fn = RemoteFunction(app_name, class_name, client=client)
        self._gen_fn = RemoteFunction(app_name, class_name + GEN_SUFFIX, client=client)

    def __repr__(self) -> str:
        return f"RemoteCls({self.app_name!r}, {self.name!r})"

    def _function(self) -> _Invocable[..., Any]:
        return self._fn

    def _gen_function(self) -> _Invocable[..., Any] | None:
        # Whether the class has generator methods is known to its deployment only.
        return self._gen_fn

    def _method(self, name: str) -> None:
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Instance:
        """A new ephemeral instance of the deployed class."""
        return Instance(self, f"ephemeral-{uuid.uuid4().hex}", _encode_params(args, kwargs))

    def named(self, name: str, *args: Any, **kwargs: Any) -> Instance:
        """The deployed class's instance called ``name``."""
        return Instance(self, f"named-{name}", _encode_params(args, kwargs))
