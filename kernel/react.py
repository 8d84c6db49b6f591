"""react(state, event) -> effects, and resume(state) -> effects after a restart.

Effects are data for the shell: task messages and durable timers, each with a stable id so
issuing one twice is harmless. `react` gets the state *after* the event. The run's own
effects (its timeout, each attempt's deadline and retry timers, its links to other runs) are
decided here; a step type's own are its module's (`StepType.react` / `resume`). Every task
message is stamped here with the run's history size, so a handler can tell when to continue
as new. No step type is named here.
"""

from __future__ import annotations

from typing import assert_never

import msgspec

from kernel import registry, run_links
from kernel.admission_run import react_held, resume_held
from kernel.admission_tasks import react_deferred, released_tasks, resume_deferred
from kernel.cancel_on import watch as watch_cancel_on
from kernel.commands import StartRun
from kernel.effects import AnyEffect, ArmTimer, CancelTimer, EnqueueTask
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    DeadLetterDiscarded,
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
from kernel.state import RunState, StepState, is_terminal
from kernel.timers import (
    RUN_TIMEOUT_TIMER_ID,
    arm_timer,
    retry_timer_id,
    step_timeout_timer,
    step_timeout_timer_id,
    step_timer_id,
)

LIVE = ("scheduled", "running")


def react(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """What the shell must do now that `event` is appended (`state` includes it)."""
    assert state.status != "new", "react follows an appended event"
    if type(event) is StepStarted:
        return ()  # (a worker took an attempt: nothing to do, and the most frequent event)
    return _stamped(state, _react(state, event))


def _react(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    match event:  # (the events of most decisions first: a case is an isinstance test)
        case StepScheduled():  # (its deadline is the attempt's: a timer only for one)
            effects = _step_type(state, event.step_id).react(state, event)
            if event.deadline_ms is None:
                return effects
            timer = step_timeout_timer(state, event.step_id)
            return effects + ((timer,) if timer is not None else ())
        case StepCompleted() | StepFailed() | StepLost():
            if event.attempt == 0:
                return ()  # failed before any attempt: nothing was armed
            return _cancel_step_timeout(state, event.step_id, event.attempt)
        case StepStarted():
            return ()
        case RunStarted():
            timer = _run_timeout_timer(state)
            started = ((timer,) if timer is not None else ()) + run_links.report_started(state)
            return started + watch_cancel_on(state)
        case StepRetryScheduled():
            return (_retry_timer(state, event.step_id, event.attempt, event.due_at_ms),)
        case RunCompleted() | RunFailed() | RunCancelled() | RunContinuedAsNew() | RunTerminated():
            return _ended(state, event)
        case RunReopened():  # the run goes on: its timeout (counted from now) and cancel_on
            timer = _run_timeout_timer(state)
            return ((timer,) if timer is not None else ()) + watch_cancel_on(state)
        case StepTimedOut():
            return _step_type(state, event.step_id).react(state, event)
        case (
            SignalReceived()
            | StepSkipped()
            | StepRecovered()
            | CompensationStarted()
            | StepCompensated()
            | RunCancelRequested()
            | DeadLetterDiscarded()
        ):
            return ()
        case RunQueued():
            return react_held(state, event)
        case RunAdmitted():
            timer = _run_timeout_timer(state)
            return (timer,) if timer is not None else ()
        case TaskDeferred():  # flow control (kernel/admission_tasks.py)
            return react_deferred(state, event)
        case TaskReleased():
            return released_tasks(resume(state), event)
        case StepEvent():  # every other event a step type owns: its module reacts
            return _step_type(state, event.step_id).react(state, event)
        case _:
            assert_never(event)


def _ended(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """The run ended: cancel its timers, let each live step's type wind up (once per type,
    for all its steps), report to a parent, start a successor."""
    assert is_terminal(state), f"run {state.run_id!r} ended as {state.status}"
    types: list[str] = []
    for step, step_def in zip(state.steps, state.step_defs, strict=True):
        if step.status in LIVE and step_def.type not in types:
            types.append(step_def.type)
    wind_up = tuple(effect for name in types for effect in registry.get(name).react(state, event))
    return (
        _cancel_all_timers(state)
        + wind_up
        + run_links.report_ended(state)
        + run_links.successor_start(state)
    )


def repeated(state: RunState, command: StartRun) -> tuple[AnyEffect, ...]:
    """Effects of a start that decided to nothing because the run exists (its parent resumed
    after a restart): the run reports again what its parent may have missed."""
    return run_links.repeat_start(state, command)


def resume(state: RunState) -> tuple[AnyEffect, ...]:
    """Every effect an unfinished run needs issued again after a restart (all idempotent); for
    a run that continued as new, the start of its successor."""
    if state.status == "new":
        return ()
    if is_terminal(state):
        return run_links.successor_start(state)
    effects: list[AnyEffect] = [*resume_held(state), *resume_deferred(state)]
    run_timer = _run_timeout_timer(state)
    if run_timer is not None and state.status == "running":
        effects.append(run_timer)
    effects.extend(watch_cancel_on(state))
    for step, step_def in zip(state.steps, state.step_defs, strict=True):
        if step.status in LIVE:
            effects.extend(registry.get(step_def.type).resume(state, step.step_id))
            timer = step_timeout_timer(state, step.step_id)
            if timer is not None:
                effects.append(timer)
        elif step.status == "retry_wait":
            assert step.retry_at_ms is not None
            effects.append(_retry_timer(state, step.step_id, step.attempt + 1, step.retry_at_ms))
    return _stamped(state, tuple(effects))


def _stamped(state: RunState, effects: tuple[AnyEffect, ...]) -> tuple[AnyEffect, ...]:
    """`effects` with each task message telling its handler the run's history size, and
    addressed to its step's worker group (README "Worker groups")."""
    if not effects:
        return effects  # (most events: nothing to stamp)
    if len(effects) == 1:  # (a scheduled task: its message alone, no generator)
        effect = effects[0]
        return (_stamp_task(state, effect),) if isinstance(effect, EnqueueTask) else effects
    return tuple(
        _stamp_task(state, effect) if isinstance(effect, EnqueueTask) else effect
        for effect in effects
    )


def _stamp_task(state: RunState, task: EnqueueTask) -> EnqueueTask:
    size = state.event_count
    assert size >= 1, "a task follows a started run"
    assert task.run_id == state.run_id, f"a task of run {task.run_id!r} from {state.run_id!r}"
    group = _worker_group(state, task.step_id)
    return msgspec.structs.replace(task, history_events=size, group=group)


def _worker_group(state: RunState, step_id: str) -> str:
    """The worker group of a step's tasks, "" for none. A task of an item of a step
    (`<step>.<index>`, which the definition does not name) goes to its step's group."""
    step_def = state.step_def(step_id)
    if step_def is None and "." in step_id:
        step_def = state.step_def(step_id.rpartition(".")[0])
    return "" if step_def is None else step_def.worker_group


def _step_type(state: RunState, step_id: str) -> registry.StepType:
    step_def = state.step_def(step_id)
    assert step_def is not None, f"run {state.run_id!r} has no step {step_id!r}"
    return registry.get(step_def.type)


def _run_timeout_timer(state: RunState) -> ArmTimer | None:
    assert state.workflow is not None
    if state.workflow.timeout_ms is None:
        return None
    since = state.reopened_at_ms if state.reopened_at_ms is not None else state.started_at_ms
    fire_at = since + state.workflow.timeout_ms
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


def _live_timer_ids(step: StepState) -> tuple[str, ...]:
    ids: list[str] = []
    if step.status in LIVE:
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
        ids.extend(_live_timer_ids(step))
    return tuple(CancelTimer(run_id=state.run_id, timer_id=timer_id) for timer_id in ids)
