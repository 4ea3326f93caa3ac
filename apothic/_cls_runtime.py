"""Inside a container: the instances of an ``@app.cls`` class, their lifecycle, and the
batching of their ``@batched`` methods.

A class deploys as one function, its *dispatcher*: every method call arrives as
``dispatch(header, *args, **kwargs)`` where the header names the instance (its key and
constructor arguments) and the method. The first call for an instance constructs it and
runs its ``@enter`` methods; later calls reuse it, so its state lives as long as the
container. When the container stops (scale-down, the app stopped, SIGTERM), every live
instance's ``@exit`` methods run once. An ``@enter`` that raises fails that call and
leaves no instance behind: the next call constructs it afresh. A terminated instance
refuses calls for the rest of the container's life. An async dispatcher (an all-async
class) awaits async ``@enter`` methods, and ``@exit`` ones on ``terminate()``, on the
container's event loop, where the instance's methods run.

Generator methods. The control plane streams items only from a function declared a
generator (its spec's ``is_generator``), and refuses ``remote()``/``spawn``/``map`` on
one, so a class with generator methods deploys a second dispatcher,
``<Class>__gen`` (see :func:`make_gen_dispatcher`), that is a generator itself and
serves only those methods. It runs in containers of its own, so an instance used by
both kinds of method has two copies: one in each dispatcher's containers, each built
with the same constructor arguments and its own ``@enter`` (as with several containers).

``@batched`` methods. The container runs the dispatcher with enough concurrent inputs
for a batch to form (``apothic.cls`` raises the dispatcher's concurrency to the largest
``max_batch_size``). Each call of a batched method hands its arguments to the
:class:`_Batcher` of its (instance, method) and waits: the batcher collects calls until
``max_batch_size`` are waiting or ``wait_ms`` passed since the oldest arrived, calls the
method once with a list per parameter, and hands each caller its element of the list
returned. A result of the wrong length, or an exception, fails every caller of that
batch. Calls group only with calls that pass the same parameters (positionally or by
keyword); the others wait for the next batch. Batches of one method of one instance run
one at a time.

Because the container then takes more inputs at once than the class asked for, a
*gate* keeps the class's own limit on method bodies: at most ``@concurrent``'s
``max_inputs`` (or ``concurrent_requests``; one by default) run at once, a whole batch
counting as one. A class without ``@concurrent`` therefore still runs one method body at
a time, as it would without ``@batched``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from apothic.concurrency import BATCHED_ATTR, BatchedConfig

#: Marks ``@enter`` / ``@exit`` / ``@method`` functions (the value: the kind).
LIFECYCLE_ATTR = "__apothic_lifecycle__"
ENTER, EXIT, METHOD = "enter", "exit", "method"
#: The method name a handle's ``terminate()`` calls.
TERMINATE = "__apothic_terminate__"
#: The name suffix of a class's generator dispatcher.
GEN_SUFFIX = "__gen"

_lock = threading.RLock()
_instances: dict[tuple[str, str], Any] = {}
_terminated: set[tuple[str, str]] = set()
_batchers: dict[tuple[str, str, str], _Batcher] = {}
#: Instances an async dispatcher is constructing (their ``@enter`` awaited on its loop).
_constructing: dict[tuple[str, str], asyncio.Future[None]] = {}
_sigterm_installed = False


class InstanceTerminatedError(RuntimeError):
    """The instance was terminated; it takes no more calls."""


def lifecycle(func: Any) -> str | None:
    """``enter``, ``exit`` or ``method`` for a marked function, else None. A ``@batched``
    function is a method even without ``@method()`` (as with Modal's ``@modal.batched``)."""
    kind = getattr(func, LIFECYCLE_ATTR, None)
    if kind is None and callable(func) and hasattr(func, BATCHED_ATTR):
        return METHOD
    return kind


def is_generator(func: Any) -> bool:
    """Whether a method is a generator (sync or async)."""
    return inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)


def marked(cls: type, kind: str) -> list[str]:
    """Names of ``cls``'s functions marked ``kind``, in definition order (bases first)."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if lifecycle(value) == kind and name not in names:
                names.append(name)
    return names


def _run(result: Any) -> Any:
    """The value of a call, awaiting it when it is a coroutine (sync dispatcher)."""
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _install_sigterm() -> None:
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        run_exit_hooks()
        if callable(previous):
            previous(signum, frame)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_installed = True


def _live_instance(cls: type, key: str) -> Any:
    """The instance ``key`` of ``cls`` when it is constructed, else None (hold ``_lock``).

    Raises:
        InstanceTerminatedError: it was terminated.
    """
    ident = (cls.__qualname__, key)
    if ident in _terminated:
        raise InstanceTerminatedError(f"instance {key!r} of {cls.__name__} was terminated; create a new one")
    return _instances.get(ident)


def _instance(cls: type, key: str, params: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    ident = (cls.__qualname__, key)
    with _lock:
        inst = _live_instance(cls, key)
        if inst is not None:
            return inst
        args, kwargs = params
        inst = cls(*args, **kwargs)
        for name in marked(cls, ENTER):
            _run(getattr(inst, name)())  # raises: nothing is kept, the next call starts afresh
        _instances[ident] = inst
        _install_sigterm()
        return inst


async def _instance_async(cls: type, key: str, params: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """:func:`_instance` for async dispatchers: async ``@enter`` methods are awaited on the
    container's event loop (where the instance's methods will run), one construction at a
    time per instance."""
    ident = (cls.__qualname__, key)
    while True:
        with _lock:
            inst = _live_instance(cls, key)
            if inst is not None:
                return inst
            waiting = _constructing.get(ident)
            if waiting is None:
                done = _constructing[ident] = asyncio.get_running_loop().create_future()
                break
        await asyncio.shield(waiting)  # then look again: constructed, or failed and ours to retry
    try:
        args, kwargs = params
        inst = cls(*args, **kwargs)
        for name in marked(cls, ENTER):
            result = getattr(inst, name)()
            if inspect.isawaitable(result):
                await result  # raises: nothing is kept, the next call starts afresh
        with _lock:
            _instances[ident] = inst
        return inst
    finally:
        with _lock:
            _constructing.pop(ident, None)
        done.set_result(None)


def _exit_instance(inst: Any) -> list[str]:
    errors = []
    for name in marked(type(inst), EXIT):
        try:
            _run(getattr(inst, name)())
        except Exception as exc:  # noqa: BLE001 - every exit hook runs; failures are reported
            errors.append(f"{type(inst).__name__}.{name}: {type(exc).__name__}: {exc}")
    return errors


def run_exit_hooks() -> list[str]:
    """Runs every live instance's ``@exit`` methods once (the container is stopping);
    returns the errors they raised."""
    with _lock:
        live = list(_instances.items())
        _instances.clear()
    errors = []
    for _, inst in live:
        errors += _exit_instance(inst)
    return errors


def _drop(cls: type, key: str) -> Any:
    """Marks an instance terminated; the live instance, if any, for its ``@exit``."""
    ident = (cls.__qualname__, key)
    with _lock:
        inst = _instances.pop(ident, None)
        _terminated.add(ident)
        for batcher_key in [k for k in _batchers if k[:2] == ident]:
            del _batchers[batcher_key]  # its thread ends once its pending calls are done
    return inst


def _terminate(cls: type, key: str) -> list[str]:
    inst = _drop(cls, key)
    return _exit_instance(inst) if inst is not None else []


async def _terminate_async(cls: type, key: str) -> list[str]:
    """:func:`_terminate` awaiting async ``@exit`` methods on the running loop."""
    inst = _drop(cls, key)
    errors: list[str] = []
    for name in marked(cls, EXIT) if inst is not None else []:
        try:
            result = getattr(inst, name)()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - every exit hook runs; failures are reported
            errors.append(f"{cls.__name__}.{name}: {type(exc).__name__}: {exc}")
    return errors


def _target(cls: type, method: str, *, streaming: bool) -> Any:
    """The ``@method`` function a call names.

    Raises:
        AttributeError: the name is not a ``@method`` of the class.
        TypeError: a generator method called for a value, or the other way round.
    """
    target = inspect.getattr_static(cls, method, None)
    if lifecycle(target) != METHOD:
        raise AttributeError(
            f"{cls.__name__}.{method} is not a remote method; decorate it with @apothic.method() to call it remotely"
        )
    if is_generator(target) and not streaming:
        raise TypeError(f"{cls.__name__}.{method} is a generator method: iterate over its items with .remote_gen(...)")
    if streaming and not is_generator(target):
        raise TypeError(f"{cls.__name__}.{method} is not a generator method; call it with .remote(...)")
    return target


def call(cls: type, header: tuple[str, Any, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs one (non-batched, non-generator) method call on its instance (constructed on
    first use); what the method returned (a coroutine for an async method).

    Raises:
        AttributeError: the method is not a ``@method`` of the class.
        TypeError: the method is a generator method.
        InstanceTerminatedError: the instance was terminated.
    """
    key, params, method = header
    if method == TERMINATE:
        return _terminate(cls, key)
    _target(cls, method, streaming=False)
    return getattr(_instance(cls, key, params), method)(*args, **kwargs)


# -- the gate: the class's own limit on method bodies ---------------------------------


class _Gate:
    """At most ``limit`` method bodies at once (a batch counts as one); no limit when
    ``limit`` is None (the container's concurrency already is the class's)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit) if limit is not None else None
        self._async_sem: asyncio.Semaphore | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Gate, (self.limit,))  # it ships inside the dispatcher: a fresh one per container

    def run(self, body: Callable[[], Any]) -> Any:
        """Runs a body in this thread (its coroutine, if any, on a fresh event loop)."""
        if self._sem is None:
            return _run(body())
        with self._sem:
            return _run(body())

    async def run_async(self, body: Callable[[], Any]) -> Any:
        """Runs a body on the running event loop."""
        if self.limit is None:
            result = body()
            return await result if inspect.isawaitable(result) else result
        if self._async_sem is None:
            self._async_sem = asyncio.Semaphore(self.limit)  # the container has one loop
        async with self._async_sem:
            result = body()
            return await result if inspect.isawaitable(result) else result


# -- batching ---------------------------------------------------------------------------


@dataclass
class _Pending:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, tuple[str, ...]]
    context: contextvars.Context
    arrived: float = field(default_factory=time.monotonic)
    future: Future[Any] = field(default_factory=Future)


class _Batcher:
    """The calls of one ``@batched`` method of one instance, grouped and run a batch at
    a time by a thread that lives while calls are waiting."""

    def __init__(
        self, name: str, bound: Callable[..., Any], config: BatchedConfig, execute: Callable[..., Any]
    ) -> None:
        self.name = name
        self.bound = bound
        self.config = config
        #: ``execute(body, context)`` runs a batch's body (through the class's gate).
        self.execute = execute
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._running = False
        try:
            self._signature: inspect.Signature | None = inspect.signature(bound)
        except (TypeError, ValueError):
            self._signature = None

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        """Queues one call; its future gets the caller's element of the batch's result.

        Raises:
            TypeError: the arguments do not fit the method's signature.
        """
        args, kwargs = self._by_name(args, kwargs)
        call = _Pending(args, kwargs, (len(args), tuple(sorted(kwargs))), contextvars.copy_context())
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name=f"apothic-batch-{self.name}", daemon=True).start()
        return call.future

    def _by_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments keyed by parameter name, so that callers passing the same
        parameters positionally or by keyword share a batch (as plain batched functions)."""
        if self._signature is None:
            return args, kwargs
        kinds = {p.kind for p in self._signature.parameters.values()}
        bound = self._signature.bind(*args, **kwargs)  # TypeError: the caller's own mistake
        if not kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}:
            return args, kwargs  # *args, **kwargs or positional-only: keep the call's own shape
        return (), dict(bound.arguments)

    def _take(self) -> list[_Pending] | None:
        """Waits for the next batch (None: nothing waits, the thread ends)."""
        wait_s = self.config.wait_ms / 1000
        with self._cond:
            while True:
                if not self._pending:
                    self._running = False
                    return None
                shape = self._pending[0].shape
                same = [c for c in self._pending if c.shape == shape]
                left = self._pending[0].arrived + wait_s - time.monotonic()
                if len(same) >= self.config.max_batch_size or left <= 0:
                    batch = same[: self.config.max_batch_size]
                    taken = {id(c) for c in batch}
                    self._pending = [c for c in self._pending if id(c) not in taken]
                    return batch
                self._cond.wait(left)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            # A caller cancelled while waiting (an async input timed out) drops out.
            batch = [c for c in batch if c.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        npos = len(batch[0].args)
        columns = [[c.args[i] for c in batch] for i in range(npos)]
        lists = {name: [c.kwargs[name] for c in batch] for name in batch[0].kwargs}
        try:
            # Output during the batch is attributed to its first input.
            values = self.execute(lambda: self.bound(*columns, **lists), batch[0].context)
            try:
                values = list(values)
            except TypeError:
                raise TypeError(
                    f"@batched method {self.name} returned {type(values).__name__}; it must return a list "
                    f"with one result per input, in order"
                ) from None
            if len(values) != len(batch):
                raise ValueError(
                    f"@batched method {self.name} returned {len(values)} results for a batch of {len(batch)} "
                    f"inputs; it must return one result per input, in order"
                )
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the failure
            for c in batch:
                c.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for c, value in zip(batch, values, strict=True):
            c.future.set_result(value)


def _batcher(
    cls: type, key: str, inst: Any, method: str, config: BatchedConfig, execute: Callable[..., Any]
) -> _Batcher:
    ident = (cls.__qualname__, key, method)
    with _lock:
        found = _batchers.get(ident)
        if found is None:
            found = _batchers[ident] = _Batcher(f"{cls.__name__}.{method}", getattr(inst, method), config, execute)
        return found


# -- dispatchers ------------------------------------------------------------------------


def make_dispatcher(cls: type, *, is_async: bool, limit: int | None = None) -> Callable[..., Any]:
    """The function a class deploys as (async when every method is, so calls can interleave
    and be cancelled in place).

    Args:
        cls: the user's class.
        is_async: build an async dispatcher.
        limit: method bodies allowed at once when the container takes more inputs than
            the class asked for (it has ``@batched`` methods); None: no gate.
    """
    gate = _Gate(limit)

    def batched_call(header: tuple[str, Any, str], execute: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """A batched call's future, or None when the call is not of a batched method."""
        key, params, method = header
        if method == TERMINATE:
            return None
        target = _target(cls, method, streaming=False)
        config = getattr(target, BATCHED_ATTR, None)
        if config is None:
            return None
        inst = _instance(cls, key, params)
        return _batcher(cls, key, inst, method, config, execute).submit(args, kwargs)

    if is_async:

        async def dispatch_async(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> Any:
            if header[2] == TERMINATE:
                return await _terminate_async(cls, header[0])
            _target(cls, header[2], streaming=False)
            await _instance_async(cls, header[0], header[1])  # the calls below find it built
            loop = asyncio.get_running_loop()

            def execute(body: Callable[[], Any], context: contextvars.Context) -> Any:
                coro = gate.run_async(body)
                return context.run(asyncio.run_coroutine_threadsafe, coro, loop).result()

            future = batched_call(header, execute, args, kwargs)
            if future is not None:
                return await asyncio.wrap_future(future)
            return await gate.run_async(lambda: call(cls, header, args, kwargs))

        dispatch_async.__name__ = dispatch_async.__qualname__ = f"{cls.__name__}_dispatch"
        return dispatch_async

    def execute_sync(body: Callable[[], Any], context: contextvars.Context) -> Any:
        return context.run(gate.run, body)

    def dispatch(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> Any:
        future = batched_call(header, execute_sync, args, kwargs)
        if future is not None:
            return future.result()
        return gate.run(lambda: call(cls, header, args, kwargs))

    dispatch.__name__ = dispatch.__qualname__ = f"{cls.__name__}_dispatch"
    return dispatch


def _stream(cls: type, header: tuple[str, Any, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A generator method's generator (or async generator) on its instance; None for a
    terminate."""
    key, params, method = header
    if method == TERMINATE:
        _terminate(cls, key)
        return None
    _target(cls, method, streaming=True)
    return getattr(_instance(cls, key, params), method)(*args, **kwargs)


def _drain_async(agen: Any) -> Iterator[Any]:
    """An async generator's items, from sync code (a sync generator dispatcher)."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                item = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def make_gen_dispatcher(cls: type, *, is_async: bool) -> Callable[..., Any]:
    """The generator function a class's generator methods deploy as (an async generator
    when every generator method is one)."""

    if is_async:

        async def dispatch_gen_async(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            if header[2] == TERMINATE:
                await _terminate_async(cls, header[0])
                return
            _target(cls, header[2], streaming=True)
            await _instance_async(cls, header[0], header[1])  # _stream finds it built
            items = _stream(cls, header, args, kwargs)
            if items is None:
                return
            if inspect.isasyncgen(items):
                async for item in items:
                    yield item
            else:
                for item in items:
                    yield item

        dispatch_gen_async.__name__ = dispatch_gen_async.__qualname__ = f"{cls.__name__}{GEN_SUFFIX}"
        return dispatch_gen_async

    def dispatch_gen(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = _stream(cls, header, args, kwargs)
        if items is None:
            return
        yield from _drain_async(items) if inspect.isasyncgen(items) else items

    dispatch_gen.__name__ = dispatch_gen.__qualname__ = f"{cls.__name__}{GEN_SUFFIX}"
    return dispatch_gen
