"""The control plane's events (kernel/control.py), part of the event catalog (kernel/events.py):
an agent's request to start a child run is recorded with its verdict, so replay and audit see
the definition it wrote, the child's id, or the quota that refused it.

The request itself is the tool call in `agent.turn.completed` (its arguments); these events say
what the kernel decided of it and when the child ended. The tool call's result, which the
agent sees next turn, is the `agent.tool.completed` that follows a refusal or the child's end.
"""

from __future__ import annotations

import msgspec

from kernel.event_base import NULL, StepEvent
from kernel.workflow import WorkflowDef


class ControlChildStarted(StepEvent, frozen=True, kw_only=True, tag="control.child.started"):
    """Tool call `index` of turn `turn` of agent loop `step_id` starts child run
    `child_run_id`: of the registered workflow `workflow`, or of `definition`, the workflow the
    agent wrote (validated like any registration, never registered), with `input`."""

    turn: int
    index: int
    call_id: str
    child_run_id: str
    workflow: str
    definition: WorkflowDef | None = None
    input: msgspec.Raw = NULL
    depth: int
    at_ms: int


class ControlChildRefused(StepEvent, frozen=True, kw_only=True, tag="control.child.refused"):
    """The kernel refused tool call `index`'s child run: `rule` names the quota or rule
    (`child_runs.max_active`, `child_runs.allow`, `definition`, ...); the message is what the
    agent sees as the call's result."""

    turn: int
    index: int
    call_id: str
    rule: str
    message: str
    at_ms: int


class ControlChildEnded(StepEvent, frozen=True, kw_only=True, tag="control.child.ended"):
    """Child run `child_run_id` reported its end (`status`: completed, failed, cancelled)."""

    turn: int
    index: int
    child_run_id: str
    status: str
    at_ms: int
