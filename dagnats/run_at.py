"""When a scheduled run starts, as the CLI (`--at`, `--in`) and the HTTP API (`run_at`) write
it: an ISO 8601 time (without a zone: UTC) or a delay ("30s", "2h"), at most
`run_at_ahead_ms_max` ahead. Errors name the field, the value and the rule."""

from __future__ import annotations

import datetime as dt
from typing import Final

from kernel.errors import DagnatsError
from kernel.workflow.durations import parse_duration

run_at_ahead_ms_max: Final = 365 * 24 * 3_600_000  # one year, as a durable sleep
RULE: Final = 'must be an ISO 8601 time (e.g. 2030-01-31T09:00:00Z) or a delay such as "90s"'


class RunAtError(DagnatsError):
    """A start time that cannot be read or is out of range."""

    def __init__(self, field: str, value: str, rule: str) -> None:
        super().__init__(f"{field} {value!r} {rule}")
        self.field, self.value, self.rule = field, value, rule


def run_at_ms_of(at: str | None, delay: str | None, now_ms: int, field: str = "--at") -> int | None:
    """The start time in ms since the epoch (None: start now).

    Raises:
        RunAtError: both given, unreadable, or more than a year ahead.
    """
    if at is not None and delay is not None:
        raise RunAtError(field, at, "is given with a delay too; give one of them")
    if delay is not None:
        return _checked(now_ms + _delay_ms(delay, "--in"), delay, "--in", now_ms)
    if at is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(at)
    except ValueError:
        return _checked(now_ms + _delay_ms(at, field), at, field, now_ms)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return _checked(int(moment.timestamp() * 1000), at, field, now_ms)


def _delay_ms(text: str, field: str) -> int:
    found = parse_duration(text, field)
    if not isinstance(found, int):
        raise RunAtError(field, text, RULE)
    return found


def _checked(run_at_ms: int, text: str, field: str, now_ms: int) -> int:
    if run_at_ms - now_ms > run_at_ahead_ms_max:
        raise RunAtError(field, text, "is more than a year ahead (run_at_ahead_ms_max)")
    return run_at_ms


def run_at_text(run_at_ms: int) -> str:
    """A start time as people read it (UTC, to the second)."""
    moment = dt.datetime.fromtimestamp(run_at_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
