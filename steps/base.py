"""What every step module builds on: the decision draft, defaults, and the common parts of an
attempt (its `step.scheduled` event, its task message, a step's own timer).

A step type's decide part writes into a `Draft`: `emit` records an event and folds it into the
draft's own copy of the state (so the step's later reads see it, exactly as replay will);
`complete` and `fail` record that the attempt ended and are applied by `kernel.decide` with
every run rule that follows (retries, on_failure, compensation, advance). The draft never
applies a run rule itself. Pure: no I/O.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from kernel import limits
from kernel.commands import CompleteTask, FireTimer, Rejection, ResolveApproval
from kernel.effects import AnyEffect, ArmTimer, EnqueueTask, task_msg_id
from kernel.errors import Problem
from kernel.events import NULL, AnyEvent, ErrorInfo, StepEvent, StepScheduled, TimerFired
from kernel.outcome import Action, Complete, Emit, Fail, Outcome, StepInput
from kernel.reducer import evolve
from kernel.registry import DecideContext
from kernel.state import RunState
from kernel.timers import arm_timer, step_timer_id
from kernel.workflow import StepDef

ConfigT = TypeVar("ConfigT")


class Draft:
    """One step's decision being built: its actions, and the state its own events lead to."""

    __slots__ = ("actions", "at_ms", "ended", "seed", "state")

    def __init__(self, context: DecideContext) -> None:
        self.state = context.state
        self.at_ms = context.at_ms
        self.seed = context.seed
        self.actions: list[Action] = []
        self.ended: set[str] = set()

    def emit(self, event: AnyEvent) -> None:
        """Record `event` and fold it into the draft's state."""
        assert len(self.actions) < limits.events_per_decision_max, "decision too large"
        before = self.state
        self.state = evolve(before, event)
        self.actions.append(Emit(event=event, folded=(before, self.state)))

    def complete(self, step_id: str, output: msgspec.Raw) -> None:
        """The live attempt of `step_id` succeeded with `output` (applied by the kernel)."""
        assert step_id not in self.ended, f"{step_id!r} ended twice in one decision"
        self.ended.add(step_id)
        self.actions.append(Complete(step_id=step_id, output=output))

    def fail(
        self,
        step_id: str,
        error: ErrorInfo,
        *,
        retryable: bool,
        retry_after_ms: int | None = None,
        timed_out: bool = False,
    ) -> None:
        """The live attempt of `step_id` failed (applied by the kernel under its policy)."""
        assert step_id not in self.ended, f"{step_id!r} ended twice in one decision"
        self.ended.add(step_id)
        self.actions.append(
            Fail(
                step_id=step_id,
                error=error,
                retryable=retryable,
                retry_after_ms=retry_after_ms,
                timed_out=timed_out,
            )
        )

    def outcome(self) -> Outcome:
        return tuple(self.actions)


class StepTypeBase:
    """Defaults for a step type: no config, no own events; a worker's result completes the
    step; nothing else concerns it. Subclasses implement `on` (the decide part, written
    into a draft) and override the other parts they need."""

    name = ""
    needs_task = False
    config_fields: tuple[str, ...] = ()  # the config's field names as users write them

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        return ()

    def read_config(self, step: StepDef) -> object:
        return None

    def decide(self, context: DecideContext, step_id: str, given: StepInput) -> Outcome | Rejection:
        assert step_id, "a step has an id (the caller found its definition: kernel.lifecycle.ask)"
        draft = Draft(context)
        rejection = self.on(draft, step_id, given)
        if rejection is not None:
            assert not draft.actions, "a refused command decides nothing"
            return rejection
        if isinstance(given, ResolveApproval) and not draft.actions:
            return no_approval(draft.state, given)  # (a type that takes none: never ignored)
        return draft.outcome()

    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        """The decide part: write what `given` means for the step into `draft` (the default:
        a worker's result completes the step; anything else is nothing to decide)."""
        if isinstance(given, CompleteTask):
            draft.complete(step_id, given.output)
        if isinstance(given, ResolveApproval):
            return no_approval(draft.state, given)
        return None

    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        raise AssertionError(f"{type(self).__name__} owns no event {type(event).__name__}")

    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        return ()

    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        return ()


def no_approval(state: RunState, command: ResolveApproval) -> Rejection:
    """The refusal of a decision on an approval the run never asked (of that step)."""
    key = command.key or command.step_id
    asked = ", ".join(a.key for a in state.approvals[:20]) or "none"
    step = state.step_def(command.step_id)
    kind = f"; step {command.step_id!r} is a {step.type} step" if step is not None else ""
    message = f"run {state.run_id!r} has no approval {key!r} waiting (asked: {asked}{kind})"
    return Rejection(run_id=state.run_id, code="unknown_step", message=message)


class ConfiguredStepType(StepTypeBase, Generic[ConfigT]):
    """A step type whose config is read by its module's reader: `read(step, path)` gives the
    typed config, or every problem with it (paths like `steps[3].config.x`). Subclasses set
    `config_type` and `read`."""

    config_type: type[ConfigT]

    @staticmethod
    def read(step: StepDef, path: str) -> ConfigT | tuple[Problem, ...]:
        raise NotImplementedError

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        config = self.read(step, path)
        return config if isinstance(config, tuple) else ()

    def read_config(self, step: StepDef) -> ConfigT:
        config = self.read(step, step.id)
        assert isinstance(config, self.config_type), f"{step.id!r}: validated at registration"
        return config


def woke(draft: Draft, step_id: str, command: FireTimer, output: msgspec.Raw | None) -> None:
    """A step's own wake-up timer (`wake_at_ms`) fired: record `timer.fired` and complete the
    step with `output` (its input when None). A timer no longer armed decides nothing."""
    step = draft.state.step(step_id)
    assert step is not None and step.status in ("scheduled", "running"), (step_id, step)
    if step.wake_at_ms is None:
        return
    draft.emit(TimerFired(step_id=step_id, timer_id=command.timer_id, at_ms=draft.at_ms))
    draft.complete(step_id, step.input if output is None else output)


def schedule_attempt(
    state: RunState, step_id: str, attempt: int, input: msgspec.Raw, at_ms: int
) -> StepScheduled:
    """The `step.scheduled` event of `attempt`, with its deadline when the step has a timeout."""
    step_def = state.step_def(step_id)
    assert step_def is not None, f"run {state.run_id!r} has no step {step_id!r}"
    top = limits.attempt_number_max  # max_attempts failures and lost_attempts_max lost ones
    assert 1 <= attempt <= top, f"attempt {attempt} out of 1..{top}"
    deadline = at_ms + step_def.timeout_ms if step_def.timeout_ms is not None else None
    return StepScheduled(
        step_id=step_id, attempt=attempt, input=input, at_ms=at_ms, deadline_ms=deadline
    )


def enqueue_task(state: RunState, step_id: str, envelope: msgspec.Raw = NULL) -> EnqueueTask:
    """The task message for the step's current attempt (`envelope`: what the step type tells
    its handler beside the input, as a JSON object; see `EnqueueTask.envelope`)."""
    position = state.index_of(step_id)  # (one look-up for the definition and the state)
    assert position >= 0, f"no step {step_id!r}"
    step_def, step = state.step_defs[position], state.steps[position]
    assert step.attempt >= 1, f"step {step_id!r} is not scheduled"
    return EnqueueTask(
        run_id=state.run_id,
        step_id=step_id,
        attempt=step.attempt,
        task=step_def.task,
        input=step.input,
        metadata=step_def.metadata,
        msg_id=task_msg_id(state.run_id, step_id, step.attempt, state.seed),
        deadline_ms=step.deadline_ms,
        envelope=envelope,
    )


def set_wake(state: RunState, step_id: str, wake_at_ms: int | None) -> RunState:
    """Evolve part of a step type's own timer: arm (`wake_at_ms`) or clear (None) it, and
    count the event (kernel.registry: a step type's evolve counts its event)."""
    index = state.index_of(step_id)
    assert index >= 0, f"run {state.run_id!r} has no step {step_id!r}"
    step = msgspec.structs.replace(state.steps[index], wake_at_ms=wake_at_ms)
    steps = (*state.steps[:index], step, *state.steps[index + 1 :])
    return msgspec.structs.replace(state, steps=steps, event_count=state.event_count + 1)


def counted(state: RunState) -> RunState:
    """`state` with one more event counted: the evolve part of a step type whose event
    changes nothing else, or that changes the run through a helper that does not count."""
    return msgspec.structs.replace(state, event_count=state.event_count + 1)


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


def config_of(state: RunState, step_id: str, config_type: type[ConfigT]) -> ConfigT:
    """A step's typed config (converted once per definition value; see `StepDef.settings`)."""
    step_def = state.step_def(step_id)
    assert step_def is not None, f"run {state.run_id!r} has no step {step_id!r}"
    config = step_def.settings
    assert isinstance(config, config_type), f"{step_id!r}: config validated at registration"
    return config
