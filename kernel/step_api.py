"""What step modules build on: the shared parts of starting an attempt and dispatching it.

Step modules in `steps/` import this (and the rest of `kernel/`); the kernel never imports a
step module (it looks step types up in `kernel.registry`).
"""

from __future__ import annotations

import zlib

import msgspec

from kernel import limits
from kernel.commands import AnyCommand, DeliverEvent, FireTimer, RecordChild, TimerKind
from kernel.effects import AnyEffect, ArmTimer, EnqueueTask, task_msg_id
from kernel.events import AnyEvent, StepEvent, StepScheduled
from kernel.registry import DecideContext
from kernel.state import ApprovalState, RunState


def schedule_attempt(
    state: RunState, step_id: str, attempt: int, input: msgspec.Raw, at_ms: int
) -> StepScheduled:
    """The `step.scheduled` event of `attempt`, with its deadline when the step has a timeout."""
    step_def = state.step_def(step_id)
    assert step_def is not None, f"run {state.run_id!r} has no step {step_id!r}"
    assert 1 <= attempt <= limits.attempts_max, f"attempt {attempt} out of 1..{limits.attempts_max}"
    deadline = at_ms + step_def.timeout_ms if step_def.timeout_ms is not None else None
    return StepScheduled(
        step_id=step_id, attempt=attempt, input=input, at_ms=at_ms, deadline_ms=deadline
    )


def enqueue_task(state: RunState, step_id: str) -> EnqueueTask:
    """The task message for the step's current attempt."""
    step_def = state.step_def(step_id)
    step = state.step(step_id)
    assert step_def is not None and step is not None, f"no step {step_id!r}"
    assert step.attempt >= 1, f"step {step_id!r} is not scheduled"
    return EnqueueTask(
        run_id=state.run_id,
        step_id=step_id,
        attempt=step.attempt,
        task=step_def.task,
        input=step.input,
        metadata=step_def.metadata,
        msg_id=task_msg_id(state.run_id, step_id, step.attempt),
        deadline_ms=step.deadline_ms,
    )


def step_timeout_timer_id(step_id: str, attempt: int) -> str:
    return f"step_timeout.{step_id}.{attempt}"


def retry_timer_id(step_id: str, attempt: int) -> str:
    return f"retry.{step_id}.{attempt}"


def step_timer_id(step_id: str, attempt: int) -> str:
    """The id of a step type's own timer (one per attempt), e.g. a sleep's wake-up."""
    return f"step.{step_id}.{attempt}"


RUN_TIMEOUT_TIMER_ID = "run_timeout"


def timer_seed(run_seed: int, timer_id: str) -> int:
    """The seed a timer's FireTimer carries (for jitter of the retry it may cause): derived from
    the run's seed and the timer id, so it differs per timer and replays identically."""
    return (run_seed ^ zlib.crc32(timer_id.encode())) & 0x7FFF_FFFF_FFFF_FFFF


def arm_timer(
    state: RunState,
    timer_id: str,
    kind: TimerKind,
    fire_at_ms: int,
    *,
    step_id: str = "",
    attempt: int = 0,
) -> ArmTimer:
    """The effect arming a durable timer whose firing is a FireTimer command of the run."""
    command = FireTimer(
        run_id=state.run_id,
        at_ms=fire_at_ms,
        seed=timer_seed(state.seed, timer_id),
        timer_id=timer_id,
        kind=kind,
        step_id=step_id,
        attempt=attempt,
    )
    return ArmTimer(run_id=state.run_id, timer_id=timer_id, fire_at_ms=fire_at_ms, command=command)


def step_timeout_timer(state: RunState, step_id: str) -> ArmTimer | None:
    """The timer of the current attempt's deadline, if the step has one."""
    step = state.step(step_id)
    assert step is not None, f"no step {step_id!r}"
    if step.deadline_ms is None:
        return None
    timer_id = step_timeout_timer_id(step_id, step.attempt)
    return arm_timer(
        state, timer_id, "step_timeout", step.deadline_ms, step_id=step_id, attempt=step.attempt
    )


def set_wake(state: RunState, step_id: str, wake_at_ms: int | None) -> RunState:
    """Evolve part of a step type's own timer: arm (`wake_at_ms`) or clear (None) it."""
    index = state.index_of(step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {step_id!r}"
    step = msgspec.structs.replace(state.steps[index], wake_at_ms=wake_at_ms)
    steps = (*state.steps[:index], step, *state.steps[index + 1 :])
    return msgspec.structs.replace(state, steps=steps)


def step_timer(state: RunState, step_id: str) -> ArmTimer | None:
    """The step type's own timer for the current attempt, if one is armed (`wake_at_ms`)."""
    step = state.step(step_id)
    assert step is not None, f"no step {step_id!r}"
    if step.wake_at_ms is None:
        return None
    timer_id = step_timer_id(step_id, step.attempt)
    return arm_timer(
        state, timer_id, "step", step.wake_at_ms, step_id=step_id, attempt=step.attempt
    )


class StepTypeBase:
    """Defaults for the optional parts of a step type: no own timers, signals or events."""

    needs_task = False

    def fire(self, context: DecideContext, step_id: str, command: FireTimer) -> None:
        """A timer of a kind this type never arms: nothing to decide."""

    def signal(self, context: DecideContext, step_id: str, signal_index: int) -> None:
        """Signals do not concern this type."""

    def child_reported(self, context: DecideContext, step_id: str, command: RecordChild) -> None:
        """This type starts no child runs."""

    def external_event(self, context: DecideContext, step_id: str, command: DeliverEvent) -> None:
        """External events do not concern this type."""

    def approval_resolved(
        self, context: DecideContext, step_id: str, approval: ApprovalState
    ) -> None:
        """This type asks no approvals."""

    has_items = False

    def task_completed(self, context: DecideContext, step_id: str, output: msgspec.Raw) -> None:
        """The worker's output is the step's output."""
        context.complete(step_id, output)

    def item(self, context: DecideContext, step_id: str, key: str, command: AnyCommand) -> None:
        """This type runs no items of its own."""

    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        raise AssertionError(f"{type(self).__name__} owns no event {type(event).__name__}")

    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        return ()

    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        return ()
