"""Commands: what clients, workers and timers ask of a run (imperative names).

The shell stamps `at_ms` (the time) and `seed` (randomness, e.g. retry jitter) into every
command; `decide` copies what it needs into events, so a run replays with no clock. Commands
are recorded in history with the events decided from them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from kernel.workflow import WorkflowDef

# "lost": the worker that had the attempt vanished (it was delivered again); not a failure the
# handler reported, so it does not count against the retry policy. "heartbeat_timeout" is what
# older workers report for the same case and is read as "lost" (kernel.outcome.LOST_KINDS).
FailureKind = Literal["error", "non_retryable", "heartbeat_timeout", "invalid_output", "lost"]
# run_at, task_release: admission (kernel/admission_run.py)
TimerKind = Literal["step_timeout", "retry", "run_timeout", "step", "run_at", "task_release"]


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every command: which run, when (stamped by the shell), and a seed."""

    run_id: str
    at_ms: int
    seed: int = 0


class StartRun(Command, frozen=True, kw_only=True, tag="start_run"):
    """Start a run of `workflow` (the definition itself, so the run replays on its own)."""

    workflow: WorkflowDef
    input: msgspec.Raw = msgspec.Raw(b"null")
    parent_run_id: str | None = None
    parent_step_id: str = ""  # the parent's sub_workflow step (with parent_run_id)
    depth: int = 0  # 0 for a root run; a child is one deeper than its parent
    detached: bool = False  # a detached child does not report its end to its parent
    continued_from: str | None = None  # the run this one continues as new
    chain_root: str = ""  # the first run of the continue-as-new chain
    chain_index: int = 0  # the position in that chain (the root is 0)
    # an agent's child run (kernel/control.py): the root run whose quotas count it, and the
    # root's agent loop step ("" for a root run or a child that is no agent's)
    control_root: str | msgspec.UnsetType = msgspec.UNSET
    control_root_step: str | msgspec.UnsetType = msgspec.UNSET


# A result's `life`: the life tag of the task it reports on (`<life>` of its message id
# `<run>:<step>:<attempt>~<life>`, kernel/effects.task_msg_id). A result of another life of
# the run (its id purged and started again while the old task ran) decides nothing. Unset in
# results of workers of before life tags (and then not checked).
Life = str | msgspec.UnsetType


class TaskStarted(Command, frozen=True, kw_only=True, tag="task_started"):
    step_id: str
    attempt: int
    worker_id: str = ""
    life: Life = msgspec.UNSET


class CompleteTask(Command, frozen=True, kw_only=True, tag="complete_task"):
    """An attempt finished. A worker that did not report TaskStarted says here who ran it and
    since when, so history still records `step.started` without an extra round trip."""

    step_id: str
    attempt: int
    output: msgspec.Raw = msgspec.Raw(b"null")
    worker_id: str = ""
    started_at_ms: int | None = None
    life: Life = msgspec.UNSET


class FailTask(Command, frozen=True, kw_only=True, tag="fail_task"):
    """An attempt failed. `retry_after_ms` is a worker's RetryAfter, replacing the backoff."""

    step_id: str
    attempt: int
    error: str
    kind: FailureKind = "error"
    traceback: str = ""
    retry_after_ms: int | None = None
    worker_id: str = ""
    started_at_ms: int | None = None
    life: Life = msgspec.UNSET


class FireTimer(Command, frozen=True, kw_only=True, tag="fire_timer"):
    """A durable timer fired. `timer_id` is stable, so a duplicate fire decides to nothing."""

    timer_id: str
    kind: TimerKind
    step_id: str = ""
    attempt: int = 0


class CancelRun(Command, frozen=True, kw_only=True, tag="cancel_run"):
    reason: str = ""


class SendSignal(Command, frozen=True, kw_only=True, tag="send_signal"):
    """Deliver a named signal with a JSON payload to a run. `signal_id` is the signal's
    identity, stamped once per send by the client: a redelivered command with an id the run
    already received decides to nothing ("" for old senders: no identity, never deduplicated)."""

    name: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    signal_id: str = ""


ChildStatus = Literal["started", "completed", "failed", "cancelled"]


class RecordChild(Command, frozen=True, kw_only=True, tag="record_child"):
    """A child run of a `sub_workflow` step reports to its parent: it started (a detached
    child) or ended. `error` says why a child failed or could not start."""

    step_id: str
    child_run_id: str
    status: ChildStatus
    output: msgspec.Raw = msgspec.Raw(b"null")
    error: str = ""
    retryable: bool = True  # False when the child could not start (its workflow is missing)


class DeliverEvent(Command, frozen=True, kw_only=True, tag="deliver_event"):
    """An external event (published by name, not to a run) for a run that may wait for it.
    `event_seq` is its sequence in the events stream (its identity); `at_ms` its publish time."""

    name: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    event_seq: int


class ResolveApproval(Command, frozen=True, kw_only=True, tag="resolve_approval"):
    """A human's decision on a pending approval (steps/approvals.py). `key` is the approval's
    name in the run: the step id of an `approval` step (the default when left empty)."""

    step_id: str
    decision: Literal["approve", "reject"]
    by: str = ""
    comment: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    key: str = ""


# --- run lifecycle operations (kernel.reopen) ----------------------------------------------


class ReopenRun(Command, frozen=True, kw_only=True, tag="reopen_run"):
    """Reopen an ended run in place (`dagnats run retry`): from `from_step` and everything
    downstream of it, or ("") from its failed steps. `reopens` is the run's reopen count the
    sender saw: a redelivered or raced reopen (the count moved on) decides to nothing."""

    from_step: str = ""
    reopens: int = 0
    reason: str = ""


class TerminateRun(Command, frozen=True, kw_only=True, tag="terminate_run"):
    """End a run at once, without compensation (`dagnats run terminate`)."""

    reason: str


class DiscardDeadLetter(Command, frozen=True, kw_only=True, tag="discard_dead_letter"):
    """Set aside the dead letter of `step_id`'s `attempt` (`dagnats dlq discard`)."""

    step_id: str
    attempt: int
    reason: str = ""


# -- admission (kernel/admission.py, kernel/admission_run.py) ------------------------------

AdmissionOutcome = Literal["admitted", "pending", "skipped", "invalid", "unknown"]


class AdmissionVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What a run's admission gate (or its input schema) decided for it, stamped by the engine.
    `holder_run_id`: the run holding a singleton key (skipped); `reason`: why it is invalid."""

    outcome: AdmissionOutcome
    gate_id: str = ""
    holder_run_id: str = ""
    reason: str = ""


class StartGated(Command, frozen=True, kw_only=True, tag="start_gated"):
    """A start the engine put through admission (a gated workflow or an input schema): the
    client's `start` and the verdict. Only the engine sends it."""

    start: StartRun
    verdict: AdmissionVerdict


class ScheduleRun(Command, frozen=True, kw_only=True, tag="schedule_run"):
    """Start `start` at `run_at_ms` (recorded now as `scheduled`; a durable timer starts it)."""

    start: StartRun
    run_at_ms: int


class AdmitRun(Command, frozen=True, kw_only=True, tag="admit_run"):
    """A held run (pending or scheduled) may go on: its gate granted a slot, or its time came.
    The engine stamps the verdict of the gate (None: the timer's fire, not yet asked)."""

    verdict: AdmissionVerdict | None = None


DeferReason = Literal["rate_limited", "task_concurrency"]


class DeferTask(Command, frozen=True, kw_only=True, tag="defer_task"):
    """A task attempt waits before it is published: for its rate limit's tokens (until
    `until_ms`, a durable timer) or for a slot of its task type (`until_ms` None). Only the
    engine sends it, from a limiter's decision (kernel/admission_flow.py)."""

    step_id: str
    attempt: int
    reason: DeferReason
    limiter_id: str
    until_ms: int | None = None


class ReleaseTask(Command, frozen=True, kw_only=True, tag="release_task"):
    """A deferred task attempt may be published now (its limiter granted it)."""

    step_id: str
    attempt: int


# -- control plane: quotas per root run (kernel/control.py) ---------------------------------


class AskChild(Command, frozen=True, kw_only=True, tag="control_ask"):
    """A descendant's agent asks the ROOT run (`run_id`, its agent loop `step_id`) to count a
    child run against the root's quotas: tool call `index` of `turn` of `requester_step_id` in
    `requester_run_id` would start `child_run_id` (`writes`: of a definition it wrote). Only
    the engine sends it (deduplicated on the child's id)."""

    step_id: str
    child_run_id: str
    requester_run_id: str
    requester_step_id: str
    turn: int
    index: int
    generation: int  # the child's depth (a root run is 0)
    writes: bool = False


class AnswerChild(Command, frozen=True, kw_only=True, tag="control_answer"):
    """The root's verdict on an `AskChild`, sent back to the requesting run's agent loop
    `step_id`: `granted`, or refused by quota `rule` with `message` (the tool call's result)."""

    step_id: str
    child_run_id: str
    turn: int
    index: int
    granted: bool
    rule: str = ""
    message: str = ""


class ReleaseChild(Command, frozen=True, kw_only=True, tag="control_release"):
    """Child run `child_run_id` of a descendant ended: the root (`run_id`, agent loop
    `step_id`) stops counting it among the tree's active children."""

    step_id: str
    child_run_id: str


ControlCommand = AskChild | AnswerChild | ReleaseChild


AnyCommand = (
    StartRun | TaskStarted | CompleteTask | FailTask | FireTimer | CancelRun | SendSignal
    | RecordChild | DeliverEvent | ResolveApproval
    | ReopenRun | TerminateRun | DiscardDeadLetter
    | StartGated | ScheduleRun | AdmitRun | DeferTask | ReleaseTask
    | AskChild | AnswerChild | ReleaseChild
)  # fmt: skip

COMMAND_TYPES: tuple[type[Command], ...] = (
    StartRun,
    TaskStarted,
    CompleteTask,
    FailTask,
    FireTimer,
    CancelRun,
    SendSignal,
    RecordChild,
    DeliverEvent,
    ResolveApproval,
    ReopenRun,
    TerminateRun,
    DiscardDeadLetter,
    StartGated,
    ScheduleRun,
    AdmitRun,
    DeferTask,
    ReleaseTask,
    AskChild,
    AnswerChild,
    ReleaseChild,
)


class DecideAll(Command, frozen=True, kw_only=True, tag="decide_all"):
    """Several commands of one run decided in turn, each against the state the events before
    it made, and appended as ONE history message (the engine's batch path, kernel/batch.py).
    Only the engine writes it, into history: it never arrives as a command (`decode_command`
    refuses it). A command that decided to nothing is left out, so re-deciding this one gives
    exactly its events. `at_ms` is its last command's."""

    commands: tuple[AnyCommand, ...]


# What a history message may record: one command, or several decided together.
StoredCommand = AnyCommand | DecideAll


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """Why a command does not apply, for a caller that must learn it. Never stored."""

    run_id: str
    code: Literal[
        "unknown_run", "run_exists", "run_finished", "unknown_step", "invalid", "already_resolved"
    ]
    message: str
