"""Payload encoding shared by the SDK, the control plane and containers.

Arguments travel as a cloudpickle of ``(args, kwargs)`` or, for clients in other languages,
as JSON (an array of positional arguments or ``{"args": [...], "kwargs": {...}}``).
Results travel in the format the caller asked for.
"""

from __future__ import annotations

import inspect
import json
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from apothic.exceptions import RemoteError, RemoteTraceback, SerializationError

CLOUDPICKLE = "cloudpickle"
JSON = "json"
FORMATS = (CLOUDPICKLE, JSON)

#: Largest payload that travels inline in a message. Larger payloads are refused until
#: blob storage lands.
INLINE_LIMIT = 2 * 1024 * 1024


def _dumps(value: Any) -> bytes:
    """Plain pickle when it can stand in for cloudpickle (much faster), else cloudpickle.

    Plain pickle refers to functions and classes by module; that only fails remotely for
    ``__main__`` (which cloudpickle ships by value) or for what plain pickle refuses.
    """
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if b"__main__" in data:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def check_size(data: bytes, what: str) -> None:
    """Refuses a payload over the inline limit with an error that says what to do."""
    if len(data) > INLINE_LIMIT:
        raise SerializationError(
            f"{what} is {len(data):,} bytes, over the {INLINE_LIMIT:,}-byte inline payload "
            "limit; pass a reference instead (a file on a Volume, an object in a bucket)"
        )


def _argument_labels(func: Callable[..., Any] | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    names: list[str] = []
    if func is not None:
        try:
            params = list(inspect.signature(func).parameters.values())
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            names = []
    for i, value in enumerate(args):
        label = f"argument {names[i]!r} (position {i})" if i < len(names) else f"argument at position {i}"
        labels[label] = value
    for key, value in kwargs.items():
        labels[f"argument {key!r}"] = value
    return labels


def dumps_args(args: tuple, kwargs: dict, *, func: Callable[..., Any] | None = None) -> bytes:
    """Pickles call arguments.

    Raises:
        SerializationError: an argument cannot be pickled; the message names it.
    """
    try:
        data = _dumps((args, kwargs))
    except Exception as exc:
        for label, value in _argument_labels(func, args, kwargs).items():
            try:
                cloudpickle.dumps(value)
            except Exception as inner:
                raise SerializationError(
                    f"{label} of type {type(value).__name__} cannot be serialized: {inner}"
                ) from inner
        raise SerializationError(f"the call's arguments cannot be serialized: {exc}") from exc
    check_size(data, "the call's arguments")
    return data


def loads_args(fmt: str, data: bytes) -> tuple[tuple, dict]:
    """Decodes call arguments in either format.

    Raises:
        SerializationError: the bytes are not valid arguments in that format.
    """
    if fmt == JSON:
        try:
            value = json.loads(data or b"[]")
        except ValueError as exc:
            raise SerializationError(f"arguments are not valid JSON: {exc}") from exc
        if isinstance(value, list):
            return tuple(value), {}
        if isinstance(value, dict) and set(value) <= {"args", "kwargs"}:
            args, kwargs = value.get("args", []), value.get("kwargs", {})
            if isinstance(args, list) and isinstance(kwargs, dict):
                return tuple(args), kwargs
        raise SerializationError('JSON arguments must be an array or an object {"args": [...], "kwargs": {...}}')
    try:
        args, kwargs = pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"arguments could not be unpickled: {exc!r}") from exc
    return tuple(args), dict(kwargs)


def dumps_value(value: Any, fmt: str) -> bytes:
    """Encodes a return value in ``fmt``.

    Raises:
        SerializationError: the value cannot be encoded in that format.
    """
    try:
        if fmt == JSON:
            return json.dumps(value).encode()
        return _dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"the return value of type {type(value).__name__} cannot be serialized as {fmt}: {exc}"
        ) from exc


def loads_value(fmt: str, data: bytes) -> Any:
    """Decodes a return value.

    Raises:
        SerializationError: the bytes cannot be decoded (a class missing locally, say).
    """
    try:
        if fmt == JSON:
            return json.loads(data)
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"the result could not be deserialized: {exc!r}") from exc


@dataclass(frozen=True)
class ErrorInfo:
    """A remote exception in transportable form."""

    type: str
    message: str
    traceback: str
    pickled: bytes


def capture_exception(exc: BaseException) -> ErrorInfo:
    """Captures an exception raised by user code, traceback included."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = cloudpickle.dumps(exc)
        pickle.loads(pickled)
    except Exception:
        pickled = b""
    cls = type(exc)
    return ErrorInfo(
        type=f"{cls.__module__}.{cls.__qualname__}",
        message=str(exc),
        traceback=tb,
        pickled=pickled,
    )


def rebuild_exception(info: ErrorInfo, *, job_id: str = "") -> BaseException:
    """Re-creates a remote exception as its own type, with the remote traceback attached.

    Falls back to :class:`RemoteError` when the exception does not unpickle here.
    """
    if info.pickled:
        try:
            exc = pickle.loads(info.pickled)
        except Exception:
            exc = None
        # SystemExit and friends would end the caller's program: they come back as RemoteError.
        if isinstance(exc, Exception):
            exc.__cause__ = RemoteTraceback(info.traceback)
            try:
                exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
            except AttributeError:
                pass
            return exc
    return RemoteError(
        f"{info.type}: {info.message}",
        job_id=job_id,
        remote_type=info.type,
        remote_traceback=info.traceback,
    )
