"""Schedules: ``Cron`` and ``Period``, for ``@app.function(schedule=...)``.

A scheduled function runs on its own, once per tick, while its app is deployed; each run
is an ordinary job with no arguments. Both classes validate at construction, so a bad
schedule fails at decoration time, and both answer ``next_after(moment)``: the first tick
strictly after a moment, as an aware UTC datetime.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apothic.exceptions import InvalidConfigError

__all__ = ["Cron", "Period", "Schedule", "schedule_from_doc"]

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Days searched for the next matching date; covers a Feb 29 eight years ahead (2096 → 2104).
_SEARCH_DAYS = 366 * 9
#: Longer than any clock change, so a search just after one starts before it.
_DST_REACH = timedelta(hours=3)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    #: Offset of ``names[0]`` (months count from 1, weekdays from 0).
    names_from: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    # 7 is Sunday too, as in every cron.
    _Field("day-of-week", 0, 7, _DAYS, 0),
)


def _number(spec: _Field, text: str, where: str) -> int:
    upper = text.upper()
    if upper in spec.names:
        return spec.names.index(upper) + spec.names_from
    if not text.isdigit():
        known = f" (or a name: {', '.join(spec.names)})" if spec.names else ""
        raise InvalidConfigError(f"{where}: {text!r} is not a number from {spec.low} to {spec.high}{known}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise InvalidConfigError(f"{where}: {value} is out of range {spec.low}-{spec.high}")
    return value


def _parse_field(spec: _Field, text: str, expression: str) -> frozenset[int]:
    where = f"Cron expression {expression!r}, {spec.name} field {text!r}"
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise InvalidConfigError(f"{where}: empty list item")
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidConfigError(f"{where}: step {step_text!r} must be a whole number greater than zero")
            step = int(step_text)
        if body == "*":
            low, high = spec.low, spec.high
        elif "-" in body:
            first, _, last = body.partition("-")
            low, high = _number(spec, first, where), _number(spec, last, where)
            if low > high:
                raise InvalidConfigError(f"{where}: range {body!r} runs backwards ({low} > {high})")
        else:
            low = _number(spec, body, where)
            # "5/15" means from 5 to the end of the range, every 15.
            high = spec.high if slash else low
        values.update(range(low, high + 1, step))
    if spec.name == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """Runs at the times a standard five-field cron expression names, in a time zone.

    Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or ``JAN``-``DEC``),
    day of week (0-7, 0 and 7 are Sunday, or ``SUN``-``SAT``). Each takes ``*``, a value, a
    range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, and comma lists of those. The
    aliases ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly``
    (``@annually``) work too. When both day fields are restricted, a day matching either
    one matches, as in every cron.

    Times are wall-clock times in ``timezone``. When clocks go back, a repeated wall time
    fires once (its first occurrence), unless the hour field is ``*``, which keeps firing
    every hour of real time. When clocks go forward, a skipped wall time fires as soon as
    the clock jumps past it (``30 2 * * *`` runs at 03:30 that day), unless the hour field
    is ``*``.

    Example::

        @app.function(schedule=apothic.Cron("*/5 9-17 * * MON-FRI", timezone="Europe/Paris"))
        def poll() -> None: ...

    Args:
        expression: the cron expression.
        timezone: an IANA time zone name (``"America/New_York"``); UTC by default.

    Raises:
        InvalidConfigError: the expression does not parse or never matches a date, or the
            time zone is unknown; the message names the field and the value.
    """

    expression: str
    timezone: str = "UTC"
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _days: frozenset[int] = field(init=False, repr=False, compare=False)
    _months: frozenset[int] = field(init=False, repr=False, compare=False)
    _weekdays: frozenset[int] = field(init=False, repr=False, compare=False)
    _day_star: bool = field(init=False, repr=False, compare=False)
    _weekday_star: bool = field(init=False, repr=False, compare=False)
    _hour_star: bool = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise InvalidConfigError(f"Cron expression must be a string, got {self.expression!r}")
        if not isinstance(self.timezone, str) or not self.timezone:
            raise InvalidConfigError(f"Cron timezone must be an IANA time zone name, got {self.timezone!r}")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidConfigError(
                f"Cron timezone {self.timezone!r} is not a known IANA time zone (such as 'UTC' or 'Europe/Paris')"
            ) from None
        text = self.expression.strip()
        if text.startswith("@"):
            if text.lower() not in _ALIASES:
                raise InvalidConfigError(
                    f"Cron expression {self.expression!r}: unknown alias; use one of {', '.join(_ALIASES)}"
                )
            text = _ALIASES[text.lower()]
        parts = text.split()
        if len(parts) != len(_FIELDS):
            raise InvalidConfigError(
                f"Cron expression {self.expression!r} has {len(parts)} field(s); expected 5: "
                "minute hour day-of-month month day-of-week"
            )
        minutes, hours, days, months, weekdays = (
            _parse_field(spec, part, self.expression) for spec, part in zip(_FIELDS, parts, strict=True)
        )
        set_ = object.__setattr__
        set_(self, "_zone", zone)
        set_(self, "_minutes", tuple(sorted(minutes)))
        set_(self, "_hours", tuple(sorted(hours)))
        set_(self, "_days", days)
        set_(self, "_months", months)
        set_(self, "_weekdays", weekdays)
        set_(self, "_day_star", parts[2].startswith("*"))
        set_(self, "_weekday_star", parts[4].startswith("*"))
        set_(self, "_hour_star", parts[1] == "*")
        if self._next_wall(datetime(2000, 1, 1)) is None:
            raise InvalidConfigError(f"Cron expression {self.expression!r} never matches a date")

    def _day_matches(self, day: date) -> bool:
        if day.month not in self._months:
            return False
        in_month = day.day in self._days
        in_week = (day.isoweekday() % 7) in self._weekdays
        if self._day_star or self._weekday_star:
            return in_month and in_week
        return in_month or in_week

    def _next_wall(self, start: datetime) -> datetime | None:
        """The first matching wall time at or after ``start`` (naive, whole minute)."""
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                first = day == start.date()
                for hour in self._hours:
                    if first and hour < start.hour:
                        continue
                    for minute in self._minutes:
                        if first and hour == start.hour and minute < start.minute:
                            continue
                        return datetime.combine(day, time(hour, minute))
            day += timedelta(days=1)
        return None

    def _instants(self, wall: datetime) -> Iterator[datetime]:
        """The UTC instants a matching wall time fires at (none, one, or two around DST)."""
        early = wall.replace(tzinfo=self._zone)
        late = wall.replace(tzinfo=self._zone, fold=1)
        first = early.astimezone(UTC)
        skipped = first.astimezone(self._zone).replace(tzinfo=None) != wall
        if skipped:
            if not self._hour_star:
                yield first  # fold=0 of a skipped time: the same distance past the jump
            return
        yield first
        if self._hour_star and late.utcoffset() != early.utcoffset():
            yield late.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``.

        Args:
            moment: an aware datetime.

        Returns:
            The tick as an aware UTC datetime.

        Raises:
            ValueError: ``moment`` is naive.
        """
        if moment.tzinfo is None:
            raise ValueError("Cron.next_after needs an aware datetime (with a tzinfo)")
        # Start at the moment's own minute: around a repeated hour, its wall time may still
        # have a later instant to come. Just after a clock change, earlier wall times may
        # too (a skipped 02:20 fires at 03:20), so start before the change.
        start = moment
        if (moment - _DST_REACH).astimezone(self._zone).utcoffset() != moment.astimezone(self._zone).utcoffset():
            start = moment - _DST_REACH
        wall = start.astimezone(self._zone).replace(tzinfo=None, fold=0, second=0, microsecond=0)
        while True:
            found = self._next_wall(wall)
            if found is None:  # pragma: no cover - construction checked the expression matches
                raise ValueError(f"Cron expression {self.expression!r} has no tick after {moment.isoformat()}")
            for instant in self._instants(found):
                if instant > moment:
                    return instant
            wall = found + timedelta(minutes=1)

    def describe(self) -> str:
        """A short human description, e.g. ``cron '*/5 * * * *' (Europe/Paris)``."""
        return f"cron {self.expression!r} ({self.timezone})"

    def to_doc(self) -> dict[str, Any]:
        """A plain-JSON description (kept in the deployment's ``options_json``)."""
        return {"cron": {"expression": self.expression, "timezone": self.timezone}}


#: Where every Period's ticks are counted from unless told otherwise.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Period:
    """Runs every fixed interval of real time.

    The ticks of a deployed function are its deployment's creation time plus whole
    multiples of the interval: the first run comes one interval after the deploy, and a
    new deploy starts counting again.

    Example::

        @app.function(schedule=apothic.Period(minutes=15))
        def refresh() -> None: ...

    Args:
        days: days between runs.
        hours: hours between runs.
        minutes: minutes between runs.
        seconds: seconds between runs.

    Raises:
        InvalidConfigError: a part is not a finite number, or the interval is not greater
            than zero.
    """

    days: float = 0
    hours: float = 0
    minutes: float = 0
    seconds: float = 0

    def __post_init__(self) -> None:
        for name in ("days", "hours", "minutes", "seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidConfigError(f"Period {name} must be a finite number, got {value!r}")
            if value < 0:
                raise InvalidConfigError(f"Period {name} must be zero or more, got {value!r}")
        if self.total_seconds <= 0:
            raise InvalidConfigError("Period must be longer than zero: pass days=, hours=, minutes= or seconds=")

    @property
    def total_seconds(self) -> float:
        """The interval in seconds."""
        return float(self.days * 86400 + self.hours * 3600 + self.minutes * 60 + self.seconds)

    @property
    def interval(self) -> timedelta:
        """The interval as a timedelta."""
        return timedelta(seconds=self.total_seconds)

    def next_after(self, moment: datetime, *, anchor: datetime = _EPOCH) -> datetime:
        """The first tick strictly after ``moment``; ticks are ``anchor + n * interval``, n ≥ 1.

        Args:
            moment: an aware datetime.
            anchor: where ticks are counted from (a deployment's creation time).

        Returns:
            The tick as an aware UTC datetime.

        Raises:
            ValueError: ``moment`` or ``anchor`` is naive.
        """
        if moment.tzinfo is None or anchor.tzinfo is None:
            raise ValueError("Period.next_after needs aware datetimes (with a tzinfo)")
        step = self.interval
        if moment < anchor + step:
            return (anchor + step).astimezone(UTC)
        return (anchor + ((moment - anchor) // step + 1) * step).astimezone(UTC)

    def latest_at_or_before(self, moment: datetime, *, anchor: datetime = _EPOCH) -> datetime | None:
        """The last tick at or before ``moment``, or None when the first is still ahead."""
        step = self.interval
        if moment < anchor + step:
            return None
        return (anchor + ((moment - anchor) // step) * step).astimezone(UTC)

    def describe(self) -> str:
        """A short human description, e.g. ``every 1h 30m``."""
        left = self.total_seconds
        parts = []
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            count = int(left // size)
            if count:
                parts.append(f"{count}{unit}")
                left -= count * size
        if left or not parts:
            parts.append(f"{left:g}s")
        return "every " + " ".join(parts)

    def to_doc(self) -> dict[str, Any]:
        """A plain-JSON description (kept in the deployment's ``options_json``)."""
        return {"period": {"seconds": self.total_seconds}}


Schedule = Cron | Period


def schedule_from_doc(doc: dict[str, Any] | None) -> Schedule | None:
    """Rebuilds a schedule from :meth:`Cron.to_doc` / :meth:`Period.to_doc` output.

    Raises:
        InvalidConfigError: the description is not a valid schedule.
    """
    if not doc:
        return None
    if "cron" in doc:
        return Cron(doc["cron"]["expression"], timezone=doc["cron"].get("timezone") or "UTC")
    if "period" in doc:
        return Period(seconds=doc["period"]["seconds"])
    raise InvalidConfigError(f"unknown schedule {doc!r}; expected a cron or a period")
