"""RFC 3339 times and epoch milliseconds, for the step types: the arithmetic lives in
`kernel.timestamps` (the cron grammar in `kernel.cron` uses it); this module gives the step
types its names."""

from __future__ import annotations

from kernel.timestamps import (
    EPOCH_MS_MAX,
    MS_PER_DAY,
    civil_from_days,
    days_from_civil,
    parse_rfc3339_ms,
    parse_timestamp_ms,
    weekday_of_days,
)

__all__ = [
    "EPOCH_MS_MAX",
    "MS_PER_DAY",
    "civil_from_days",
    "days_from_civil",
    "parse_rfc3339_ms",
    "parse_timestamp_ms",
    "weekday_of_days",
]
