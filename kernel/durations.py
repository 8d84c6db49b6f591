"""Durations in workflow definitions: Go-style strings or integer nanoseconds, to milliseconds.

The DagNats workflow files write durations as Go's `time.Duration` does, either a string
(`"500ms"`, `"1m30s"`, `"1h2m3.5s"`) or an integer of nanoseconds (`1000000000` is one second).
The kernel keeps milliseconds. This module converts both ways and describes bad values for
validation problems. Pure: no clock, no I/O, no project imports beyond `kernel.errors`.
"""

from __future__ import annotations

import re
from typing import Final

from kernel.errors import Problem

NANOSECONDS_PER_MS: Final = 1_000_000
DURATION_TEXT_LENGTH_MAX: Final = 64  # longer strings are not durations a person writes
DURATION_NS_MAX: Final = 2**63 - 1  # Go's time.Duration range
VALUE_TEXT_LENGTH_MAX: Final = 80

_UNIT_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_COMPONENT = re.compile("([0-9]*)(?:\\.([0-9]*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_RULE_FORMAT: Final = (
    'must be a duration such as "500ms", "30s", "1m30s" or "2h" '
    "(units ns, us, ms, s, m, h) or an integer of nanoseconds"
)


def show_value(value: object) -> str:
    """`repr(value)` cut to about 80 characters, for a problem's `value`; never raises. An
    object without its own repr is shown by its type's name, never its address (the text may
    be recorded in an event, which must be the same bytes on every replay)."""
    if type(value).__repr__ is object.__repr__:
        return f"<{type(value).__name__}>"
    try:
        text = repr(value)
    except Exception:  # a huge int or a broken __repr__ in a caller's object
        text = f"<{type(value).__name__}>"
    if len(text) > VALUE_TEXT_LENGTH_MAX:
        text = text[: VALUE_TEXT_LENGTH_MAX - 3] + "..."
    return text


def parse_duration(value: object, path: str) -> int | Problem:
    """Milliseconds of a duration written as a Go-style string or integer nanoseconds.

    Nanoseconds round down to milliseconds, except that a non-zero duration under 1 ms
    becomes 1 ms (so "a little" never turns into "nothing").

    Args:
        value: the decoded JSON value (`"1m30s"`, `1000000000`, ...).
        path: its JSON path, named in the problem (`steps[2].timeout`).

    Returns:
        The duration in milliseconds (>= 0), or a `Problem` naming the path, value and rule.
    """
    if isinstance(value, bool):
        return Problem(path=path, value=show_value(value), rule=_RULE_FORMAT)
    if isinstance(value, float):
        if not value.is_integer():
            rule = "must be a whole number of nanoseconds or a duration string such as '30s'"
            return Problem(path=path, value=show_value(value), rule=rule)
        value = int(value)
    if isinstance(value, int):
        nanoseconds: int | None = value
    elif isinstance(value, str):
        nanoseconds = _parse_text(value)
    else:
        return Problem(path=path, value=show_value(value), rule=_RULE_FORMAT)
    if nanoseconds is None:
        return Problem(path=path, value=show_value(value), rule=_RULE_FORMAT)
    if nanoseconds < 0:
        return Problem(path=path, value=show_value(value), rule="must not be negative")
    if nanoseconds > DURATION_NS_MAX:
        rule = "is out of range (durations stop at about 292 years)"
        return Problem(path=path, value=show_value(value), rule=rule)
    milliseconds = nanoseconds // NANOSECONDS_PER_MS
    if milliseconds == 0 and nanoseconds > 0:
        milliseconds = 1
    assert milliseconds >= 0
    return milliseconds


def _parse_text(text: str) -> int | None:
    """Nanoseconds of a Go duration string (negative allowed here), or None if malformed."""
    if len(text) > DURATION_TEXT_LENGTH_MAX or not text:
        return None
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        return None
    total = 0
    position = 0
    for _ in range(len(text)):  # bounded: each component consumes at least two characters
        if position == len(text):
            break
        match = _COMPONENT.match(text, position)
        if match is None:
            return None
        whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3)
        if not whole and not fraction:
            return None  # a unit needs a number before it
        unit_ns = _UNIT_NS[unit]
        total += int(whole or "0") * unit_ns
        if fraction:
            total += int(fraction) * unit_ns // 10 ** len(fraction)
        position = match.end()
    assert position == len(text)
    return sign * total


def format_duration(ms: int) -> str:
    """A duration in milliseconds as the shortest Go-style string (`90_000` -> `"1m30s"`).

    Raises:
        ValueError: `ms` is negative.
    """
    if ms < 0:
        raise ValueError(f"duration {ms} ms is negative; durations are >= 0")
    if ms == 0:
        return "0s"
    if ms < 1_000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, milliseconds = divmod(rest, 1_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds or milliseconds:
        fraction = f".{milliseconds:03d}".rstrip("0") if milliseconds else ""
        parts.append(f"{seconds}{fraction}s")
    text = "".join(parts)
    assert text
    return text
