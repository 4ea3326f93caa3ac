"""``Cron`` and ``Period``: parsing, errors, next ticks across DST and month ends, and the
``schedule=`` option of ``@app.function``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import apothic
from apothic._client import schedule_to_pb
from apothic.exceptions import InvalidConfigError

NEW_YORK = ZoneInfo("America/New_York")


def _ticks(schedule: apothic.Cron, start: datetime, count: int) -> list[datetime]:
    out = []
    for _ in range(count):
        start = schedule.next_after(start)
        out.append(start)
    return out


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", _utc(2024, 1, 1, 0, 0, 30), _utc(2024, 1, 1, 0, 1)),
        ("*/15 * * * *", _utc(2024, 1, 1, 0, 15), _utc(2024, 1, 1, 0, 30)),
        ("5/20 * * * *", _utc(2024, 1, 1, 0, 6), _utc(2024, 1, 1, 0, 25)),
        ("0 9-17/4 * * *", _utc(2024, 1, 1, 9, 0), _utc(2024, 1, 1, 13, 0)),
        ("0,30 12 * * *", _utc(2024, 1, 1, 12, 0), _utc(2024, 1, 1, 12, 30)),
        ("0 12 * * MON-FRI", _utc(2024, 1, 5, 13, 0), _utc(2024, 1, 8, 12, 0)),  # Friday -> Monday
        ("0 0 * * 7", _utc(2024, 1, 1), _utc(2024, 1, 7)),  # 7 is Sunday
        ("0 0 * * sun", _utc(2024, 1, 1), _utc(2024, 1, 7)),
        ("0 0 1 jan,JUL *", _utc(2024, 1, 1), _utc(2024, 7, 1)),
        ("0 0 13 * FRI", _utc(2024, 1, 1), _utc(2024, 1, 5)),  # both day fields: either matches
        ("@hourly", _utc(2024, 1, 1, 10, 59), _utc(2024, 1, 1, 11, 0)),
        ("@daily", _utc(2024, 1, 1, 10), _utc(2024, 1, 2)),
        ("@weekly", _utc(2024, 1, 1), _utc(2024, 1, 7)),
        ("@monthly", _utc(2024, 1, 15), _utc(2024, 2, 1)),
        ("@yearly", _utc(2024, 1, 1), _utc(2025, 1, 1)),
        ("0 0 29 2 *", _utc(2024, 3, 1), _utc(2028, 2, 29)),
    ],
)
def test_next_after(expression: str, after: datetime, expected: datetime) -> None:
    assert apothic.Cron(expression).next_after(after) == expected


def test_month_ends() -> None:
    cron = apothic.Cron("0 0 31 * *")
    assert _ticks(cron, _utc(2024, 1, 1), 4) == [
        _utc(2024, 1, 31),
        _utc(2024, 3, 31),
        _utc(2024, 5, 31),
        _utc(2024, 7, 31),
    ]
    last_of_feb = apothic.Cron("0 6 28-29 2 *")
    assert _ticks(last_of_feb, _utc(2023, 2, 28, 7), 3) == [
        _utc(2024, 2, 28, 6),
        _utc(2024, 2, 29, 6),
        _utc(2025, 2, 28, 6),
    ]
    year_end = apothic.Cron("59 23 31 12 *")
    assert year_end.next_after(_utc(2024, 12, 31, 23, 59)) == _utc(2025, 12, 31, 23, 59)


def test_timezone_shifts_ticks() -> None:
    cron = apothic.Cron("0 9 * * *", timezone="Asia/Tokyo")
    assert cron.next_after(_utc(2024, 1, 1, 1)) == _utc(2024, 1, 2, 0)  # 09:00 JST is 00:00 UTC
    naive = datetime(2024, 1, 1)
    with pytest.raises(ValueError, match="aware"):
        cron.next_after(naive)


def test_spring_forward_runs_a_skipped_time_once_after_the_jump() -> None:
    # 2024-03-10: New York clocks jump from 02:00 to 03:00.
    daily = apothic.Cron("30 2 * * *", timezone="America/New_York")
    local = [t.astimezone(NEW_YORK) for t in _ticks(daily, _utc(2024, 3, 9, 12), 3)]
    assert [(t.day, t.hour, t.minute) for t in local] == [(10, 3, 30), (11, 2, 30), (12, 2, 30)]
    # With every hour scheduled, real time keeps one run per hour: the skipped hour has none.
    hourly = apothic.Cron("30 * * * *", timezone="America/New_York")
    ticks = _ticks(hourly, _utc(2024, 3, 10, 6), 3)
    assert [t.astimezone(NEW_YORK).hour for t in ticks] == [1, 3, 4]
    assert all(b - a == timedelta(hours=1) for a, b in zip(ticks, ticks[1:], strict=False))


def test_fall_back_runs_a_repeated_time_once() -> None:
    # 2024-11-03: New York clocks go back from 02:00 EDT to 01:00 EST.
    daily = apothic.Cron("30 1 * * *", timezone="America/New_York")
    ticks = _ticks(daily, _utc(2024, 11, 2, 12), 2)
    assert ticks == [_utc(2024, 11, 3, 5, 30), _utc(2024, 11, 4, 6, 30)]  # 01:30 EDT, then 01:30 EST
    # An hourly schedule fires in both copies of the repeated hour: every hour of real time.
    hourly = apothic.Cron("30 * * * *", timezone="America/New_York")
    ticks = _ticks(hourly, _utc(2024, 11, 3, 4), 4)
    assert ticks == [_utc(2024, 11, 3, h, 30) for h in (4, 5, 6, 7)]


def test_ticks_always_move_forward_through_dst() -> None:
    cron = apothic.Cron("*/20 0-3 * * *", timezone="Europe/Berlin")
    moment = _utc(2024, 3, 29)
    for _ in range(500):
        later = cron.next_after(moment)
        assert later > moment and later.tzinfo is UTC
        moment = later


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("*/5 * * *", "has 4 field(s); expected 5"),
        ("* * * * * *", "has 6 field(s)"),
        ("", "has 0 field(s)"),
        ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month field '0': 0 is out of range 1-31"),
        ("* * * 13 *", "month field '13': 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week field '8': 8 is out of range 0-7"),
        ("* * * FOO *", "month field 'FOO': 'FOO' is not a number from 1 to 12"),
        ("* * * * funday", "day-of-week field 'funday'"),
        ("*/0 * * * *", "step '0' must be a whole number greater than zero"),
        ("*/x * * * *", "step 'x'"),
        ("30-10 * * * *", "range '30-10' runs backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 30 2 *", "never matches a date"),
        ("@reboot", "unknown alias"),
    ],
)
def test_bad_cron_names_the_field_and_value(expression: str, message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        apothic.Cron(expression)
    assert message in str(info.value)
    assert repr(expression) in str(info.value)


def test_bad_timezone() -> None:
    with pytest.raises(InvalidConfigError, match="'Mars/Olympus' is not a known IANA time zone"):
        apothic.Cron("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidConfigError, match="timezone"):
        apothic.Cron("* * * * *", timezone="")


def test_cron_is_a_frozen_value() -> None:
    cron = apothic.Cron("*/5 * * * *", timezone="Europe/Paris")
    assert cron == apothic.Cron("*/5 * * * *", timezone="Europe/Paris")
    assert hash(cron) == hash(apothic.Cron("*/5 * * * *", timezone="Europe/Paris"))
    assert repr(cron) == "Cron(expression='*/5 * * * *', timezone='Europe/Paris')"
    with pytest.raises(AttributeError):
        cron.expression = "* * * * *"  # type: ignore[misc]


def test_period() -> None:
    period = apothic.Period(hours=1, minutes=30)
    assert period.total_seconds == 5400
    assert period.describe() == "every 1h 30m"
    assert apothic.Period(seconds=0.5).describe() == "every 0.5s"
    anchor = _utc(2024, 1, 1)
    step = apothic.Period(seconds=10)
    assert step.next_after(anchor, anchor=anchor) == anchor + timedelta(seconds=10)
    assert step.next_after(anchor + timedelta(seconds=10), anchor=anchor) == anchor + timedelta(seconds=20)
    assert step.next_after(anchor - timedelta(days=1), anchor=anchor) == anchor + timedelta(seconds=10)
    assert step.latest_at_or_before(anchor + timedelta(seconds=25), anchor=anchor) == anchor + timedelta(seconds=20)
    assert step.latest_at_or_before(anchor + timedelta(seconds=5), anchor=anchor) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "longer than zero"),
        ({"seconds": 0}, "longer than zero"),
        ({"seconds": -1}, "seconds must be zero or more, got -1"),
        ({"minutes": float("nan")}, "minutes must be a finite number"),
        ({"days": "1"}, "days must be a finite number, got '1'"),
        ({"hours": True}, "hours must be a finite number"),
    ],
)
def test_bad_period(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        apothic.Period(**kwargs)


def test_period_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        apothic.Period(5)  # type: ignore[misc]


def test_schedule_option_is_kept_in_the_definition() -> None:
    app = apothic.App("scheduled-defs")

    @app.function(schedule=apothic.Cron("0 9 * * MON", timezone="Europe/Paris"))
    def weekly() -> None:
        return None

    @app.function(schedule=apothic.Period(minutes=5))
    def often(limit: int = 3) -> int:
        return limit

    cron_def, period_def = app._definitions()
    assert cron_def.schedule == apothic.Cron("0 9 * * MON", timezone="Europe/Paris")
    assert json.loads(cron_def.options_json)["schedule"] == {
        "cron": {"expression": "0 9 * * MON", "timezone": "Europe/Paris"}
    }
    assert json.loads(period_def.options_json)["schedule"] == {"period": {"seconds": 300.0}}
    assert schedule_to_pb(cron_def.schedule).cron.timezone == "Europe/Paris"
    assert schedule_to_pb(period_def.schedule).period.seconds == 300.0
    assert schedule_to_pb(None) is None


def test_schedule_option_errors_at_decoration_time() -> None:
    app = apothic.App("scheduled-bad")
    with pytest.raises(InvalidConfigError, match="schedule must be apothic.Cron"):
        app.function(schedule="*/5 * * * *")
    with pytest.raises(InvalidConfigError, match="minute field"):

        @app.function(schedule=apothic.Cron("61 * * * *"))
        def never() -> None:
            return None

    with pytest.raises(InvalidConfigError, match=r"requires 'x'.*give them defaults"):

        @app.function(schedule=apothic.Period(seconds=1))
        def needs_arg(x: int, y: int = 1) -> int:
            return x + y

    with pytest.raises(InvalidConfigError, match="cannot be @batched"):

        @app.function(schedule=apothic.Period(seconds=1))
        @apothic.batched(max_batch_size=4, wait_ms=10)
        def batch(xs: list[int]) -> list[int]:
            return xs

    assert not app.functions
