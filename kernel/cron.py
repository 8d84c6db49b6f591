"""Five-field cron expressions (UTC) and their next fire time, in integer arithmetic.

`minute hour day-of-month month day-of-week`, each field a comma-separated list of `*`, `N`,
`A-B`, each optionally stepped (`*/15`, `0-30/10`, `5/20` = from 5 to the field's maximum).
Ranges: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-7 (0 and 7 are
Sunday; `*` and `A/S` in day-of-week run to 6, as in croniter).

Days follow croniter (and Vixie cron in the common cases): when both day-of-month and
day-of-week are restricted, a day matches when either does (`0 0 13 * 5`: the 13th and every
Friday); otherwise both must match. A day field is unrestricted when it holds a bare `*`, or
when it names every value of its range while the other day field is written with a `*` in it
(`*/1` beside `*/2`). A range `A-A` is the one value A (croniter reads it as the whole field).
Not supported: names (`JAN`, `MON`), macros (`@daily`), `?`, `L`, `W`, `#`, seconds or years
fields, time zones (every time is UTC).

The next fire time strictly after a moment is found by walking at most `horizon` days forward
(one pass over each day's hours and minutes), so the search is bounded. Pure: no clock, no
`datetime`; civil dates come from `steps.timestamps`.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel.timestamps import MS_PER_DAY, civil_from_days, weekday_of_days

MS_PER_MINUTE: Final = 60_000
MINUTES_PER_DAY: Final = 1_440
CRON_TEXT_LENGTH_MAX: Final = 256
CRON_PARTS_PER_FIELD_MAX: Final = 60
FIELDS: Final = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
WEEKDAY_STAR_HIGH: Final = 6  # `*` and `A/S` of day-of-week stop at Saturday (7 repeats 0)
MONTH_DAYS_MAX: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
SYNTAX: Final = (
    "5 fields 'minute hour day-of-month month day-of-week', each a list of *, N, A-B, "
    "optionally /STEP (e.g. '*/15 9-17 * * 1-5')"
)


class CronSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """The expanded fields of a cron expression (each sorted, day-of-week 7 read as 0)."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    days_restricted: bool  # the day-of-month field holds no bare `*`
    weekdays_restricted: bool  # the day-of-week field holds no bare `*`


def parse_cron(text: object) -> CronSchedule | str:
    """The schedule of a cron expression, or the rule it breaks (a message naming the field).

    Args:
        text: the expression, e.g. `"30 2 * * 1-5"`.

    Returns:
        The expanded schedule, or a string saying what is wrong and the syntax expected.
    """
    if not isinstance(text, str) or not text.strip():
        return f"must be a cron expression: {SYNTAX}"
    if len(text) > CRON_TEXT_LENGTH_MAX:
        return f"is longer than {CRON_TEXT_LENGTH_MAX} characters"
    fields = text.split()
    if len(fields) != len(FIELDS):
        return f"has {len(fields)} fields; expected {SYNTAX}"
    expanded: list[tuple[int, ...]] = []
    for field_text, (name, low, high) in zip(fields, FIELDS, strict=True):
        star_high = WEEKDAY_STAR_HIGH if name == "day-of-week" else high
        values = _expand(field_text, low, high, star_high)
        if isinstance(values, str):
            return f"{name} field {field_text!r}: {values}"
        expanded.append(values)
    minutes, hours, days, months, weekdays_written = expanded
    weekdays = tuple(sorted({day % 7 for day in weekdays_written}))
    schedule = CronSchedule(
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=weekdays,
        days_restricted=_restricted(fields[2], len(days) == 31, fields[4]),
        weekdays_restricted=_restricted(fields[4], len(weekdays) == 7, fields[2]),
    )
    if schedule.days_restricted and not schedule.weekdays_restricted:
        possible = any(day <= MONTH_DAYS_MAX[month - 1] for month in months for day in days)
        if not possible:
            return "never fires: no month of the month field has any day of the day-of-month field"
    return schedule


def _restricted(text: str, names_every_day: bool, other_text: str) -> bool:
    """Whether a day field restricts the days (see the module's docstring)."""
    if "*" in text.split(","):
        return False
    return not (names_every_day and "*" in other_text)


def _expand(text: str, low: int, high: int, star_high: int) -> tuple[int, ...] | str:
    """The values of one field, or what is wrong with it."""
    parts = text.split(",")
    if len(parts) > CRON_PARTS_PER_FIELD_MAX:
        return f"holds more than {CRON_PARTS_PER_FIELD_MAX} comma-separated parts"
    values: set[int] = set()
    for part in parts:
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            step_value = _number(step_text)
            if step_value is None or not 1 <= step_value <= high - low + 1:
                return f"step {step_text!r} must be a number from 1 to {high - low + 1}"
            step = step_value
        if base == "*":
            start, end = low, star_high
        else:
            first, dash, last = base.partition("-")
            start_value = _number(first)
            end_value = _number(last) if dash else (star_high if slash else start_value)
            if start_value is None or end_value is None:
                return f"{part!r} is not *, N or A-B (numbers only, no names)"
            top = high if dash or not slash else star_high
            if not low <= start_value <= end_value <= top:
                return f"{part!r} is out of range: values go from {low} to {top}, A <= B"
            start, end = start_value, end_value
        values.update(range(start, end + 1, step))
    return tuple(sorted(values))


def _number(text: str) -> int | None:
    if not text or len(text) > 2 or not text.isdigit() or not text.isascii():
        return None
    return int(text)


def next_fire_ms(schedule: CronSchedule, after_ms: int, horizon_ms: int) -> int | None:
    """The first fire time strictly after `after_ms`, if it is at most `horizon_ms` later.

    Args:
        schedule: a parsed expression.
        after_ms: epoch milliseconds (UTC); a fire at exactly this moment does not count.
        horizon_ms: how far ahead to look (non-negative); bounds the search to as many days.

    Returns:
        Epoch milliseconds of a whole minute, or None when nothing fires within the horizon.
    """
    assert horizon_ms >= 0, horizon_ms
    first_minute = after_ms // MS_PER_MINUTE + 1
    first_day, first_minute_of_day = divmod(first_minute, MINUTES_PER_DAY)
    latest_ms = after_ms + horizon_ms
    for offset in range(horizon_ms // MS_PER_DAY + 2):
        day = first_day + offset
        if day * MS_PER_DAY > latest_ms:
            return None
        if not _day_matches(schedule, day):
            continue
        minute = _first_minute(schedule, first_minute_of_day if offset == 0 else 0)
        if minute is not None:
            fire_ms = (day * MINUTES_PER_DAY + minute) * MS_PER_MINUTE
            assert fire_ms > after_ms, (fire_ms, after_ms)
            return fire_ms if fire_ms <= latest_ms else None
    return None


def _day_matches(schedule: CronSchedule, day: int) -> bool:
    _, month, day_of_month = civil_from_days(day)
    if month not in schedule.months:
        return False
    by_date = day_of_month in schedule.days
    by_weekday = weekday_of_days(day) in schedule.weekdays
    if schedule.days_restricted and schedule.weekdays_restricted:
        return by_date or by_weekday
    return by_date and by_weekday


def _first_minute(schedule: CronSchedule, from_minute: int) -> int | None:
    """The first minute of the day at or after `from_minute` that the schedule names."""
    for hour in schedule.hours:
        if hour * 60 + 59 < from_minute:
            continue
        for minute in schedule.minutes:
            if hour * 60 + minute >= from_minute:
                return hour * 60 + minute
    return None
