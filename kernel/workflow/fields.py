"""Reading single values of the user's workflow format: their JSON shapes, into typed values.

Each reader takes a decoded JSON value, adds a problem (path, value, rule) when its shape is
wrong (a string where a number belongs, an unknown field, a duration that does not parse) and
returns a usable value anyway (the default) so that reading goes on and every problem is found
in one pass. A field that is left out or `null` reads as its default. Bounds and ranges are not
judged here but by `kernel.workflow.rules`, on the typed value read: a number out of range is
carried as it is. Pure: no I/O; nothing here raises on any input.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

from kernel import limits
from kernel.errors import Problem
from kernel.workflow.durations import parse_duration
from kernel.workflow.model import EMPTY_OBJECT, RetryPolicy
from kernel.workflow.problems import MISSING, Problems
from kernel.workflow.rules import (
    ATTEMPTS_RULE,
    CONFIG_RULE,
    JITTER_RULE,
    METADATA_RULE,
    MULTIPLIER_RULE,
    STRATEGIES,
    STRATEGY_RULE,
    check_metadata_values,
)

RETRY_FIELDS: Final = (
    "max_attempts", "strategy", "initial_delay", "max_delay", "multiplier", "jitter"
)  # fmt: skip
JITTER_TRUE: Final = 0.2


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
    attempts = read_whole(
        retry.get("max_attempts"), f"{path}.max_attempts", ATTEMPTS_RULE, problems
    )
    strategy_value = retry.get("strategy", "exponential")  # null is not left out here
    strategy = STRATEGIES.get(strategy_value) if isinstance(strategy_value, str) else None
    if strategy is None:
        problems.add(f"{path}.strategy", strategy_value, STRATEGY_RULE)
    return RetryPolicy(
        max_attempts=1 if attempts is None or attempts == 0 else attempts,  # 0 reads as 1
        strategy=strategy or "exponential",
        initial_delay_ms=_delay(
            retry.get("initial_delay"), f"{path}.initial_delay", 1_000, problems
        ),
        max_delay_ms=_delay(retry.get("max_delay"), f"{path}.max_delay", 0, problems),
        multiplier=_multiplier(retry.get("multiplier"), f"{path}.multiplier", problems),
        jitter=_jitter(retry.get("jitter"), f"{path}.jitter", problems),
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


def _delay(value: object, path: str, default: int, problems: Problems) -> int:
    if value is None:
        return default
    milliseconds = parse_duration(value, path)
    if isinstance(milliseconds, Problem):
        problems.extend((milliseconds,))
        return default
    return milliseconds


def read_timeout(fields: dict[str, object], parent: str, problems: Problems) -> int | None:
    """The `timeout` duration in milliseconds, or None."""
    value = fields.get("timeout")
    if value is None:
        return None
    milliseconds = parse_duration(value, join_path(parent, "timeout"))
    if isinstance(milliseconds, Problem):
        problems.extend((milliseconds,))
        return None
    return milliseconds


def _multiplier(value: object, path: str, problems: Problems) -> float:
    if value is None:
        return 2.0
    number = read_number(value)
    if number is None:
        problems.add(path, value, MULTIPLIER_RULE)
        return 2.0
    return number


def _jitter(value: object, path: str, problems: Problems) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return JITTER_TRUE if value else 0.0
    number = read_number(value)
    if number is None:
        problems.add(path, value, JITTER_RULE)
        return 0.0
    return number


def read_metadata(value: object, path: str, problems: Problems) -> msgspec.Raw:
    """A metadata object of string values as canonical JSON (`{}` when left out or bad)."""
    if value is MISSING or value is None:
        return EMPTY_OBJECT
    if not isinstance(value, dict):
        problems.add(path, value, METADATA_RULE)
        return EMPTY_OBJECT
    if not check_metadata_values(value, path, problems):
        return EMPTY_OBJECT
    return canonical_json(value, path, problems) or EMPTY_OBJECT


def read_config(value: object, path: str, problems: Problems) -> msgspec.Raw:
    """The config as canonical JSON (`{}` when left out, or when it is not a JSON object)."""
    if value is MISSING or value is None:
        return EMPTY_OBJECT
    if not isinstance(value, dict):
        problems.add(path, value, CONFIG_RULE)
        return EMPTY_OBJECT
    return canonical_json(value, path, problems) or EMPTY_OBJECT


def read_whole(value: object, path: str, rule: str, problems: Problems) -> int | None:
    """An integer as it is (its range is a rule's), None when left out or not an integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(path, value, rule)
        return None
    return value


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
    """The string at `fields[key]` ("" when left out or not a string; `required`: a problem
    when left out; whether it may be empty is a rule's)."""
    value = fields.get(key, MISSING)
    path = join_path(parent, key)
    if value is MISSING or value is None:
        if required:
            problems.add(path, MISSING, "is required")
        return ""
    if not isinstance(value, str):
        problems.add(path, value, "must be a string")
        return ""
    return value


def read_number(value: object) -> float | None:
    """A finite JSON number as a float, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > 2**53:
        return None  # beyond what a float holds exactly; no rule here wants such numbers
    return float(value) if math.isfinite(value) else None


DEPTH_RULE: Final = (
    f"nests deeper than {limits.json_depth_max} levels of arrays and objects (json_depth_max)"
)
NON_FINITE_RULE: Final = "is not a finite number: NaN and Infinity are refused"


def value_problem(value: object) -> tuple[str, str, str] | None:
    """The first (path, shown value, rule) of a decoded value that nests deeper than
    `limits.json_depth_max` or holds a float that is not finite; None when there is none.
    Iterative (no recursion on the user's data)."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path, repr(item), NON_FINITE_RULE
        if not isinstance(item, dict | list | tuple):
            continue
        if depth >= limits.json_depth_max:
            return path, "-", DEPTH_RULE
        if isinstance(item, dict):
            children = [(v, join_path(path, str(k)), depth + 1) for k, v in item.items()]
        else:
            children = [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
        stack.extend(reversed(children))  # report in document order
    return None


def join_path(parent: str, key: str) -> str:
    """`parent.key`, or `key` at the top level."""
    return f"{parent}.{key}" if parent else key
