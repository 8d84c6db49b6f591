"""RFC 3339 times and epoch milliseconds, as integers, with no clock and no `datetime`.

Civil dates are converted with Howard Hinnant's `days_from_civil` and its inverse
`civil_from_days`, pure integer arithmetic.
"""

from __future__ import annotations

import re
from typing import Final

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
MS_PER_DAY: Final = 86_400_000
EPOCH_MS_MAX: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    assert 1 <= month <= 12 and 1 <= day <= 31
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian (year, month, day) of a day count since 1970-01-01."""
    days += 719_468
    era = (days if days >= 0 else days - 146_096) // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (month <= 2)
    assert 1 <= month <= 12 and 1 <= day <= 31
    return year, month, day


def weekday_of_days(days: int) -> int:
    """Day of the week of a day count since 1970-01-01: 0 = Sunday ... 6 = Saturday."""
    return (days + 4) % 7  # 1970-01-01 was a Thursday


def parse_rfc3339_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 time (`2026-11-24T18:00:00Z`), or None if invalid."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    fraction = (match.group(7) or "0").ljust(3, "0")[:3]
    offset_ms = 0
    if match.group(9) is not None:
        sign = 1 if match.group(9) == "+" else -1
        offset_ms = sign * (int(match.group(10)) * 60 + int(match.group(11))) * 60_000
    days = days_from_civil(year, month, day)
    ms = days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + int(fraction)
    return ms - offset_ms


def parse_timestamp_ms(value: object) -> int | None:
    """Epoch milliseconds from an RFC 3339 string or a non-negative integer of ms, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= EPOCH_MS_MAX else None
    if isinstance(value, str):
        return parse_rfc3339_ms(value)
    return None
