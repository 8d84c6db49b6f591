"""Effects: what the shell must do after events are appended. Data only, never stored.

The shell executes them with an exhaustive `match` ending in `assert_never`. Every effect is
idempotent: task messages carry the message id `<run>:<step>:<attempt>`, timers a stable id.
"""

from __future__ import annotations

import msgspec

from kernel.commands import FireTimer


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every effect."""

    run_id: str


class EnqueueTask(Effect, frozen=True, kw_only=True):
    """Publish a task message for a worker (deduplicated on `msg_id`)."""

    step_id: str
    attempt: int
    task: str
    input: msgspec.Raw
    metadata: msgspec.Raw
    msg_id: str
    deadline_ms: int | None = None


class ArmTimer(Effect, frozen=True, kw_only=True):
    """Arm a durable timer that delivers `command` at `fire_at_ms`."""

    timer_id: str
    fire_at_ms: int
    command: FireTimer


class CancelTimer(Effect, frozen=True, kw_only=True):
    timer_id: str


AnyEffect = EnqueueTask | ArmTimer | CancelTimer


def task_msg_id(run_id: str, step_id: str, attempt: int) -> str:
    """The idempotency key of one attempt: `<run>:<step>:<attempt>`."""
    assert attempt >= 1, f"attempt {attempt} must be >= 1"
    return f"{run_id}:{step_id}:{attempt}"
