"""react(state, event) -> effects, and resume(state) -> effects after a restart.

Effects are data for the shell: task messages and durable timers, each with a stable id so
issuing one twice is harmless. `react` gets the state *after* the event.
"""

from __future__ import annotations

from typing import assert_never

from kernel import approvals, children, continuation, registry
from kernel.cancel_on import watch as watch_cancel_on
from kernel.effects import AnyEffect, ArmTimer, CancelTimer
from kernel.events import (
    AnyEvent,
    ApprovalRequested,
    ApprovalResolved,
    CompensationStarted,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunContinuedAsNew,
    RunFailed,
    RunStarted,
    SignalReceived,
    StepCompensated,
    StepCompleted,
    StepEvent,
    StepFailed,
    StepRecovered,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepTimedOut,
)
from kernel.state import RunState, StepState, is_terminal
from kernel.step_api import (
    RUN_TIMEOUT_TIMER_ID,
    arm_timer,
    retry_timer_id,
    step_timeout_timer,
    step_timeout_timer_id,
    step_timer_id,
)


def react(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """What the shell must do now that `event` is appended (`state` includes it)."""
    match event:
        case RunStarted():
            timer = _run_timeout_timer(state)
            started = ((timer,) if timer is not None else ()) + children.report_started(state)
            return started + watch_cancel_on(state)
        case StepScheduled():
            step_def = state.step_def(event.step_id)
            assert step_def is not None
            effects = registry.get(step_def.type).react(state, event)
            timer = step_timeout_timer(state, event.step_id)
            return effects + ((timer,) if timer is not None else ())
        case StepCompleted() | StepFailed():
            if event.attempt == 0:
                return ()  # failed before any attempt: nothing was armed
            return _cancel_step_timeout(state, event.step_id, event.attempt)
        case StepRetryScheduled():
            return (_retry_timer(state, event.step_id, event.attempt, event.due_at_ms),)
        case RunCompleted() | RunFailed() | RunCancelled():
            return (
                _cancel_all_timers(state)
                + approvals.cancel_pending(state)
                + children.report_ended(state)
                + _live_steps_react(state, event)
            )
        case StepTimedOut():
            step_def = state.step_def(event.step_id)
            assert step_def is not None
            return registry.get(step_def.type).react(state, event)
        case (
            StepStarted()
            | SignalReceived()
            | StepSkipped()
            | StepRecovered()
            | CompensationStarted()
            | StepCompensated()
            | RunCancelRequested()
        ):
            return ()
        case ApprovalRequested() | ApprovalResolved():
            return approvals.react(state, event)
        case RunContinuedAsNew():
            return (
                _cancel_all_timers(state)
                + approvals.cancel_pending(state)
                + _live_steps_react(state, event)
                + continuation.react(state, event)
            )
        case StepEvent():  # every other event a step type owns: its module reacts
            step_def = state.step_def(event.step_id)
            assert step_def is not None, f"no step {event.step_id!r}"
            return registry.get(step_def.type).react(state, event)
        case _:
            assert_never(event)


def _live_steps_react(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """The run ended: the type of each step still live may have something to wind up (a child
    run to cancel); each such type reacts once, for all its steps."""
    types: list[str] = []
    for step, step_def in zip(state.steps, state.step_defs, strict=True):
        if step.status in ("scheduled", "running") and step_def.type not in types:
            types.append(step_def.type)
    return tuple(effect for name in types for effect in registry.get(name).react(state, event))


def resume(state: RunState) -> tuple[AnyEffect, ...]:
    """Every effect an unfinished run needs issued again after a restart (all idempotent)."""
    if is_terminal(state) or state.status == "new":
        return ()
    effects: list[AnyEffect] = []
    run_timer = _run_timeout_timer(state)
    if run_timer is not None and state.status == "running":
        effects.append(run_timer)
    effects.extend(watch_cancel_on(state))
    for step, step_def in zip(state.steps, state.step_defs, strict=True):
        if step.status in ("scheduled", "running"):
            effects.extend(registry.get(step_def.type).resume(state, step.step_id))
            timer = step_timeout_timer(state, step.step_id)
            if timer is not None:
                effects.append(timer)
        elif step.status == "retry_wait":
            assert step.retry_at_ms is not None
            effects.append(_retry_timer(state, step.step_id, step.attempt + 1, step.retry_at_ms))
    effects.extend(approvals.resume(state))
    return tuple(effects)


def _run_timeout_timer(state: RunState) -> ArmTimer | None:
    assert state.workflow is not None
    if state.workflow.timeout_ms is None:
        return None
    fire_at = state.started_at_ms + state.workflow.timeout_ms
    return arm_timer(state, RUN_TIMEOUT_TIMER_ID, "run_timeout", fire_at)


def _retry_timer(state: RunState, step_id: str, attempt: int, due_at_ms: int) -> ArmTimer:
    timer_id = retry_timer_id(step_id, attempt)
    return arm_timer(state, timer_id, "retry", due_at_ms, step_id=step_id, attempt=attempt)


def _cancel_step_timeout(state: RunState, step_id: str, attempt: int) -> tuple[AnyEffect, ...]:
    step_def = state.step_def(step_id)
    assert step_def is not None
    if step_def.timeout_ms is None:
        return ()
    return (CancelTimer(run_id=state.run_id, timer_id=step_timeout_timer_id(step_id, attempt)),)


def _live_timer_ids(state: RunState, step: StepState) -> tuple[str, ...]:
    ids: list[str] = []
    if step.status in ("scheduled", "running"):
        if step.deadline_ms is not None:
            ids.append(step_timeout_timer_id(step.step_id, step.attempt))
        if step.wake_at_ms is not None:
            ids.append(step_timer_id(step.step_id, step.attempt))
        return tuple(ids)
    if step.status == "retry_wait":
        return (retry_timer_id(step.step_id, step.attempt + 1),)
    return ()


def _cancel_all_timers(state: RunState) -> tuple[AnyEffect, ...]:
    """On a run's end: cancel its timeout and every step timer still armed."""
    assert state.workflow is not None
    ids: list[str] = []
    if state.workflow.timeout_ms is not None:
        ids.append(RUN_TIMEOUT_TIMER_ID)
    for step in state.steps:
        ids.extend(_live_timer_ids(state, step))
    return tuple(CancelTimer(run_id=state.run_id, timer_id=timer_id) for timer_id in ids)
