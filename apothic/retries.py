"""``Retries``: how a function's failed attempts are retried."""

from __future__ import annotations

import math
from dataclasses import dataclass

from apothic.exceptions import InvalidConfigError


@dataclass(frozen=True)
class Retries:
    """Retry policy: up to ``max_retries`` more attempts, with exponential backoff.

    The delay before retry *n* (1-based) is
    ``min(initial_delay * backoff_coefficient ** (n - 1), max_delay)`` seconds. A retry is a
    new attempt of the same job, visible in its events (``job.running`` with the attempt
    number).

    Args:
        max_retries: attempts after the first (0-10).
        initial_delay: seconds before the first retry.
        backoff_coefficient: growth of the delay between retries (1.0-10.0).
        max_delay: longest delay, in seconds.

    Raises:
        InvalidConfigError: a value is out of range.
    """

    max_retries: int
    initial_delay: float = 1.0
    backoff_coefficient: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or not 0 <= self.max_retries <= 10
        ):
            raise InvalidConfigError(f"Retries.max_retries must be an integer from 0 to 10, got {self.max_retries!r}")
        for name, low, high in (("initial_delay", 0.0, 3600.0), ("max_delay", 0.0, 3600.0)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
                raise InvalidConfigError(f"Retries.{name} must be {low:g} to {high:g} seconds, got {value!r}")
        coef = self.backoff_coefficient
        if not isinstance(coef, int | float) or not 1.0 <= coef <= 10.0:
            raise InvalidConfigError(f"Retries.backoff_coefficient must be from 1.0 to 10.0, got {coef!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return float(min(self.initial_delay * self.backoff_coefficient ** (retry - 1), self.max_delay))


def as_retries(value: int | Retries | None) -> Retries | None:
    """Normalizes ``retries=`` (an int means that many retries with the default backoff)."""
    if value is None or isinstance(value, Retries):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(f"retries must be an int or apothic.Retries, got {value!r}")
    return Retries(max_retries=value)
