"""The project's exception types (one base, subclasses only where callers differ), and the
validation `Problem` with `show_value`, which describes a bad value for one.

Errors name the field, the bad value and the rule, and carry ids as attributes.
"""

from __future__ import annotations

from typing import Final

import msgspec

VALUE_TEXT_LENGTH_MAX: Final = 80


class DagnatsError(Exception):
    """Base of every error the project raises on purpose."""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One validation problem: where (a JSON path), what was found, which rule it breaks."""

    path: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.value} — {self.rule}"


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


class WorkflowInvalidError(DagnatsError):
    """A workflow definition broke one or more rules; `problems` lists every one found."""

    def __init__(self, problems: tuple[Problem, ...], *, workflow: str = "") -> None:
        assert problems, "an invalid workflow has at least one problem"
        self.problems = problems
        self.workflow = workflow
        name = f"workflow {workflow!r}" if workflow else "workflow"
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{name} is invalid ({len(problems)} problem(s)):\n{lines}")


class DecodeError(DagnatsError):
    """Bytes that are not a valid encoded event, command or decision."""


class UnknownEventTypeError(DecodeError):
    """An event tag this code does not know."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        super().__init__(f"unknown event type {tag!r}: this code knows no such event")


class UnknownEventVersionError(DecodeError):
    """An event version newer than this code, or one with no upcaster."""

    def __init__(self, tag: str, version: int, current: int) -> None:
        self.tag = tag
        self.version = version
        self.current = current
        super().__init__(
            f"event {tag!r} has schema version {version}; this code reads versions 1..{current}"
        )


class PayloadTooLargeError(DagnatsError):
    """A payload over `limits.payload_bytes_max` (or another named byte limit)."""

    def __init__(self, field: str, size: int, limit: int) -> None:
        self.field = field
        self.size = size
        self.limit = limit
        super().__init__(f"{field} is {size} bytes; the limit is {limit} bytes")


class AppendConflictError(DagnatsError):
    """Another writer appended to the run's history first (optimistic concurrency)."""

    def __init__(self, run_id: str, expected_last_seq: int) -> None:
        self.run_id = run_id
        self.expected_last_seq = expected_last_seq
        super().__init__(
            f"run {run_id!r}: history moved past sequence {expected_last_seq}; reload and retry"
        )
