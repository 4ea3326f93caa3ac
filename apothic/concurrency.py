"""``@concurrent`` and ``@batched``: how one container runs several inputs.

Apply them under ``@app.function``::

    @app.function()
    @apothic.concurrent(max_inputs=20)
    async def fetch(url: str) -> int: ...

    @app.function()
    @apothic.batched(max_batch_size=32, wait_ms=10)
    def embed(texts: list[str]) -> list[list[float]]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from apothic.exceptions import InvalidConfigError

F = TypeVar("F", bound=Callable[..., Any])

CONCURRENT_ATTR = "__apothic_concurrent__"
BATCHED_ATTR = "__apothic_batched__"


@dataclass(frozen=True)
class ConcurrentConfig:
    max_inputs: int
    target_inputs: int


@dataclass(frozen=True)
class BatchedConfig:
    max_batch_size: int
    wait_ms: float


def _positive_int(what: str, value: Any, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidConfigError(f"{what} must be an integer from 1 to {high}, got {value!r}")


def concurrent(*, max_inputs: int, target_inputs: int | None = None) -> Callable[[F], F]:
    """Lets one container run up to ``max_inputs`` inputs at once.

    Async functions run as tasks on the container's event loop; sync functions run in
    threads. The autoscaler adds containers once each has ``target_inputs`` inputs.

    Raises:
        InvalidConfigError: a limit is out of range, or ``target_inputs > max_inputs``.
    """
    _positive_int("@concurrent max_inputs", max_inputs, 1000)
    target = max_inputs if target_inputs is None else target_inputs
    _positive_int("@concurrent target_inputs", target, 1000)
    if target > max_inputs:
        raise InvalidConfigError(f"@concurrent target_inputs ({target}) exceeds max_inputs ({max_inputs})")

    def decorate(func: F) -> F:
        if hasattr(func, BATCHED_ATTR):
            raise InvalidConfigError("a function cannot be both @concurrent and @batched")
        setattr(func, CONCURRENT_ATTR, ConcurrentConfig(max_inputs, target))
        return func

    return decorate


def batched(*, max_batch_size: int, wait_ms: float) -> Callable[[F], F]:
    """Groups single calls into batches: callers pass one input, the function receives a
    list per parameter and returns a list with one result per input.

    A batch is handed over once ``max_batch_size`` inputs are waiting, or ``wait_ms`` after
    the first one arrived.

    Raises:
        InvalidConfigError: a limit is out of range.
    """
    _positive_int("@batched max_batch_size", max_batch_size, 1000)
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int | float) or not 0 <= wait_ms <= 10 * 60_000:
        raise InvalidConfigError(f"@batched wait_ms must be from 0 to 600000, got {wait_ms!r}")

    def decorate(func: F) -> F:
        if hasattr(func, CONCURRENT_ATTR):
            raise InvalidConfigError("a function cannot be both @concurrent and @batched")
        setattr(func, BATCHED_ATTR, BatchedConfig(max_batch_size, float(wait_ms)))
        return func

    return decorate
