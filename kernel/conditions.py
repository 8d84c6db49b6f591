"""Conditions on an external event's payload: `{"left", "op", "right"}`.

`left` is a dotted path into the event payload (`""` for the whole payload); `op` is one of
eq ne lt gt le ge in exists; `right` is resolved when it is a string naming a path of the run,
`input.<path>` (or `input`) or `step.<id>.output.<path>` (or `step.<id>.output`), else it is a
literal. Comparisons follow `skip_if`'s rules (numbers as floats, strings lexicographic, a
missing value or a type mismatch is false); `in` holds when `right` is an array holding `left`
or a string containing it; `exists` when `left` is present. Used by `wait_for_event` steps and
a workflow's `cancel_on`. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from kernel.errors import Problem, show_value
from kernel.payloads import _MISSING, compare, read_field

if TYPE_CHECKING:  # the workflow format imports this module; kernel.state imports that format
    from kernel.state import RunState

CONDITION_OPS: Final = ("eq", "ne", "lt", "gt", "le", "ge", "in", "exists")
CONDITION_FIELDS: Final = ("left", "op", "right")
_SYMBOLS: Final = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}


def condition_problems(document: object, path: str) -> tuple[Problem, ...]:
    """Every problem of a condition document, each named by its path."""
    if not isinstance(document, dict):
        rule = 'must be an object {"left": path, "op": eq|ne|lt|gt|le|ge|in|exists, "right": v}'
        return (Problem(path=path, value=show_value(document), rule=rule),)
    problems = [
        Problem(
            path=f"{path}.{key}",
            value=show_value(document[key]),
            rule=f"unknown field (allowed: {', '.join(CONDITION_FIELDS)})",
        )
        for key in document
        if key not in CONDITION_FIELDS
    ]
    left = document.get("left")
    if not isinstance(left, str):
        rule = "is required: a dotted path into the event payload ('' for all of it)"
        problems.append(Problem(path=f"{path}.left", value=show_value(left), rule=rule))
    op = document.get("op")
    if op not in CONDITION_OPS:
        rule = f"must be one of {' '.join(CONDITION_OPS)}"
        problems.append(Problem(path=f"{path}.op", value=show_value(op), rule=rule))
    elif op != "exists" and "right" not in document:
        rule = f"is required for op {op!r}: a literal, 'input.<path>' or 'step.<id>.output.<path>'"
        problems.append(Problem(path=f"{path}.right", value="(missing)", rule=rule))
    return tuple(problems)


def _resolve_right(value: object, state: RunState) -> object:
    if not isinstance(value, str):
        return value
    if value == "input" or value.startswith("input."):
        return _at(state.input, value[len("input.") :] if value != "input" else "")
    if value.startswith("step."):
        step_id, found, rest = value[len("step.") :].partition(".output")
        step = state.step(step_id) if found else None
        if step is not None and (rest == "" or rest.startswith(".")):
            return _at(step.output, rest[1:])
    return value


def _at(payload: msgspec.Raw, path: str) -> object:
    if path == "":
        try:
            return msgspec.json.decode(bytes(payload))
        except msgspec.DecodeError:
            return _MISSING
    return read_field(payload, path)


def condition_holds(condition: dict[str, object], payload: msgspec.Raw, state: RunState) -> bool:
    """Whether a (validated) condition holds on an event payload, in a run's state."""
    left_path = condition.get("left")
    op = condition.get("op")
    assert isinstance(left_path, str) and op in CONDITION_OPS, condition
    left = _at(payload, left_path)
    if op == "exists":
        return left is not _MISSING
    right = _resolve_right(condition.get("right"), state)
    if op == "in":
        if left is _MISSING:
            return False
        if isinstance(right, list):
            return left in right
        return isinstance(right, str) and isinstance(left, str) and left in right
    assert isinstance(op, str)
    return compare(left, _SYMBOLS[op], right)
