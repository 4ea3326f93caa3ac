"""Inside a container: the instances of an ``@app.cls`` class and their lifecycle.

A class deploys as one function, its *dispatcher*: every method call arrives as
``dispatch(header, *args, **kwargs)`` where the header names the instance (its key and
constructor arguments) and the method. The first call for an instance constructs it and
runs its ``@enter`` methods; later calls reuse it, so its state lives as long as the
container. When the container stops (scale-down, the app stopped, SIGTERM), every live
instance's ``@exit`` methods run once. An ``@enter`` that raises fails that call and
leaves no instance behind: the next call constructs it afresh. A terminated instance
refuses calls for the rest of the container's life.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Marks ``@enter`` / ``@exit`` / ``@method`` functions (the value: the kind).
LIFECYCLE_ATTR = "__apothic_lifecycle__"
ENTER, EXIT, METHOD = "enter", "exit", "method"
#: The method name a handle's ``terminate()`` calls.
TERMINATE = "__apothic_terminate__"

_lock = threading.RLock()
_instances: dict[tuple[str, str], Any] = {}
_terminated: set[tuple[str, str]] = set()
_sigterm_installed = False


class InstanceTerminatedError(RuntimeError):
    """The instance was terminated; it takes no more calls."""


def lifecycle(func: Any) -> str | None:
    """``enter``, ``exit`` or ``method`` for a marked function, else None."""
    return getattr(func, LIFECYCLE_ATTR, None)


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


def _instance(cls: type, key: str, params: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    ident = (cls.__qualname__, key)
    with _lock:
        if ident in _terminated:
            raise InstanceTerminatedError(f"instance {key!r} of {cls.__name__} was terminated; create a new one")
        inst = _instances.get(ident)
        if inst is not None:
            return inst
        args, kwargs = params
        inst = cls(*args, **kwargs)
        for name in marked(cls, ENTER):
            _run(getattr(inst, name)())  # raises: nothing is kept, the next call starts afresh
        _instances[ident] = inst
        _install_sigterm()
        return inst


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


def call(cls: type, header: tuple[str, Any, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs one method call on its instance (constructed on first use).

    Raises:
        AttributeError: the method is not a ``@method`` of the class.
        InstanceTerminatedError: the instance was terminated.
    """
    key, params, method = header
    if method == TERMINATE:
        ident = (cls.__qualname__, key)
        with _lock:
            inst = _instances.pop(ident, None)
            _terminated.add(ident)
        return _exit_instance(inst) if inst is not None else []
    target = inspect.getattr_static(cls, method, None)
    if lifecycle(target) != METHOD:
        raise AttributeError(
            f"{cls.__name__}.{method} is not a remote method; decorate it with @apothic.method() to call it remotely"
        )
    return getattr(_instance(cls, key, params), method)(*args, **kwargs)


def make_dispatcher(cls: type, *, is_async: bool) -> Callable[..., Any]:
    """The function a class deploys as (async when every method is, so calls can interleave
    and be cancelled in place)."""

    if is_async:

        async def dispatch_async(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> Any:
            result = call(cls, header, args, kwargs)
            return await result if inspect.isawaitable(result) else result

        dispatch_async.__name__ = dispatch_async.__qualname__ = f"{cls.__name__}_dispatch"
        return dispatch_async

    def dispatch(header: tuple[str, Any, str], /, *args: Any, **kwargs: Any) -> Any:
        return _run(call(cls, header, args, kwargs))

    dispatch.__name__ = dispatch.__qualname__ = f"{cls.__name__}_dispatch"
    return dispatch
