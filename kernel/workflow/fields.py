"""Reading single values of the user's workflow format, and the bounded list of problems.

Each reader takes a decoded JSON value, adds a problem (path, value, rule) for whatever breaks
a rule, and returns a usable value anyway (the default) so that reading goes on and every
problem is found in one pass. A field that is left out or `null` reads as its default.
Pure: no I/O; nothing here raises on any input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import msgspec

from kernel import limits
from kernel.errors import Problem, show_value
from kernel.workflow.durations import format_duration, parse_duration
from kernel.workflow.model import EMPTY_OBJECT, RetryPolicy, RetryStrategy

RETRY_FIELDS: Final = (
    "max_attempts", "strategy", "initial_delay", "max_delay", "multiplier", "jitter"
)  # fmt: skip
STRATEGIES: Final[dict[str, RetryStrategy]] = {
    "fixed": "fixed", "linear": "linear", "exponential": "exponential"
}  # fmt: skip
JITTER_TRUE: Final = 0.2


class _Missing:
    """The value of a field the document leaves out (shown as `(missing)` in problems)."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Final = _Missing()


class Problems:
    """Problems found so far, in the order found, at most `limits.validation_problems_max`."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    @property
    def full(self) -> bool:
        """Whether the bound is reached (later problems are dropped; callers may stop)."""
        return len(self.found) >= limits.validation_problems_max

    def add(self, path: str, value: object, rule: str) -> None:
        """Record a problem at `path` about `value` (shown by `show_value`)."""
        self.add_shown(path, show_value(value), rule)

    def add_shown(self, path: str, shown: str, rule: str) -> None:
        """Record a problem whose value is already described as text."""
        if not self.full:
            self.found.append(Problem(path=path, value=shown, rule=rule))

    def extend(self, problems: Iterable[Problem]) -> None:
        """Record problems found elsewhere (a step type's own validation)."""
        for problem in problems:
            if self.full:
                break
            self.found.append(problem)


def read_retry(
    fields: dict[str, object], key: str, parent: str, problems: Problems
) -> RetryPolicy | None:
    """The retry object at `fields[key]` as a policy; None when it is left out or unusable."""
    value = fields.get(key, MISSING)
    if value is MISSING or value is None:
        return None
    path = join_path(parent, key)
    retry = read_object(value, path, RETRY_FIELDS, problems)
    if retry is None:
        return None
    attempts = read_integer(
        retry, "max_attempts", path, problems, low=0, high=limits.attempts_max, default=1
    )
    strategy_value = retry.get("strategy", "exponential")
    strategy = STRATEGIES.get(strategy_value) if isinstance(strategy_value, str) else None
    if strategy is None:
        problems.add(f"{path}.strategy", strategy_value, f"must be one of {', '.join(STRATEGIES)}")
        strategy = "exponential"
    initial = _delay(retry, "initial_delay", path, 1_000, problems)
    maximum = _delay(retry, "max_delay", path, 0, problems)
    if 0 < maximum < initial:
        rule = f"must be 0 (uncapped) or at least initial_delay ({format_duration(initial)})"
        problems.add(f"{path}.max_delay", retry.get("max_delay"), rule)
    return RetryPolicy(
        max_attempts=max(attempts, 1),  # 0 reads as 1: every attempt counts, the first too
        strategy=strategy,
        initial_delay_ms=initial,
        max_delay_ms=maximum,
        multiplier=_multiplier(retry.get("multiplier", MISSING), f"{path}.multiplier", problems),
        jitter=_jitter(retry.get("jitter", MISSING), f"{path}.jitter", problems),
    )


def read_retries(value: object, path: str, problems: Problems) -> RetryPolicy | None:
    """The legacy `retries: n` (n retries after the first attempt) as a policy."""
    if value is None:
        return None
    top = limits.attempts_max - 1
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        problems.add(path, value, f"must be an integer from 0 to {top} (retries after the first)")
        return None
    return RetryPolicy(max_attempts=value + 1)


def _delay(fields: dict[str, object], key: str, path: str, default: int, problems: Problems) -> int:
    value = fields.get(key, MISSING)
    if value is MISSING or value is None:
        return default
    milliseconds = parse_duration(value, f"{path}.{key}")
    if isinstance(milliseconds, Problem):
        problems.extend((milliseconds,))
        return default
    if milliseconds > limits.delay_ms_max:
        rule = f"is longer than the limit of {limits.delay_ms_max} ms (one week)"
        problems.add(f"{path}.{key}", value, rule)
        return default
    return milliseconds


def read_timeout(fields: dict[str, object], parent: str, problems: Problems) -> int | None:
    """The `timeout` duration in milliseconds (> 0, within the limit), or None."""
    value = fields.get("timeout", MISSING)
    if value is MISSING or value is None:
        return None
    path = join_path(parent, "timeout")
    milliseconds = parse_duration(value, path)
    if isinstance(milliseconds, Problem):
        problems.extend((milliseconds,))
        return None
    if milliseconds == 0:
        problems.add(path, value, "must be longer than zero (leave it out for no timeout)")
    elif milliseconds > limits.timeout_ms_max:
        rule = f"is longer than the limit of {limits.timeout_ms_max} ms (a year)"
        problems.add(path, value, rule)
    return milliseconds


def _multiplier(value: object, path: str, problems: Problems) -> float:
    if value is MISSING or value is None:
        return 2.0
    top = limits.retry_multiplier_max
    number = read_number(value)
    if number is None or not 1.0 <= number <= top:
        problems.add(path, value, f"must be a number from 1 to {top:g}")
        return 2.0
    return number


def _jitter(value: object, path: str, problems: Problems) -> float:
    if value is MISSING or value is None:
        return 0.0
    if isinstance(value, bool):
        return JITTER_TRUE if value else 0.0
    number = read_number(value)
    if number is None or not 0.0 <= number <= 1.0:
        problems.add(path, value, "must be a fraction from 0 to 1, or true (0.2) or false (0)")
        return 0.0
    return number


def read_metadata(value: object, path: str, problems: Problems) -> msgspec.Raw:
    """A metadata object of string values as canonical JSON (`{}` when left out or bad)."""
    if value is MISSING or value is None:
        return EMPTY_OBJECT
    if not isinstance(value, dict):
        problems.add(path, value, "must be a JSON object of string values")
        return EMPTY_OBJECT
    bad = [key for key, item in value.items() if not isinstance(item, str)]
    for key in bad[: limits.validation_problems_max]:
        problems.add(f"{path}.{key}", value[key], "must be a string (metadata values are strings)")
    if bad:
        return EMPTY_OBJECT
    encoded = canonical_json(value, path, problems)
    if encoded is not None and len(encoded) > limits.metadata_bytes_max:
        rule = f"is {len(encoded)} bytes of JSON; the limit is {limits.metadata_bytes_max}"
        problems.add_shown(path, f"{{... {len(value)} keys}}", rule)
    return encoded or EMPTY_OBJECT


def read_config(value: object, path: str, problems: Problems) -> msgspec.Raw | None:
    """The config as canonical JSON, or None when it is not a readable JSON object."""
    if value is MISSING or value is None:
        return EMPTY_OBJECT
    if not isinstance(value, dict):
        problems.add(path, value, "must be a JSON object")
        return None
    encoded = canonical_json(value, path, problems)
    if encoded is not None and len(encoded) > limits.workflow_bytes_max:
        rule = f"is {len(encoded)} bytes of JSON; the limit is {limits.workflow_bytes_max}"
        problems.add_shown(path, f"{{... {len(value)} keys}}", rule)
        return None
    return encoded


def canonical_json(value: object, path: str, problems: Problems) -> msgspec.Raw | None:
    """`value` as canonical JSON (sorted keys), checked to decode again; None if it cannot."""
    try:
        data = msgspec.json.encode(value, order="sorted")
        msgspec.json.decode(data)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError) as error:
        problems.add(path, value, f"must be JSON: {error}")
        return None
    return msgspec.Raw(data)


def read_object(
    value: object, path: str, allowed: tuple[str, ...], problems: Problems
) -> dict[str, object] | None:
    """The object's known fields; each non-object, non-string key and unknown field a problem."""
    if not isinstance(value, dict):
        problems.add(path or "$", value, "must be a JSON object")
        return None
    fields: dict[str, object] = {}
    for key, item in value.items():
        if problems.full:
            break
        if not isinstance(key, str):
            problems.add(path or "$", key, "has a key that is not a string")
        elif key not in allowed:
            rule = f"unknown field (allowed: {', '.join(allowed)})"
            problems.add(join_path(path, key), item, rule)
        else:
            fields[key] = item
    return fields


def read_text(
    fields: dict[str, object], key: str, parent: str, problems: Problems, *, required: bool
) -> str:
    """The string at `fields[key]` ("" when left out or not a string; required: non-empty)."""
    value = fields.get(key, MISSING)
    path = join_path(parent, key)
    if value is MISSING or value is None:
        if required:
            problems.add(path, MISSING, "is required")
        return ""
    if not isinstance(value, str):
        problems.add(path, value, "must be a string")
        return ""
    if required and not value:
        problems.add(path, value, "must not be empty")
    return value


def read_integer(
    fields: dict[str, object], key: str, path: str, problems: Problems, *, low: int, high: int,
    default: int,
) -> int:  # fmt: skip
    """The integer at `fields[key]` within [low, high] (booleans are not integers here)."""
    value = fields.get(key, MISSING)
    if value is MISSING or value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.add(f"{path}.{key}", value, f"must be an integer from {low} to {high}")
        return default
    return value


def read_number(value: object) -> float | None:
    """A finite JSON number as a float, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > 2**53:
        return None  # beyond what a float holds exactly; no rule here wants such numbers
    return float(value) if math.isfinite(value) else None


def join_path(parent: str, key: str) -> str:
    """`parent.key`, or `key` at the top level."""
    return f"{parent}.{key}" if parent else key
