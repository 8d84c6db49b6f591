"""The bases of the event catalog (kernel/events.py): `Event`, `StepEvent`, `ErrorInfo`."""

from __future__ import annotations

from typing import Literal

import msgspec

NULL = msgspec.Raw(b"null")

ErrorKind = Literal[
    "error",  # the handler raised; retryable
    "non_retryable",  # the handler said: do not retry
    "timeout",  # the step or run deadline passed
    "heartbeat_timeout",  # the worker stopped heartbeating (older workers; read as lost)
    "lost",  # the worker that had the attempt vanished (more than lost_attempts_max times)
    "invalid_output",  # the output could not be encoded or was over the payload limit
    "invalid_input",  # the step's resolved input was over the payload limit
    "handler_failed",  # an on_failure or compensation handler failed
    "cancelled",
]
RunFailureStatus = Literal["failed", "compensate_failed"]
CompensationOutcome = Literal["failed", "cancelled"]


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong: a message, its kind, and a short traceback when there was one."""

    message: str
    kind: ErrorKind = "error"
    traceback: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event; `v` is the schema version of the event's tag."""

    v: int = 1


class StepEvent(Event, frozen=True, kw_only=True):
    """Base of the events a step type owns (evolved by its module in `steps/`)."""

    step_id: str
