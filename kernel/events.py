"""The event catalog: the storage contract of every run's history.

Every event is a frozen, keyword-only, tagged msgspec Struct with a past-tense name and a dotted
tag, and carries its schema version `v` on the wire. A rename or type change is a new version
with a pure upcaster in `kernel/codec.py` and a golden file of the old bytes; new fields get
defaults. Events accept unknown fields, so an old reader skips what a newer writer added.

A history message is a `Decision`: the command and every event decided from it, appended
together in one publish so an audit can re-run `decide` and compare.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from kernel.agent_events import (
    AgentLimitReached,
    AgentToolCall,
    AgentToolCompleted,
    AgentToolFailed,
    AgentToolLost,
    AgentToolScheduled,
    AgentTurnCompleted,
    AgentTurnFailed,
    AgentTurnLost,
    AgentTurnScheduled,
)
from kernel.commands import StoredCommand
from kernel.control_events import (
    ControlChildAsked,
    ControlChildEnded,
    ControlChildRefused,
    ControlChildStarted,
    ControlTreeGranted,
    ControlTreeRefused,
    ControlTreeReleased,
)
from kernel.event_base import (
    NULL,
    CompensationOutcome,
    ErrorInfo,
    ErrorKind,
    Event,
    RunFailureStatus,
    StepEvent,
)
from kernel.workflow import StepDef, WorkflowDef


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    run_id: str
    workflow: WorkflowDef
    input: msgspec.Raw
    at_ms: int
    seed: int = 0
    parent_run_id: str | None = None
    parent_step_id: str = ""  # the parent's sub_workflow step, for a child run
    depth: int = 0  # sub-workflow depth (a root run is 0)
    detached: bool = False  # a detached child reports only its start to its parent
    continued_from: str | None = None  # the run this one continues as new (kernel.run_links)
    chain_root: str = ""  # the first run of its continue-as-new chain ("" for a root run)
    chain_index: int = 0  # its position in that chain (the root is 0)
    # an agent's child run: the root run whose quotas count it and the root's agent loop step
    # (kernel/control.py; unset, not encoded, for any other run)
    control_root: str | msgspec.UnsetType = msgspec.UNSET
    control_root_step: str | msgspec.UnsetType = msgspec.UNSET


class StepScheduled(Event, frozen=True, kw_only=True, tag="step.scheduled"):
    step_id: str
    attempt: int
    input: msgspec.Raw
    at_ms: int
    deadline_ms: int | None = None


class StepStarted(Event, frozen=True, kw_only=True, tag="step.started"):
    step_id: str
    attempt: int
    worker_id: str
    at_ms: int


class StepCompleted(Event, frozen=True, kw_only=True, tag="step.completed"):
    step_id: str
    attempt: int
    output: msgspec.Raw
    at_ms: int


class StepFailed(Event, frozen=True, kw_only=True, tag="step.failed"):
    """An attempt failed; `will_retry` says whether a `step.retry_scheduled` follows.

    Version 2 replaced v1's `error: str` and `retryable: bool` with a structured `error`.
    """

    v: int = 2
    step_id: str
    attempt: int
    error: ErrorInfo
    will_retry: bool
    at_ms: int


class StepRetryScheduled(Event, frozen=True, kw_only=True, tag="step.retry_scheduled"):
    step_id: str
    attempt: int  # the attempt that will run at `due_at_ms`
    delay_ms: int
    due_at_ms: int
    at_ms: int


class StepTimedOut(Event, frozen=True, kw_only=True, tag="step.timed_out"):
    step_id: str
    attempt: int
    will_retry: bool
    at_ms: int
    error: ErrorInfo = ErrorInfo(message="step timed out", kind="timeout")


class StepLost(Event, frozen=True, kw_only=True, tag="step.lost"):
    """An attempt's worker vanished (its task was delivered again): not a failure the handler
    reported, so it does not count against `max_attempts`; attempt `attempt + 1` follows at
    once, up to `limits.lost_attempts_max` lost attempts of the step."""

    step_id: str
    attempt: int
    error: ErrorInfo
    at_ms: int


class StepSkipped(Event, frozen=True, kw_only=True, tag="step.skipped"):
    step_id: str
    reason: str
    at_ms: int


class StepRecovered(Event, frozen=True, kw_only=True, tag="step.recovered"):
    """A failed step's on_failure handler completed; the run goes on with its output."""

    step_id: str
    handler_step_id: str
    output: msgspec.Raw
    at_ms: int


class CompensationStarted(Event, frozen=True, kw_only=True, tag="run.compensation_started"):
    """The run is failing (or cancelled); these steps are compensated in this order."""

    steps: tuple[str, ...]
    outcome: CompensationOutcome
    error: ErrorInfo
    failed_step_id: str = ""
    at_ms: int


class StepCompensated(Event, frozen=True, kw_only=True, tag="step.compensated"):
    step_id: str
    handler_step_id: str
    at_ms: int


class RunCompleted(Event, frozen=True, kw_only=True, tag="run.completed"):
    output: msgspec.Raw
    at_ms: int


class RunFailed(Event, frozen=True, kw_only=True, tag="run.failed"):
    error: ErrorInfo
    status: RunFailureStatus = "failed"
    failed_step_id: str = ""
    at_ms: int


class RunCancelRequested(Event, frozen=True, kw_only=True, tag="run.cancel_requested"):
    reason: str
    at_ms: int


class RunCancelled(Event, frozen=True, kw_only=True, tag="run.cancelled"):
    reason: str
    at_ms: int


class TimerStarted(StepEvent, frozen=True, kw_only=True, tag="timer.started"):
    """A durable timer of a step (a `sleep`) was armed to fire at `fire_at_ms`."""

    timer_id: str
    fire_at_ms: int
    at_ms: int


class TimerFired(StepEvent, frozen=True, kw_only=True, tag="timer.fired"):
    timer_id: str
    at_ms: int


class SignalReceived(Event, frozen=True, kw_only=True, tag="signal.received"):
    """A named signal arrived for the run (kept in order; consumed by `wait_signal` steps)."""

    name: str
    payload: msgspec.Raw
    at_ms: int
    signal_id: str = ""  # the sender's identity of the signal ("" for an old sender)


class SignalConsumed(StepEvent, frozen=True, kw_only=True, tag="signal.consumed"):
    """A `wait_signal` step took the signal at `signal_index` (its position in the run)."""

    signal_index: int
    at_ms: int


class ChildStarted(StepEvent, frozen=True, kw_only=True, tag="child.started"):
    """A `sub_workflow` step's attempt starts the child run `child_run_id` of `workflow`."""

    attempt: int
    child_run_id: str
    workflow: str
    detached: bool = False
    at_ms: int


class ChildCompleted(StepEvent, frozen=True, kw_only=True, tag="child.completed"):
    """The child run completed (or, when detached, started) with `output`."""

    child_run_id: str
    output: msgspec.Raw
    at_ms: int


class ChildFailed(StepEvent, frozen=True, kw_only=True, tag="child.failed"):
    """The child run failed, was cancelled, or could not start (`status` says which)."""

    child_run_id: str
    status: Literal["failed", "cancelled"]
    error: ErrorInfo
    at_ms: int


class EventReceived(StepEvent, frozen=True, kw_only=True, tag="event.received"):
    """A `wait_for_event` step took the external event `event_seq` (it matched)."""

    name: str
    event_seq: int
    payload: msgspec.Raw
    at_ms: int


class PlannerMaterialized(StepEvent, frozen=True, kw_only=True, tag="planner.materialized"):
    """A planner's plan was valid: its steps, ids namespaced `<planner>.<id>` and dependencies
    rewritten, are appended to the run as children of `step_id` (an empty plan appends none)."""

    attempt: int
    steps: tuple[StepDef, ...]
    at_ms: int


class PlannerRejected(StepEvent, frozen=True, kw_only=True, tag="planner.rejected"):
    """A planner's plan was invalid: every problem found (the attempt fails with them)."""

    attempt: int
    problems: tuple[str, ...]
    at_ms: int


class LogRecorded(StepEvent, frozen=True, kw_only=True, tag="log.recorded"):
    """A `log` step recorded `message` at `level` in the run's history."""

    attempt: int
    level: str
    message: str
    at_ms: int


class ResponseRecorded(StepEvent, frozen=True, kw_only=True, tag="response.recorded"):
    """A `respond` step said what the HTTP request that started the run is answered with
    (`headers` as (name, value) pairs; only a run's first response answers)."""

    attempt: int
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: msgspec.Raw = NULL
    at_ms: int


class MapExpanded(StepEvent, frozen=True, kw_only=True, tag="map.expanded"):
    """A map's attempt read `count` items from its input (one task each)."""

    attempt: int
    count: int
    at_ms: int


class MapItemScheduled(StepEvent, frozen=True, kw_only=True, tag="map.item.scheduled"):
    """A task message is out for `attempt` of item `index` (its input is that item)."""

    index: int
    attempt: int
    at_ms: int
    deadline_ms: int | None = None


class MapItemCompleted(StepEvent, frozen=True, kw_only=True, tag="map.item.completed"):
    index: int
    attempt: int
    output: msgspec.Raw
    at_ms: int


class MapItemFailed(StepEvent, frozen=True, kw_only=True, tag="map.item.failed"):
    """An item's attempt failed; with `will_retry` the next one is due at `due_at_ms`."""

    index: int
    attempt: int
    error: ErrorInfo
    will_retry: bool
    at_ms: int
    due_at_ms: int | None = None


class MapItemLost(StepEvent, frozen=True, kw_only=True, tag="map.item.lost"):
    """An item's attempt was lost (its worker vanished); attempt `attempt + 1` follows at once
    and does not count against the map's retry policy (kernel.events.StepLost)."""

    index: int
    attempt: int
    error: ErrorInfo
    at_ms: int


ApprovalDecision = Literal["approve", "reject"]


class ApprovalRequested(StepEvent, frozen=True, kw_only=True, tag="approval.requested"):
    """A step halts for a human decision (steps/approvals.py). `key` names the approval in the
    run (the step id for an `approval` step; `<step>.<id>` for one of an agent's tool calls)."""

    key: str
    attempt: int
    question: str
    description: str = ""
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    deadline_ms: int | None = None
    on_timeout: Literal["approve", "reject", "fail"] = "fail"
    at_ms: int


class ApprovalResolved(StepEvent, frozen=True, kw_only=True, tag="approval.resolved"):
    """Someone (`by`; "timeout" when the deadline passed) approved or rejected."""

    key: str
    decision: ApprovalDecision
    by: str
    comment: str = ""
    data: msgspec.Raw = NULL
    timed_out: bool = False
    at_ms: int


class RunContinuedAsNew(Event, frozen=True, kw_only=True, tag="run.continued_as_new"):
    """The run ended by continuing as the fresh run `continued_as` of `workflow` with `input`
    (steps/continuation.py, kernel.run_links); a terminal event."""

    step_id: str
    continued_as: str
    workflow: str
    input: msgspec.Raw
    at_ms: int


# --- run lifecycle operations (kernel.reopen) ----------------------------------------------


class RunReopened(Event, frozen=True, kw_only=True, tag="run.reopened"):
    """An ended run (failed, cancelled, terminated) goes on in place: the steps in `reset`
    (from `from_steps` and everything downstream of them, and every step that had not
    finished) are pending again; the outputs of the others are kept (`dagnats run retry`)."""

    from_steps: tuple[str, ...]
    reset: tuple[str, ...]
    reason: str = ""
    at_ms: int


class RunTerminated(Event, frozen=True, kw_only=True, tag="run.terminated"):
    """The run ended at once without compensation (`dagnats run terminate`); a terminal event."""

    reason: str
    at_ms: int


class DeadLetterDiscarded(Event, frozen=True, kw_only=True, tag="dead_letter.discarded"):
    """Someone set aside the dead letter of `step_id`'s failed `attempt` (`dagnats dlq
    discard`): it leaves the dead-letter list; the run stays as it was."""

    step_id: str
    attempt: int
    reason: str = ""
    at_ms: int


# -- admission (kernel/admission_run.py) ----------------------------------------------------

HeldReason = Literal["pending", "scheduled", "skipped"]


class RunQueued(Event, frozen=True, kw_only=True, tag="run.queued"):
    """The run waits before its first step: for a slot of its admission gate (`pending`), for
    `run_at_ms` (`scheduled`), or it was skipped (a singleton key held by `holder_run_id`)."""

    reason: HeldReason
    gate_id: str = ""
    holder_run_id: str = ""
    run_at_ms: int | None = None
    at_ms: int


class RunAdmitted(Event, frozen=True, kw_only=True, tag="run.admitted"):
    """A held run goes on: its steps may start."""

    at_ms: int


class TaskDeferred(Event, frozen=True, kw_only=True, tag="task.deferred"):
    """A task attempt waits before it is published: `rate_limited` until `until_ms` (a
    durable timer), or for a slot of its task type (`task_concurrency`)."""

    step_id: str
    attempt: int
    reason: Literal["rate_limited", "task_concurrency"]
    limiter_id: str
    until_ms: int | None = None
    at_ms: int


class TaskReleased(Event, frozen=True, kw_only=True, tag="task.released"):
    """A deferred task attempt is published now."""

    step_id: str
    attempt: int
    at_ms: int


AnyEvent = (
    RunStarted
    | StepScheduled
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepRetryScheduled
    | StepTimedOut
    | StepLost
    | StepSkipped
    | StepRecovered
    | CompensationStarted
    | StepCompensated
    | RunCompleted
    | RunFailed
    | RunCancelRequested
    | RunCancelled
    | TimerStarted
    | TimerFired
    | SignalReceived
    | SignalConsumed
    | PlannerMaterialized
    | PlannerRejected
    | LogRecorded
    | ResponseRecorded
    | MapExpanded
    | MapItemScheduled
    | MapItemCompleted
    | MapItemFailed
    | MapItemLost
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | EventReceived
    | AgentTurnScheduled
    | AgentTurnFailed
    | AgentTurnLost
    | AgentTurnCompleted
    | AgentToolScheduled
    | AgentToolFailed
    | AgentToolLost
    | AgentToolCompleted
    | AgentLimitReached
    | ApprovalRequested
    | ApprovalResolved
    | RunContinuedAsNew
    | RunReopened
    | RunTerminated
    | DeadLetterDiscarded
    | RunQueued
    | RunAdmitted
    | TaskDeferred
    | TaskReleased
    # -- control plane (kernel/control_events.py) --
    | ControlChildStarted
    | ControlChildRefused
    | ControlChildEnded
    | ControlChildAsked
    | ControlTreeGranted
    | ControlTreeRefused
    | ControlTreeReleased
)

EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)  # in the union's order

TERMINAL_EVENT_TYPES: tuple[type[Event], ...] = (
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunContinuedAsNew,
    RunTerminated,
)


def event_tag(event_type: type[Event]) -> str:
    """The dotted tag of an event type."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str), f"{event_type.__name__} has no string tag"
    return tag


def current_version(event_type: type[Event]) -> int:
    """The schema version this code writes for an event type."""
    for field in msgspec.structs.fields(event_type):
        if field.name == "v":
            assert isinstance(field.default, int) and field.default >= 1
            return field.default
    raise AssertionError(f"{event_type.__name__} has no version field")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One history message: the command and the events decided from it (never empty)."""

    command: StoredCommand  # (a DecideAll: several commands of one run, kernel/batch.py)
    events: tuple[AnyEvent, ...]


# Re-exported: the catalog is one import (`from kernel.events import ...`).
__all__ = [
    "NULL",
    "AgentLimitReached",
    "AgentToolCall",
    "AgentToolCompleted",
    "AgentToolFailed",
    "AgentToolLost",
    "AgentToolScheduled",
    "AgentTurnCompleted",
    "AgentTurnFailed",
    "AgentTurnLost",
    "AgentTurnScheduled",
    "CompensationOutcome",
    "ControlChildAsked",
    "ControlChildEnded",
    "ControlChildRefused",
    "ControlChildStarted",
    "ControlTreeGranted",
    "ControlTreeRefused",
    "ControlTreeReleased",
    "ErrorInfo",
    "ErrorKind",
    "Event",
    "RunFailureStatus",
    "StepEvent",
]
