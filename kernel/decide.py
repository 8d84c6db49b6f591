"""decide(state, command) -> events | Rejection: command dispatch and advance of a DAG run.

Pure: no I/O, no clock (time is the command's `at_ms`), no randomness (the command's `seed`).
A command that does not apply (a duplicate, a stale attempt, anything for a finished run)
decides to `()`. A caller that must learn why gets a `Rejection` value (never stored).

Decide emits events into a local builder that evolves its own copy of the state, so every
later rule sees the effect of the earlier ones, exactly as replay will. What a command means
for a step is its type's answer (`kernel.lifecycle.ask`); what follows an attempt's end is
`kernel.lifecycle`. No step type is named here.
"""

from __future__ import annotations

from typing import assert_never, cast

import msgspec

from kernel import admission_run, appended, limits, queries, registry, reopen
from kernel.cancel_on import cancel_reason
from kernel.commands import (
    AdmitRun,
    AnswerChild,
    AnyCommand,
    AskChild,
    CancelRun,
    CompleteTask,
    ControlCommand,
    DeferTask,
    DeliverEvent,
    DiscardDeadLetter,
    FailTask,
    FireTimer,
    RecordChild,
    Rejection,
    ReleaseChild,
    ReleaseTask,
    ReopenRun,
    ResolveApproval,
    ScheduleRun,
    SendSignal,
    StartGated,
    StartRun,
    TaskStarted,
    TerminateRun,
)
from kernel.dag_index import DagIndex, dag_index
from kernel.events import (
    AnyEvent,
    ErrorInfo,
    ErrorKind,
    RunCancelRequested,
    RunCompleted,
    RunStarted,
    SignalReceived,
    StepCompensated,
    StepCompleted,
    StepEvent,
    StepFailed,
    StepLost,
    StepRecovered,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepTimedOut,
)
from kernel.lifecycle import (
    Builder,
    ask,
    attempt_failed,
    attempt_lost,
    fail_run,
    may_run,
    start_step,
)
from kernel.outcome import (
    LOST_KINDS,
    RETRYABLE_KINDS,
    ItemReport,
    OwnedStepsDone,
    SignalArrived,
    StartAttempt,
)
from kernel.payloads import skip_applies
from kernel.state import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    RunState,
    StepState,
    is_terminal,
)

Decided = tuple[AnyEvent, ...] | Rejection
Folded = tuple[Decided, tuple[RunState, ...]]  # (`decide_folded`)
LIVE = ("scheduled", "running")
WORKER_COMMANDS = (CompleteTask, TaskStarted, FailTask, FireTimer)  # those naming a task's id
# Events that change only the step they name: the shared lifecycle (these types exactly), and
# a type's own events (a `StepEvent`), which change the step's state or its type's record (an
# append changes `step_defs`).
LIFECYCLE_TYPES = frozenset({
    StepScheduled, StepStarted, StepCompleted, StepFailed, StepTimedOut, StepRetryScheduled,
    StepSkipped, StepRecovered, StepCompensated, StepLost,
})  # fmt: skip
OneStepEvent = (
    StepScheduled | StepStarted | StepCompleted | StepFailed | StepTimedOut | StepRetryScheduled
    | StepSkipped | StepRecovered | StepCompensated | StepLost | StepEvent
)  # fmt: skip


def decide(state: RunState, command: AnyCommand) -> Decided:
    """The events a command leads to, given the run's state.

    Args:
        state: the fold of the run's history so far.
        command: what is asked, stamped with `at_ms` and `seed` by the shell.

    Returns:
        The events to append (possibly none), or a Rejection saying why the command is refused.
    """
    decided = _decide(state, command)
    return tuple(decided.events) if type(decided) is Builder else cast(Decided, decided)


def decide_folded(state: RunState, command: AnyCommand) -> Folded:
    """`decide`, with the state after each event (`states[i]`: `state` folded with the events
    up to i; () for none): deciding folds them already, so the engine need not again."""
    decided = _decide(state, command)
    if type(decided) is Builder:
        assert len(decided.states) == len(decided.events), "a state after each event"
        return tuple(decided.events), tuple(decided.states)
    return cast(Decided, decided), ()


def _decide(state: RunState, command: AnyCommand) -> Decided | Builder:
    """`decide`'s rules; events decided by a builder come as the builder (its states)."""
    kind = type(command)  # (commands are final types: exact tests, cheaper than isinstance)
    if kind is StartRun:
        return _start_run(state, cast(StartRun, command))
    if kind is StartGated or kind is ScheduleRun:  # admission (kernel/admission_run.py)
        held = cast("StartGated | ScheduleRun", command)
        return _start_run(state, held.start, held=held)
    if state.status == "new":
        return Rejection(run_id=command.run_id, code="unknown_run", message=queries.no_run(command))
    assert command.run_id == state.run_id, f"command for {command.run_id!r} on {state.run_id!r}"
    if kind is ReopenRun or kind is DiscardDeadLetter:
        return _lifecycle_operation(state, cast("ReopenRun | DiscardDeadLetter", command))
    if is_terminal(state):
        return _after_end(state, command)
    if queries.of_another_life(state, command):  # (a task of an earlier run under this id)
        return ()
    builder = Builder(state, command.at_ms, command.seed)
    rejection = _apply(builder, command)
    if rejection is not None:
        assert not builder.events, "a refused command decides no event"
        return rejection
    if builder.events:
        _advance(builder, state)
    assert len(builder.events) <= limits.events_per_decision_max
    return builder


def _lifecycle_operation(
    state: RunState, command: ReopenRun | DiscardDeadLetter
) -> Decided | Builder:
    """An operator's reopen or discard (kernel.reopen), which may follow the run's end: a
    reopen's events are followed by the DAG's advance (the reset steps start)."""
    decided: Decided
    if isinstance(command, DiscardDeadLetter):
        decided = reopen.decide_discard(state, command)
    else:
        decided = reopen.decide_reopen(state, command)
    if isinstance(decided, Rejection) or not decided:
        return decided
    builder = Builder(state, command.at_ms, command.seed)
    for event in decided:
        builder.emit(event)
    if isinstance(command, ReopenRun):
        _advance(builder, state)
    return builder


def _after_end(state: RunState, command: AnyCommand) -> Decided:
    """Terminal is absorbing: nothing is decided; a person's command learns why."""
    if isinstance(command, TerminateRun):
        message = f"run {state.run_id!r} already ended as {state.status}; nothing to terminate"
        return Rejection(run_id=state.run_id, code="run_finished", message=message)
    if isinstance(command, CancelRun) and state.cancel_reason is None:
        message = f"run {state.run_id!r} already ended as {state.status}; nothing to cancel"
        return Rejection(run_id=state.run_id, code="run_finished", message=message)
    if isinstance(command, ResolveApproval) and state.step_def(command.step_id) is not None:
        step_def = state.step_def(command.step_id)
        assert step_def is not None
        decided = registry.get(step_def.type).decide(Builder(state, 0, 0), command.step_id, command)
        assert isinstance(decided, Rejection) or not decided, "an ended run decides nothing"
        return decided if isinstance(decided, Rejection) else ()
    return ()


def _apply(builder: Builder, command: AnyCommand) -> Rejection | None:
    if admission_run.is_flow_command(command):  # flow control (kernel/admission_tasks.py)
        admission_run.decide_flow_command(builder, command)
        return None
    if isinstance(command, WORKER_COMMANDS):
        item = appended.item_owner(builder.state, command.step_id)
        if item is not None:  # an item of a step (not a step itself): its owner decides
            owner, key = item
            return ask(builder, owner, ItemReport(key=key, command=command))
    match command:  # (the commands of most decisions first: a case is an isinstance test)
        case CompleteTask():
            return _complete_task(builder, command)
        case TaskStarted():
            return _task_started(builder, command)
        case FailTask():
            return _fail_task(builder, command)
        case FireTimer():
            _fire_timer(builder, command)
            return None
        case StartRun() | StartGated() | ScheduleRun():
            raise AssertionError("a start is decided before")
        case AdmitRun():
            admission_run.admit(builder, command)
            return None
        case DeferTask() | ReleaseTask():
            raise AssertionError("decided before")
        case CancelRun():
            _cancel_run(builder, command)
            return None
        case SendSignal():
            return _send_signal(builder, command)
        case RecordChild() | ResolveApproval() | AskChild() | AnswerChild() | ReleaseChild():
            return _to_step(builder, command)
        case DeliverEvent():
            _deliver_event(builder, command)
            return None
        case TerminateRun():
            for event in reopen.decide_terminate(builder.state, command):
                builder.emit(event)
            return None
        case ReopenRun() | DiscardDeadLetter():
            raise AssertionError("decided before the terminal check")
        case _:
            assert_never(command)


def _to_step(
    builder: Builder, command: RecordChild | ResolveApproval | ControlCommand
) -> Rejection | None:
    """A command addressed to a step: its type decides (a stale report decides to nothing)."""
    step = builder.state.step(command.step_id)
    if step is None:
        return queries.unknown_step(builder.state, command.step_id)
    if step.status not in LIVE and isinstance(command, RecordChild):
        return None
    return ask(builder, command.step_id, command)


def _deliver_event(builder: Builder, command: DeliverEvent) -> None:
    """An external event: the workflow's cancel_on, then each live step, may take it."""
    if builder.state.status == "running":
        reason = cancel_reason(builder.state, command)
        if reason is not None:
            cancel = CancelRun(run_id=command.run_id, at_ms=command.at_ms, reason=reason)
            _cancel_run(builder, cancel)
            return
    for step_def in builder.state.step_defs:
        if builder.state.status != "running":
            return
        step = builder.state.step(step_def.id)
        assert step is not None
        if step.status in LIVE:
            rejection = ask(builder, step_def.id, command)
            assert rejection is None, "an external event is never refused"


def _start_run(
    state: RunState, command: StartRun, held: StartGated | ScheduleRun | None = None
) -> Decided | Builder:
    if state.status != "new":
        if state.workflow == command.workflow and state.input == command.input:
            return ()  # the same start again: idempotent
        message = f"run {command.run_id!r} already exists with another workflow or input"
        return Rejection(run_id=command.run_id, code="run_exists", message=message)
    if len(command.input) > limits.payload_bytes_max:
        message = (
            f"input is {len(command.input)} bytes; the limit is {limits.payload_bytes_max} bytes"
        )
        return Rejection(run_id=command.run_id, code="invalid", message=message)
    builder = Builder(state, command.at_ms, command.seed)
    started = RunStarted(
        run_id=command.run_id, workflow=command.workflow, input=command.input,
        at_ms=command.at_ms, seed=command.seed, parent_run_id=command.parent_run_id,
        parent_step_id=command.parent_step_id, depth=command.depth, detached=command.detached,
        continued_from=command.continued_from, chain_root=command.chain_root,
        chain_index=command.chain_index, control_root=command.control_root,
        control_root_step=command.control_root_step,
    )  # fmt: skip
    builder.emit(started)
    if held is not None:
        admission_run.hold(builder, held)
    _advance(builder, state)
    return builder


def _task_started(builder: Builder, command: TaskStarted) -> Rejection | None:
    state = builder.state
    step = state.step(command.step_id)
    if step is None:
        return queries.unknown_step(state, command.step_id)
    if step.status == "scheduled" and step.attempt == command.attempt:
        builder.emit(
            StepStarted(
                step_id=command.step_id,
                attempt=command.attempt,
                worker_id=command.worker_id,
                at_ms=command.at_ms,
            )
        )
    return None


def _complete_task(builder: Builder, command: CompleteTask) -> Rejection | None:
    state = builder.state
    live = queries.current_attempt(state, command.step_id, command.attempt)
    if live is None:  # stale attempt or a second completion (or no such step: refused)
        return queries.unknown_step(state, command.step_id) if _unknown(state, command) else None
    _record_start(builder, command, live)
    return ask(builder, command.step_id, command)


def _fail_task(builder: Builder, command: FailTask) -> Rejection | None:
    state = builder.state
    live = queries.current_attempt(state, command.step_id, command.attempt)
    if live is None:
        return queries.unknown_step(state, command.step_id) if _unknown(state, command) else None
    if appended.runs_appended(state, command.step_id, command.attempt):
        return None  # the attempt's appended steps run: a late failure report is stale
    _record_start(builder, command, live)
    kind: ErrorKind = "lost" if command.kind in LOST_KINDS else command.kind
    error = ErrorInfo(
        message=queries.truncate(command.error),
        kind=kind,
        traceback=queries.truncate(command.traceback),
    )
    if command.kind in LOST_KINDS:
        attempt_lost(builder, command.step_id, error)
        return None
    retryable = command.kind in RETRYABLE_KINDS
    attempt_failed(
        builder, command.step_id, error, retryable=retryable, retry_after_ms=command.retry_after_ms
    )
    return None


def _unknown(state: RunState, command: CompleteTask | FailTask) -> bool:
    return state.index_of(command.step_id) < 0


def _record_start(builder: Builder, command: CompleteTask | FailTask, step: StepState) -> None:
    """Record `step.started` from a result whose worker did not report it separately (`step`:
    the live attempt's state, in the decision's state as it is)."""
    assert step.step_id == command.step_id and step.attempt == command.attempt
    if step.status == "scheduled" and command.started_at_ms is not None:
        builder.emit(
            StepStarted(
                step_id=command.step_id,
                attempt=command.attempt,
                worker_id=command.worker_id,
                at_ms=command.started_at_ms,
            )
        )


def _fire_timer(builder: Builder, command: FireTimer) -> None:
    state = builder.state
    if command.kind == "run_at":  # a scheduled run's time came (kernel/admission_run.py)
        admission_run.admit(builder, AdmitRun(run_id=command.run_id, at_ms=command.at_ms))
        return
    if command.kind == "run_timeout":
        assert state.workflow is not None
        stale = state.reopened_at_ms is not None and command.at_ms < state.reopened_at_ms
        if state.status == "running" and state.workflow.timeout_ms is not None and not stale:
            message = f"run timed out after {state.workflow.timeout_ms} ms"
            error = ErrorInfo(message=message, kind="timeout")
            fail_run(builder, error, failed_step_id="")
        return
    step = state.step(command.step_id)
    if step is None:
        return
    if command.kind == "retry":
        due = step.status == "retry_wait" and step.attempt + 1 == command.attempt
        if due and may_run(state, command.step_id):
            given = StartAttempt(input=step.input, attempt=command.attempt)
            rejection = ask(builder, command.step_id, given)
            assert rejection is None, "a due retry is never refused"
        return
    live = queries.current_attempt(state, command.step_id, command.attempt)
    if command.kind == "step":
        if live is not None:
            rejection = ask(builder, command.step_id, command)
            assert rejection is None, "a step's own timer is never refused"
        return
    assert command.kind == "step_timeout", command.kind
    if live is not None and live.deadline_ms is not None:  # appended steps' owner: no deadline
        error = ErrorInfo(message=f"attempt {command.attempt} timed out", kind="timeout")
        attempt_failed(builder, command.step_id, error, retryable=True, timed_out=True)


def _send_signal(builder: Builder, command: SendSignal) -> Rejection | None:
    """Record the signal in order, then offer it to the live steps (one may consume it). A
    signal whose identity the run already received (a redelivered command) is nothing."""
    state = builder.state
    if queries.signal_received(state, command.signal_id):
        return None
    problem = queries.signal_problem(state, command)
    if problem is not None:
        return Rejection(run_id=state.run_id, code="invalid", message=problem)
    builder.emit(
        SignalReceived(
            name=command.name,
            payload=command.payload,
            at_ms=command.at_ms,
            signal_id=command.signal_id,
        )
    )
    index = len(builder.state.signals) - 1
    for step_def in builder.state.step_defs:
        step = builder.state.step(step_def.id)
        assert step is not None
        if step.status in LIVE:
            rejection = ask(builder, step_def.id, SignalArrived(index=index))
            assert rejection is None, "a signal is never refused by a step"
            if builder.state.signals[index].consumed_by is not None:
                break
    return None


def _cancel_run(builder: Builder, command: CancelRun) -> None:
    if builder.state.cancel_reason is not None:
        return  # already requested
    builder.emit(RunCancelRequested(reason=queries.truncate(command.reason), at_ms=command.at_ms))
    admission_run.cancel_held(builder, command)
    if builder.state.status == "running":
        reason = command.reason
        message = queries.truncate(f"cancelled: {reason}" if reason else "cancelled")
        error = ErrorInfo(message=message, kind="cancelled")
        fail_run(builder, error, failed_step_id="", outcome="cancelled")


def _advance(builder: Builder, before: RunState) -> None:
    """Start every ready step (skipping those whose skip_if holds) until nothing changes,
    then complete the run when every step outside the handlers is done.

    `before` is the state the decision began from: a running run's state after a decision
    holds no ready step unless a concurrency limit held it back (every decision advances to
    this fixpoint), so without a limit only the steps this decision's events touched and their
    dependents can be ready (`_touched`); after a start or a reopen (a run not running
    before), every step is looked at once, and the passes after that one look only at the
    steps its events touched.
    """
    marked = 0
    for _ in range(limits.advance_iterations_max):
        if builder.state.status != "running":
            break
        candidates = _touched(builder, before, marked)
        marked = len(builder.events)
        if candidates is None:  # a full pass leaves ready only the steps its events touch
            before = builder.state
        if candidates == [] and not builder.state.dynamic.parents:
            break  # no step can be ready and no owner waits to be told: a pass would do nothing
        if not _advance_once(builder, candidates):
            break
    else:
        raise AssertionError(f"advance did not settle in {limits.advance_iterations_max} passes")
    state = builder.state
    if state.status != "running":
        return
    index = dag_index(state.step_defs)
    if _body_finished(index, state.steps):
        output = queries.run_output(state, index.handlers)
        if len(output) > limits.payload_bytes_max:
            message = (
                f"the run output (the terminal steps' outputs) is {len(output)} bytes; "
                f"the limit is {limits.payload_bytes_max} bytes"
            )
            error = ErrorInfo(message=message, kind="invalid_output")
            fail_run(builder, error, failed_step_id="")
            return
        builder.emit(RunCompleted(output=output, at_ms=builder.at_ms))


def _touched(builder: Builder, before: RunState, marked: int) -> list[int] | None:
    """The positions of the steps that may have become ready since `marked` (events of this
    decision), in DAG order: each step an event names that is pending now, and the dependents
    of each that is done now (a step's status changes only by an event naming it, and a step
    is ready only when pending with every dependency done); None when any step may have (a
    start or reopen, a run-level event, steps appended, a concurrency limit)."""
    state = builder.state
    if before.status != "running" or before.step_defs is not state.step_defs:
        return None
    assert state.workflow is not None
    if state.workflow.max_concurrent_steps is not None:
        return None
    dependents = dag_index(state.step_defs).dependents
    steps = state.steps
    found: set[int] = set()
    last = ""  # (a step's events in a row: its status now is looked at once)
    for event in builder.events[marked:]:
        if type(event) not in LIFECYCLE_TYPES and not isinstance(event, StepEvent):
            return None
        one_step: OneStepEvent = event  # type: ignore[assignment]  # (checked above; no cast call)
        if one_step.step_id == last:
            continue
        last = one_step.step_id
        position = state.index_of(last)
        if position < 0:
            return None
        status = steps[position].status
        if status == "pending":
            found.add(position)
        elif status in DONE_STEP_STATUSES:
            found.update(dependents[position])
    assert len(found) <= len(state.step_defs), "positions of the run's steps"
    return sorted(found) if len(found) > 1 else list(found)


def _settle_owners(builder: Builder) -> bool:
    """Tell each live owner whose appended steps are all done; whether any was told."""
    if not builder.state.dynamic.parents:
        return False  # no step appended steps (most runs)
    told = False
    for owner in appended.owners(builder.state):
        if not appended.settled(builder.state, owner):
            continue
        rejection = ask(builder, owner, OwnedStepsDone())
        assert rejection is None, "an owner does not refuse its steps' end"
        told = True
        if builder.state.status != "running":
            break
    return told


def _advance_once(builder: Builder, candidates: list[int] | None = None) -> bool:
    """One pass: settle owners, then skip or start the ready steps among `candidates`
    (positions in DAG order; None: every step), as of the state the pass began with."""
    progressed = _settle_owners(builder)
    state = builder.state
    if state.status != "running":
        return progressed
    assert state.workflow is not None
    index = dag_index(state.step_defs)
    steps = state.steps
    limit = state.workflow.max_concurrent_steps
    active = 0
    if limit is not None:
        active = sum(1 for step in steps if step.status in ACTIVE_STEP_STATUSES)
    for position in range(len(steps)) if candidates is None else candidates:
        if steps[position].status != "pending" or not index.deps_done(steps, position):
            continue
        if builder.state.steps[position].status != "pending":
            continue  # an earlier start of this pass ended it (its plan's owner skipped it)
        step_def = state.step_defs[position]
        if step_def.id in index.handlers:
            continue
        condition = step_def.skip_if
        if condition is not None and skip_applies(condition, _output_of(state, condition.step_id)):
            reason = f"skip_if {condition.step_id}.{condition.field} {condition.op} " + (
                bytes(condition.value).decode()
            )
            builder.emit(StepSkipped(step_id=step_def.id, reason=reason, at_ms=builder.at_ms))
            progressed = True
            continue
        if limit is not None and active >= limit:
            continue
        given = queries.resolve_input(state, step_def, index.dependencies[position])
        start_step(builder, step_def.id, given)
        active += 1
        progressed = True
        if builder.state.status != "running":
            break
    assert limit is None or active <= max(limit, len(steps)), "concurrency is bounded"
    return progressed


def _body_finished(index: DagIndex, steps: tuple[StepState, ...]) -> bool:
    """Whether every step outside the handlers is finished (kernel.appended.finished), looked
    at last to first: a join or a chain's end is the first unfinished one."""
    body = index.body_reversed
    if body and not appended.finished(steps[body[0]]):
        return False  # most decisions: the run's last step is not finished (no generator)
    return all(appended.finished(steps[position]) for position in body)


def _output_of(state: RunState, step_id: str) -> msgspec.Raw:
    step = state.step(step_id)
    assert step is not None, f"skip_if names step {step_id!r}"
    return step.output
