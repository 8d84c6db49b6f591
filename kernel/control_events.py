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


# -- quotas per root run: a descendant asks the root (kernel/control.py) --------------------


class ControlChildAsked(StepEvent, frozen=True, kw_only=True, tag="control.child.asked"):
    """A descendant run's tool call `index` passed the run's own rules; the child
    (`child_run_id`, its workflow, definition and input) waits for the root run's verdict on
    the tree's quotas (`AskChild` to the root)."""

    turn: int
    index: int
    call_id: str
    child_run_id: str
    workflow: str
    definition: WorkflowDef | None = None
    input: msgspec.Raw = NULL
    root_run_id: str
    at_ms: int


class ControlTreeGranted(StepEvent, frozen=True, kw_only=True, tag="control.tree.granted"):
    """At the root run (its agent loop `step_id`): descendant `requester_run_id` may start
    `child_run_id`; the root counts it until its release."""

    child_run_id: str
    requester_run_id: str
    requester_step_id: str
    turn: int
    index: int
    writes: bool = False
    at_ms: int


class ControlTreeRefused(StepEvent, frozen=True, kw_only=True, tag="control.tree.refused"):
    """At the root run: the tree's quota `rule` refuses descendant `requester_run_id`'s child."""

    child_run_id: str
    requester_run_id: str
    requester_step_id: str
    turn: int
    index: int
    rule: str
    message: str
    at_ms: int


class ControlTreeReleased(StepEvent, frozen=True, kw_only=True, tag="control.tree.released"):
    """At the root run: a descendant's child `child_run_id` ended; the root no longer counts
    it among the tree's active children."""

    child_run_id: str
    at_ms: int
