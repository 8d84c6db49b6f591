"""JSON payload helpers for decide: compose objects, read fields, evaluate `skip_if`.

Payloads stay `msgspec.Raw` (the exact JSON bytes) from worker to history to the next worker;
they are decoded only to evaluate a condition.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # kernel.conditions imports this module, and the workflow format imports that
    from kernel.workflow.model import SkipIf

NULL = msgspec.Raw(b"null")


class Missing:
    """The value of a field a payload does not hold. Its repr is stable text, never an object
    address: it may be shown in an error that is recorded in history, which must replay to
    the same bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "missing"


_MISSING = Missing()


def compose_object(pairs: Iterable[tuple[str, msgspec.Raw | None]]) -> msgspec.Raw:
    """A JSON object of the given keys and raw values (None becomes null), in order."""
    parts = [
        msgspec.json.encode(key) + b":" + (bytes(value) if value is not None else b"null")
        for key, value in pairs
    ]
    return msgspec.Raw(b"{" + b",".join(parts) + b"}")


def encode(value: object) -> msgspec.Raw:
    """Any JSON-encodable value as raw JSON."""
    return msgspec.Raw(msgspec.json.encode(value))


def read_field(payload: msgspec.Raw | None, path: str) -> object:
    """The value at a dotted `path` in a JSON object payload, or `_MISSING`."""
    if payload is None:
        return _MISSING
    try:
        current: object = msgspec.json.decode(bytes(payload))
    except msgspec.DecodeError:
        return _MISSING
    for key in path.split("."):
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            return _MISSING
    return current


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare(left: object, op: str, right: object) -> bool:
    """The seed's comparison rules: numbers as floats, strings lexicographic, booleans and
    null only `==`/`!=`; a missing value or a type mismatch compares false (never skips)."""
    if left is _MISSING:
        return False
    if _is_number(left) and _is_number(right):
        assert isinstance(left, int | float) and isinstance(right, int | float)
        a, b = float(left), float(right)
        return _ordered(a, op, b)
    if isinstance(left, str) and isinstance(right, str):
        return _ordered(left, op, right)
    if type(left) is not type(right):
        return False
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    return False


_ORDERINGS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


def _ordered(a: float | str, op: str, b: float | str) -> bool:
    assert type(a) is type(b), "only values of one type are ordered"
    ordering = _ORDERINGS.get(op)
    return bool(ordering(a, b)) if ordering is not None else False


def skip_applies(condition: SkipIf, dependency_output: msgspec.Raw | None) -> bool:
    """Whether `condition` holds on the dependency's output (so the step is skipped)."""
    left = read_field(dependency_output, condition.field)
    right = msgspec.json.decode(bytes(condition.value))
    return compare(left, condition.op, right)
