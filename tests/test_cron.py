"""Cron expressions (steps.cron): parsing, next fire times by example, and a hypothesis
cross-check against croniter (a dev-only dependency), plus `civil_from_days`."""

from __future__ import annotations

import datetime

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kernel import limits
from steps.cron import FIELDS, CronSchedule, next_fire_ms, parse_cron
from steps.timestamps import (
    EPOCH_MS_MAX,
    civil_from_days,
    days_from_civil,
    parse_rfc3339_ms,
    weekday_of_days,
)

YEAR_MS = 365 * 86_400_000


def ms(text: str) -> int:
    value = parse_rfc3339_ms(text)
    assert value is not None, text
    return value


def schedule(text: str) -> CronSchedule:
    parsed = parse_cron(text)
    assert isinstance(parsed, CronSchedule), parsed
    return parsed


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", "2026-11-24T18:00:00Z", "2026-11-24T18:01:00Z"),  # strictly after
        ("* * * * *", "2026-11-24T18:00:59.999Z", "2026-11-24T18:01:00Z"),
        ("*/15 9-17 * * 1-5", "2026-11-24T17:50:00Z", "2026-11-25T09:00:00Z"),  # Tue -> Wed
        ("*/15 9-17 * * 1-5", "2026-11-27T17:45:00Z", "2026-11-30T09:00:00Z"),  # Fri -> Mon
        ("0 0 1 * *", "2026-12-15T00:00:00Z", "2027-01-01T00:00:00Z"),  # across a year
        ("0 12 29 2 *", "2027-03-02T00:00:00Z", "2028-02-29T12:00:00Z"),  # the next leap day
        ("30 2 * * 7", "2026-11-24T00:00:00Z", "2026-11-29T02:30:00Z"),  # 7 is Sunday
        ("0 0 13 * 5", "2026-11-24T00:00:00Z", "2026-11-27T00:00:00Z"),  # day OR weekday
        ("5/20 * * * *", "2026-11-24T18:26:00Z", "2026-11-24T18:45:00Z"),  # 5, 25, 45
        ("1,2,3 4 5-9/2 3,6 *", "2026-11-24T00:00:00Z", "2027-03-05T04:01:00Z"),
    ],
)
def test_the_next_fire_time_by_example(expression: str, after: str, expected: str) -> None:
    assert next_fire_ms(schedule(expression), ms(after), limits.sleep_ms_max) == ms(expected)


def test_nothing_beyond_the_horizon_is_returned() -> None:
    leap = schedule("0 12 29 2 *")
    after = ms("2028-03-01T00:00:00Z")  # the next 29 February is in 2032
    assert next_fire_ms(leap, after, limits.sleep_ms_max) is None
    assert next_fire_ms(leap, after, 5 * YEAR_MS) == ms("2032-02-29T12:00:00Z")
    hourly = schedule("0 * * * *")
    assert next_fire_ms(hourly, ms("2026-01-01T00:00:00Z"), 59 * 60_000) is None
    assert next_fire_ms(hourly, ms("2026-01-01T00:00:00Z"), 60 * 60_000) == ms(
        "2026-01-01T01:00:00Z"
    )


@pytest.mark.parametrize(
    ("expression", "rule"),
    [
        ("", "must be a cron expression"),
        ("* * * *", "has 4 fields"),
        ("* * * * * *", "has 6 fields"),
        ("60 * * * *", "minute field '60': '60' is out of range: values go from 0 to 59"),
        ("* 24 * * *", "hour field '24'"),
        ("* * 0 * *", "day-of-month field '0'"),
        ("* * * 13 *", "month field '13'"),
        ("* * * * 8", "day-of-week field '8'"),
        ("*/0 * * * *", "step '0' must be a number from 1 to 60"),
        ("5-1 * * * *", "A <= B"),
        ("* * * JAN *", "numbers only, no names"),
        ("@daily", "has 1 fields"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 31 2,4,6,9,11 *", "never fires"),
        ("1,,2 * * * *", "is not *, N or A-B"),
    ],
)
def test_a_bad_expression_names_the_field_and_the_rule(expression: str, rule: str) -> None:
    message = parse_cron(expression)
    assert isinstance(message, str) and rule in message, message


def test_bad_values_of_other_types_are_problems_not_crashes() -> None:
    for value in (None, 5, ["* * * * *"], {"cron": 1}):
        assert isinstance(parse_cron(value), str)


@given(st.integers(-1_000_000, 2_900_000))
def test_civil_from_days_inverts_days_from_civil(days: int) -> None:
    year, month, day = civil_from_days(days)
    assert days_from_civil(year, month, day) == days
    if 1 <= year <= 9999:
        date = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
        assert (date.year, date.month, date.day) == (year, month, day)
        assert date.isoweekday() % 7 == weekday_of_days(days)


def _part(low: int, high: int) -> st.SearchStrategy[str]:
    """One part of a field other than a bare `*` (a field is `*` alone or a list of these)."""
    value = st.integers(low, high)
    step = st.integers(1, high - low + 1)
    # croniter reads a one-value range `A-A` as `*`: ranges here span at least two values
    distinct = st.tuples(value, value).filter(lambda pair: pair[0] != pair[1])
    ranged = distinct.map(lambda pair: f"{min(pair)}-{max(pair)}")
    return st.one_of(
        step.map(lambda s: f"*/{s}"),
        value.map(str),
        ranged,
        st.tuples(ranged, step).map(lambda pair: f"{pair[0]}/{pair[1]}"),
        st.tuples(value, step).map(lambda pair: f"{pair[0]}/{pair[1]}"),
    )


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    parts = st.lists(_part(low, high), min_size=1, max_size=4).map(",".join)
    return st.one_of(st.just("*"), parts)


CRON = st.tuples(*(_field(low, high) for _, low, high in FIELDS)).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(CRON, st.integers(0, ms("2100-01-01T00:00:00Z")))
def test_next_fire_agrees_with_croniter(expression: str, after_ms: int) -> None:
    parsed = parse_cron(expression)
    assume(not isinstance(parsed, str))
    assert isinstance(parsed, CronSchedule)
    start = datetime.datetime.fromtimestamp(after_ms / 1000, tz=datetime.UTC)
    expected = croniter(expression, start).get_next(datetime.datetime)
    expected_ms = int(expected.timestamp()) * 1000
    got = next_fire_ms(parsed, after_ms, limits.sleep_ms_max)
    if got is None:
        assert expected_ms - after_ms > limits.sleep_ms_max, (expression, after_ms, expected)
    else:
        assert got == expected_ms, (expression, after_ms, got, expected_ms, expected)
    assert expected_ms <= EPOCH_MS_MAX
