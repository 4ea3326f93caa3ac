"""Where a function may run: its placement options as offer filters, and one evaluator.

Every named placement option of ``@app.function`` becomes a filter on a worker's offer
(``cpu=2`` → ``cpu_cores >= 2``, ``memory_mb``, ``disk_mb``, ``gpu="A100:2"``, ``region``,
``arch``, ``max_cost_per_hour``, ``verified``, ``labels``), joined by the function's own
``offer_filters`` (``(field, op, value)``; a field is an offer key or ``labels.<key>``).
:func:`unmet` decides whether a worker may run the function, both for new containers and
for reusing a worker; the scheduler fails a function's waiting inputs at once, naming the
unmet filter, when workers are connected and none of them satisfies it.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "lt": operator.lt,
    "gte": operator.ge,
    "lte": operator.le,
    "in": lambda have, want: have in want,
    "notin": lambda have, want: have not in want,
}
_SYMBOLS = {"eq": "==", "neq": "!=", "gt": ">", "lt": "<", "gte": ">=", "lte": "<=", "in": "in", "notin": "not in"}


@dataclass(frozen=True)
class OfferFilter:
    """One condition on a worker's offer."""

    field: str
    op: str
    value: Any

    def __str__(self) -> str:
        return f"{self.field} {_SYMBOLS.get(self.op, self.op)} {self.value!r}"


def _gpu_filter(spec: str) -> OfferFilter:
    name, _, count = spec.partition(":")
    return OfferFilter("gpu", "gte", f"{name.strip() or 'any'}:{int(count) if count.strip().isdigit() else 1}")


def function_filters(options_json: str) -> tuple[OfferFilter, ...]:
    """The offer filters of a function, from the options it was deployed with."""
    try:
        opts = json.loads(options_json or "{}")
    except ValueError:
        return ()
    if not isinstance(opts, dict):
        return ()
    out: list[OfferFilter] = []
    for option, field, op in (
        ("cpu", "cpu_cores", "gte"),
        ("memory_mb", "memory_mb", "gte"),
        ("disk_mb", "disk_mb", "gte"),
        ("region", "region", "eq"),
        ("arch", "arch", "eq"),
        ("max_cost_per_hour", "cost_per_hour", "lte"),
        ("verified", "verified", "eq"),
    ):
        if opts.get(option) is not None:
            out.append(OfferFilter(field, op, opts[option]))
    if opts.get("gpu"):
        out.append(_gpu_filter(str(opts["gpu"])))
    for key, value in sorted((opts.get("labels") or {}).items()):
        out.append(OfferFilter(f"labels.{key}", "eq", value))
    for item in opts.get("offer_filters") or ():
        if isinstance(item, (list, tuple)) and len(item) == 3 and item[1] in _OPS:
            out.append(OfferFilter(str(item[0]), str(item[1]), item[2]))
    return tuple(out)


def _gpu_ok(offer: Mapping[str, Any], want: str) -> bool:
    name, _, count = want.partition(":")
    needed = int(count or 1)
    for gpu in offer.get("gpus") or ():
        if (name.lower() == "any" or name.lower() in str(gpu.get("name", "")).lower()) and gpu.get(
            "count", 0
        ) >= needed:
            return True
    return False


def _value(offer: Mapping[str, Any], field: str) -> Any:
    if field.startswith("labels."):
        return (offer.get("labels") or {}).get(field.removeprefix("labels."))
    return offer.get(field)


def satisfies(f: OfferFilter, offer: Mapping[str, Any]) -> bool:
    """Whether ``offer`` meets one filter (a missing field never does, except for ``neq``/``notin``)."""
    if f.field == "gpu":
        return _gpu_ok(offer, str(f.value))
    have = _value(offer, f.field)
    if have is None:
        return f.op in ("neq", "notin")
    try:
        return bool(_OPS[f.op](have, f.value))
    except TypeError:
        return False


def unmet(filters: tuple[OfferFilter, ...], offer: Mapping[str, Any]) -> OfferFilter | None:
    """The first filter ``offer`` does not meet, or None when the worker may run the function."""
    for f in filters:
        if not satisfies(f, offer):
            return f
    return None


def describe_offer(f: OfferFilter, offer: Mapping[str, Any]) -> str:
    """What a worker offers for the field a filter looks at (for error messages)."""
    if f.field == "gpu":
        gpus = offer.get("gpus") or []
        return ", ".join(f"{g.get('count')}x {g.get('name')}" for g in gpus) or "no GPUs"
    return repr(_value(offer, f.field))
