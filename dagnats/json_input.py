"""Strict JSON at the edge: what a user hands in is taken as written or refused, never changed.

Python's `json` and msgspec change some inputs without a word: `NaN` and `Infinity` become
`null` on the way out, a key written twice keeps its last value, a float too large for a
double becomes `inf`, bytes become base64. At the edges (run inputs, signal and event
payloads, approval data, workflow files) these are refused here with an error naming the
field path, the value and the rule; so is nesting deeper than `limits.json_depth_max` and text
that is not UTF-8. Every walk is iterative (no recursion on user data).

This is the shell's (the kernel may not import `json`); `check_workflow_keys` gives the
workflow reader (`kernel.workflow.parse`, which decodes with msgspec) the problems named at their
path: msgspec cannot see a key written twice and names NaN only as a syntax error. No I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

from kernel import limits
from kernel.errors import DagnatsError, Problem, WorkflowInvalidError

NON_FINITE_RULE: Final = (
    "is not a finite number: NaN and Infinity are refused (JSON has no such value)"
)
DUPLICATE_RULE: Final = "is written twice in one object: duplicate keys are refused"
SYNTAX_RULE: Final = "is not valid JSON"
BYTES_RULE: Final = "is bytes, not JSON: decode it to text first (or pass base64 as a string)"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
shown_chars_max: Final = 60


class JsonInputError(DagnatsError):
    """A JSON value handed in at the edge that cannot be taken as written.

    Attributes name the field (`input`, `payload`, ...), the path inside it, and the rule.
    """

    def __init__(self, field: str, path: str, shown: str, rule: str) -> None:
        self.field = field
        self.path = path
        self.shown = shown
        self.rule = rule
        where = _under(field, path)
        super().__init__(f"{where}: {shown} {rule}" if shown else f"{where} {rule}")


class _NonFinite:
    """Stands for a NaN / Infinity literal (or an overflowing float) until it is reported."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Duplicated(dict[str, object]):
    """An object in which a key was written twice (the first such key is kept)."""

    duplicate: str = ""


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    duplicate: str | None = None
    for key, value in pairs:
        if key in result and duplicate is None:
            duplicate = key
        result[key] = value
    if duplicate is None:
        return result
    marked = _Duplicated(result)
    marked.duplicate = duplicate
    return marked


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def loads(source: str | bytes, field: str) -> object:
    """The value of JSON text, refusing what JSON libraries would change silently.

    Args:
        source: the text (bytes must be UTF-8).
        field: what the text is (`input`, `payload`): it starts every error's path.

    Raises:
        JsonInputError: not UTF-8, not JSON, NaN/Infinity, a duplicate key, too deep.
    """
    if isinstance(source, bytes):
        data = source
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = data[error.start : error.start + 1].hex()
            raise JsonInputError(
                field, "", "", f"is not UTF-8 text (byte 0x{byte} at offset {error.start})"
            ) from None
    try:
        value = json.loads(
            source, object_pairs_hook=_pairs, parse_constant=_NonFinite, parse_float=_float
        )
    except RecursionError:
        raise JsonInputError(field, "", "", _depth_rule()) from None
    except ValueError as error:  # json.JSONDecodeError
        raise JsonInputError(field, "", "", f"{SYNTAX_RULE}: {error}") from None
    check_value(value, field)
    return value


def check_value(value: object, field: str) -> None:
    """Refuse a value that JSON encoding would change (NaN, Infinity, bytes), a parsed object
    with a duplicate key, and nesting deeper than `limits.json_depth_max`.

    Raises:
        JsonInputError: naming the path inside `field`, the value and the rule.
    """
    problem = first_problem(value)
    if problem is not None:
        path, shown, rule = problem
        raise JsonInputError(field, path, shown, rule)


def first_problem(value: object) -> tuple[str, str, str] | None:
    """The first (path, shown value, rule) that `check_value` refuses, or None."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, _NonFinite):
            return path, item.text, NON_FINITE_RULE
        if isinstance(item, float) and not math.isfinite(item):
            return path, repr(item), NON_FINITE_RULE
        if isinstance(item, bytes | bytearray | memoryview):
            return path, "", BYTES_RULE
        if not isinstance(item, dict | list | tuple):
            continue
        if depth >= limits.json_depth_max:
            return path, "", _depth_rule()
        if isinstance(item, _Duplicated):
            return join(path, item.duplicate), "", DUPLICATE_RULE
        if isinstance(item, dict):
            children = [(v, join(path, str(k)), depth + 1) for k, v in item.items()]
        else:
            children = [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
        stack.extend(reversed(children))  # report in document order
    return None


def check_workflow_keys(source: object) -> None:
    """Refuse a workflow's JSON text with a key written twice, NaN or Infinity, nesting
    deeper than `limits.json_depth_max`, or bytes that are not UTF-8, naming the path.

    Text that is not JSON passes: the workflow reader reports it (at `$`).

    Raises:
        WorkflowInvalidError: one problem naming the path, the value and the rule.
    """
    if not isinstance(source, str | bytes | bytearray):
        return
    if len(source) > limits.workflow_bytes_max:
        return  # the reader refuses its size
    try:
        loads(bytes(source) if isinstance(source, bytearray) else source, "")
    except JsonInputError as error:
        if not error.rule.startswith(SYNTAX_RULE):  # the reader names a syntax error itself
            problem = Problem(path=error.path or "$", value=error.shown or "-", rule=error.rule)
            raise WorkflowInvalidError((problem,), workflow="") from None


def join(path: str, key: str) -> str:
    """`path.key` (or `path["odd key"]`)."""
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key[:shown_chars_max])}]"


def _under(field: str, path: str) -> str:
    """The path of `path` (relative) inside `field`: `input.a[0]`, `input[0]`, `input`."""
    if not path:
        return field or "$"
    if not field or path.startswith("["):
        return f"{field}{path}"
    return f"{field}.{path}"


def _depth_rule() -> str:
    return (
        f"nests deeper than {limits.json_depth_max} levels of arrays and objects "
        "(json_depth_max)"
    )


__all__ = [
    "JsonInputError",
    "check_value",
    "check_workflow_keys",
    "first_problem",
    "join",
    "loads",
]
