"""The reducer: `evolve(state, event) -> state` and the folds built on it.

`evolve` is total over every event `decide` can emit and trusting: it validates no intent (that
is `decide`'s job) and never reads a clock. Invariants that are cheap are asserted: attempts
only grow, a terminal run stays terminal, a step completes at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import reduce
from typing import assert_never

import msgspec

from kernel import limits, registry, reopen
from kernel.admission_tasks import evolve_deferral
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    DeadLetterDiscarded,
    ErrorInfo,
    RunAdmitted,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunContinuedAsNew,
    RunFailed,
    RunQueued,
    RunReopened,
    RunStarted,
    RunTerminated,
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
    TaskDeferred,
    TaskReleased,
)
from kernel.state import (
    INITIAL_STATE,
    TERMINAL_RUN_STATUSES,
    ReceivedSignal,
    RunState,
    RunStatus,
    StepState,
    is_terminal,
)
from kernel.step_states import NO_DYNAMIC, ControlState, DynamicState, TreeState

replace = msgspec.structs.replace
HELD = ("pending", "scheduled")  # a run waiting before its first step (kernel/admission_run)


def evolve(state: RunState, event: AnyEvent) -> RunState:
    """Apply one event to a run's state and return the new state."""
    handler = _STEP_HANDLERS.get(type(event))  # most events: one dict look-up, then apply
    if handler is not None:
        assert state.status not in TERMINAL_RUN_STATUSES, (
            f"run {state.run_id!r} is terminal; got {type(event).__name__}"
        )
        evolved: RunState = handler(state, event)  # counts the event in its one replace
        assert evolved.event_count == state.event_count + 1
        return evolved
    if isinstance(event, StepEvent):  # an event a step type owns: its module evolves it
        assert not is_terminal(state), (
            f"run {state.run_id!r} is terminal; got {type(event).__name__}"
        )
        step_def = state.step_def(event.step_id)
        assert step_def is not None, f"run {state.run_id!r} has no step {event.step_id!r}"
        evolved = registry.get(step_def.type).evolve(state, event)  # counts it (one replace)
        assert evolved.event_count == state.event_count + 1, "a step type counts its event"
        return evolved
    if isinstance(event, RunReopened | DeadLetterDiscarded):  # may follow a run's end
        assert state.status != "new", f"run {state.run_id!r}: {type(event).__name__} before start"
        counted = replace(state, event_count=state.event_count + 1)
        if isinstance(event, RunReopened):
            return reopen.evolve_reopened(counted, event)
        return reopen.evolve_discarded(counted, event)
    assert not is_terminal(state), f"run {state.run_id!r} is terminal; got {type(event).__name__}"
    match event:
        case RunStarted():
            assert state.status == "new", f"run {state.run_id!r} started twice"
            return _run_started(event)
        case (
            StepScheduled() | StepStarted() | StepCompleted() | StepFailed() | StepTimedOut()
            | StepRetryScheduled() | StepSkipped() | StepRecovered() | StepCompensated()
            | StepLost()
        ):  # fmt: skip
            raise AssertionError("evolved before the match (_STEP_LIFECYCLE_TYPES)")
        case (
            CompensationStarted() | RunCompleted() | RunFailed() | RunCancelRequested()
            | RunCancelled() | SignalReceived() | RunContinuedAsNew()
        ):  # fmt: skip
            counted = replace(state, event_count=state.event_count + 1)
            evolved = _run_lifecycle(counted, event)
            assert evolved.event_count == state.event_count + 1
            return evolved
        case RunTerminated():
            return reopen.evolve_terminated(
                replace(state, event_count=state.event_count + 1), event
            )
        case RunQueued() | RunAdmitted():
            return _held(replace(state, event_count=state.event_count + 1), event)
        case TaskDeferred() | TaskReleased():  # flow control (kernel/admission_tasks.py)
            return evolve_deferral(replace(state, event_count=state.event_count + 1), event)
        case StepEvent():
            raise AssertionError("evolved before the match (a step type's own event)")
        case RunReopened() | DeadLetterDiscarded():
            raise AssertionError("evolved before the terminal check")
        case _:
            assert_never(event)


_STEP_LIFECYCLE_TYPES = (
    StepScheduled, StepStarted, StepCompleted, StepFailed, StepTimedOut, StepRetryScheduled,
    StepSkipped, StepRecovered, StepCompensated, StepLost,
)  # fmt: skip
RunLifecycleEvent = (
    CompensationStarted | RunCompleted | RunFailed | RunCancelRequested | RunCancelled
    | SignalReceived | RunContinuedAsNew
)  # fmt: skip


# Each handler below updates one step and counts the event in one `replace` of the run: the
# hot path of every replay (a few calls per event, no closures; `_with_step` copies the steps
# tuple once, in C).


def _with_step(state: RunState, index: int, new_step: StepState) -> RunState:
    """The state with the step at `index` replaced and the event counted."""
    steps = list(state.steps)
    steps[index] = new_step
    return replace(state, steps=tuple(steps), event_count=state.event_count + 1)


def _on_scheduled(state: RunState, event: StepScheduled) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    return _with_step(state, index, _scheduled(state.steps[index], event))


def _on_started(state: RunState, event: StepStarted) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    step = replace(state.steps[index], status="running", worker_id=event.worker_id)
    return _with_step(state, index, step)


def _on_failed(state: RunState, event: StepFailed | StepTimedOut) -> RunState:
    return _attempt_failed(state, event.step_id, event.error, event.will_retry, event.at_ms)


def _on_retry_scheduled(state: RunState, event: StepRetryScheduled) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    step = replace(
        state.steps[index], status="retry_wait", retry_at_ms=event.due_at_ms, deadline_ms=None
    )
    return _with_step(state, index, step)


def _on_skipped(state: RunState, event: StepSkipped) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    step = replace(
        state.steps[index], status="skipped", output=msgspec.Raw(b"null"), ended_at_ms=event.at_ms
    )
    return _with_step(state, index, step)


def _on_recovered(state: RunState, event: StepRecovered) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    step = replace(
        state.steps[index], status="recovered", output=event.output, ended_at_ms=event.at_ms
    )
    return _with_step(state, index, step)


def _on_compensated(state: RunState, event: StepCompensated) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    return _with_step(state, index, replace(state.steps[index], compensated=True))


def _on_lost(state: RunState, event: StepLost) -> RunState:
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    return _with_step(state, index, _lost(state.steps[index], event))


def _run_lifecycle(state: RunState, event: RunLifecycleEvent) -> RunState:
    """The run's own events: signals, cancellation, compensation and its end."""
    match event:
        case CompensationStarted():
            return replace(
                state,
                status="compensating",
                compensation_outcome=event.outcome,
                error=event.error,
                failed_step_id=event.failed_step_id,
            )
        case RunCompleted():
            return replace(state, status="completed", output=event.output, ended_at_ms=event.at_ms)
        case RunFailed():
            return replace(
                state,
                status=event.status,
                error=event.error,
                failed_step_id=event.failed_step_id,
                ended_at_ms=event.at_ms,
            )
        case RunCancelRequested():
            return replace(state, cancel_reason=event.reason)
        case RunCancelled():
            return replace(state, status="cancelled", ended_at_ms=event.at_ms)
        case SignalReceived():
            signal = ReceivedSignal(
                name=event.name,
                payload=event.payload,
                at_ms=event.at_ms,
                signal_id=event.signal_id,
            )
            return replace(state, signals=(*state.signals, signal))
        case RunContinuedAsNew():
            assert state.status == "running", f"run {state.run_id!r} continued while {state.status}"
            return replace(
                state,
                status="continued_as_new",
                continued_as=event.continued_as,
                continued_workflow=event.workflow,
                output=event.input,
                ended_at_ms=event.at_ms,
            )
        case _:
            assert_never(event)


def _held(state: RunState, event: RunQueued | RunAdmitted) -> RunState:
    """Apply `run.queued` / `run.admitted` (the run's timeout counts from its admission)."""
    if isinstance(event, RunAdmitted):
        assert state.status in HELD, f"run {state.run_id!r} admitted while {state.status}"
        return replace(state, status="running", started_at_ms=event.at_ms)
    assert state.status in ("running", "scheduled"), f"{state.run_id!r} queued: {state.status}"
    run_at = event.run_at_ms if event.run_at_ms is not None else state.run_at_ms
    gate_id = event.gate_id or state.gate_id
    status: RunStatus = "scheduled" if event.reason == "scheduled" else "pending"
    holder = event.holder_run_id
    return replace(state, status=status, run_at_ms=run_at, gate_id=gate_id, holder_run_id=holder)


def fold(events: Iterable[AnyEvent]) -> RunState:
    """The state of a run after all of `events`, from the initial state."""
    return reduce(evolve, events, INITIAL_STATE)


def fold_from(state: RunState, events: Iterable[AnyEvent]) -> RunState:
    """Continue a fold from `state`: `fold(a + b) == fold_from(fold(a), b)`."""
    return reduce(evolve, events, state)


def _run_started(event: RunStarted) -> RunState:
    workflow = event.workflow
    assert event.run_id, "a run has an id"
    assert event.depth >= 0 and event.chain_index >= 0, (event.depth, event.chain_index)
    assert event.depth == 0 or event.parent_run_id, f"run {event.run_id!r}: depth > 0, no parent"
    return RunState(
        run_id=event.run_id,
        status="running",
        workflow=workflow,
        input=event.input,
        seed=event.seed,
        parent_run_id=event.parent_run_id,
        parent_step_id=event.parent_step_id,
        depth=event.depth,
        detached=event.detached,
        continued_from=event.continued_from,
        chain_root=event.chain_root,
        chain_index=event.chain_index,
        started_at_ms=event.at_ms,
        step_ids=tuple(step.id for step in workflow.steps),
        step_defs=workflow.steps,
        steps=tuple(StepState(step_id=step.id) for step in workflow.steps),
        event_count=1,
        dynamic=_control_root(event),
    )


def _control_root(event: RunStarted) -> DynamicState:
    """An agent's child run remembers the root run whose quotas count its own children."""
    root, root_step = event.control_root, event.control_root_step
    if isinstance(root, msgspec.UnsetType) or isinstance(root_step, msgspec.UnsetType):
        return NO_DYNAMIC
    return DynamicState(
        control=ControlState(tree=TreeState(root_run_id=root, root_step_id=root_step))
    )


def _scheduled(step: StepState, event: StepScheduled) -> StepState:
    assert event.attempt > step.attempt, (
        f"step {step.step_id!r}: attempt {event.attempt} after {step.attempt} (attempts only grow)"
    )
    assert event.attempt <= limits.attempt_number_max, f"{step.step_id!r}: attempt {event.attempt}"
    assert event.attempt - step.attempt_base <= limits.attempts_per_reopen_max, event.attempt
    assert step.status in ("pending", "retry_wait"), f"{step.step_id!r} scheduled: {step.status}"
    return replace(
        step,
        status="scheduled",
        attempt=event.attempt,
        input=event.input,
        deadline_ms=event.deadline_ms,
        retry_at_ms=None,
        error=None,
        first_scheduled_at_ms=(
            step.first_scheduled_at_ms if step.first_scheduled_at_ms is not None else event.at_ms
        ),
    )


def _lost(step: StepState, event: StepLost) -> StepState:
    """A lost attempt waits for the next one, which `decide` schedules in the same decision."""
    assert step.status in ("scheduled", "running"), f"{step.step_id!r} lost while {step.status}"
    assert event.attempt == step.attempt, f"{step.step_id!r} lost attempt {event.attempt}"
    lost = step.lost_attempts + 1
    assert lost <= limits.lost_attempts_max, f"{step.step_id!r}: {lost} lost attempts"
    return replace(
        step,
        status="retry_wait",
        lost_attempts=lost,
        error=event.error,
        deadline_ms=None,
        retry_at_ms=event.at_ms,
    )


def _completed(state: RunState, event: StepCompleted) -> RunState:
    """A step's one completion: counted, and numbered for compensation in reverse."""
    assert len(event.output) <= limits.payload_bytes_max, "decide bounds every output"
    index = state.index_of(event.step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {event.step_id!r}"
    step = state.steps[index]
    assert step.status in ("scheduled", "running"), (
        f"step {step.step_id!r} completed while {step.status} (a step completes at most once)"
    )
    completed = replace(
        step,
        status="completed",
        output=event.output,
        ended_at_ms=event.at_ms,
        deadline_ms=None,
        completion_index=state.completions,
    )
    steps = list(state.steps)
    steps[index] = completed
    return replace(
        state, steps=tuple(steps), event_count=state.event_count + 1,
        completions=state.completions + 1,
    )  # fmt: skip


def _attempt_failed(
    state: RunState, step_id: str, error: ErrorInfo, will_retry: bool, at_ms: int
) -> RunState:
    index = state.index_of(step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {step_id!r}"
    step = state.steps[index]
    live = step.status in ("scheduled", "running")
    never_ran = step.status == "pending" and not will_retry  # e.g. its input was too large
    assert live or never_ran, f"step {step_id!r} failed while {step.status}"
    if will_retry:
        assert live, f"step {step_id!r} retries an attempt it never ran"
        return _with_step(state, index, replace(step, error=error, deadline_ms=None))
    failed = replace(step, status="failed", error=error, deadline_ms=None, ended_at_ms=at_ms)
    return _with_step(state, index, failed)


_STEP_HANDLERS: dict[type, Callable[..., RunState]] = {
    StepScheduled: _on_scheduled,
    StepStarted: _on_started,
    StepCompleted: _completed,
    StepFailed: _on_failed,
    StepTimedOut: _on_failed,
    StepRetryScheduled: _on_retry_scheduled,
    StepSkipped: _on_skipped,
    StepRecovered: _on_recovered,
    StepCompensated: _on_compensated,
    StepLost: _on_lost,
}
assert set(_STEP_HANDLERS) == set(_STEP_LIFECYCLE_TYPES), "one handler per lifecycle event"
