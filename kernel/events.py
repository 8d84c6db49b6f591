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

from kernel.commands import AnyCommand
from kernel.workflow import StepDef, WorkflowDef

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


class AgentToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call an agent turn asked for: its id (unique in the turn), tool name, arguments."""

    id: str
    name: str
    arguments: msgspec.Raw = NULL


class AgentTurnScheduled(StepEvent, frozen=True, kw_only=True, tag="agent.turn.scheduled"):
    """A task message is out for `attempt` of turn `turn` of an agent loop."""

    turn: int
    attempt: int
    at_ms: int
    deadline_ms: int | None = None
    # Turn 1 of a loop resumed in a fresh run (continue-as-new): what the old run carried
    # (null: nothing).
    carried_state: msgspec.Raw = NULL
    carried_tool_results: msgspec.Raw = NULL


class AgentTurnFailed(StepEvent, frozen=True, kw_only=True, tag="agent.turn.failed"):
    """A turn's attempt failed; with `will_retry` the next attempt is due at `due_at_ms`,
    without it the agent loop fails."""

    turn: int
    attempt: int
    error: ErrorInfo
    will_retry: bool
    at_ms: int
    due_at_ms: int | None = None


class AgentTurnLost(StepEvent, frozen=True, kw_only=True, tag="agent.turn.lost"):
    """A turn's attempt was lost (its worker vanished); attempt `attempt + 1` follows at once
    and does not count against the loop's retry policy (kernel.events.StepLost)."""

    turn: int
    attempt: int
    error: ErrorInfo
    at_ms: int


class AgentTurnCompleted(StepEvent, frozen=True, kw_only=True, tag="agent.turn.completed"):
    """A turn's handler returned: `done` with the loop's `output`, or the `state` to carry
    and the `tool_calls` to run before the next turn; with the model usage it reported."""

    turn: int
    attempt: int
    done: bool
    state: msgspec.Raw = NULL
    output: msgspec.Raw = NULL
    tool_calls: tuple[AgentToolCall, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    at_ms: int


class AgentToolScheduled(StepEvent, frozen=True, kw_only=True, tag="agent.tool.scheduled"):
    """A task message is out for `attempt` of tool call `index` of turn `turn`."""

    turn: int
    index: int
    call_id: str
    name: str
    task: str
    attempt: int
    at_ms: int
    deadline_ms: int | None = None


class AgentToolFailed(StepEvent, frozen=True, kw_only=True, tag="agent.tool.failed"):
    """A tool call's attempt failed and is retried at `due_at_ms` (a failure for good is an
    `agent.tool.completed` whose result is the error)."""

    turn: int
    index: int
    attempt: int
    error: ErrorInfo
    at_ms: int
    due_at_ms: int


class AgentToolLost(StepEvent, frozen=True, kw_only=True, tag="agent.tool.lost"):
    """A tool call's attempt was lost (its worker vanished); attempt `attempt + 1` follows at
    once and does not count against the loop's retry policy (kernel.events.StepLost)."""

    turn: int
    index: int
    attempt: int
    error: ErrorInfo
    at_ms: int


class AgentToolCompleted(StepEvent, frozen=True, kw_only=True, tag="agent.tool.completed"):
    """A tool call's result, which the next turn sees: its `output` when `ok`, else `error`."""

    turn: int
    index: int
    attempt: int  # 0 for a call that never ran (a tool the loop does not know)
    ok: bool
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    at_ms: int


class AgentLimitReached(StepEvent, frozen=True, kw_only=True, tag="agent.limit.reached"):
    """An agent loop reached one of its bounds (`limit`: max_turns, max_duration, max_tokens,
    max_cost); `action` is its on_limit (fail, or complete with the last state)."""

    limit: str
    message: str
    action: str
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
)

EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)  # in the union's order

TERMINAL_EVENT_TYPES: tuple[type[Event], ...] = (
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunContinuedAsNew,
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

    command: AnyCommand
    events: tuple[AnyEvent, ...]
