"""The `task` step type: runs a worker handler once per attempt (retries are the kernel's).

decide: a ready task step schedules the attempt with its resolved input; the worker's result
completes it (the default of `StepTypeBase`).
evolve: nothing of its own (the common step events carry it).
react: a scheduled attempt becomes a task message for the worker.
resume: a scheduled or running attempt's task message is published again (deduplicated).
"""

from __future__ import annotations

from kernel import registry
from kernel.commands import Rejection
from kernel.effects import AnyEffect
from kernel.errors import Problem
from kernel.events import AnyEvent, StepScheduled
from kernel.outcome import StartAttempt, StepInput
from kernel.state import RunState
from kernel.workflow import EMPTY_OBJECT, StepDef
from steps.base import Draft, StepTypeBase, enqueue_task, schedule_attempt


class TaskStep(StepTypeBase):
    """A unit of work run by a worker handler for `task`."""

    name = "task"
    needs_task = True

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        if step.config != EMPTY_OBJECT:
            return (
                Problem(
                    path=f"{path}.config",
                    value=bytes(step.config).decode()[:80],
                    rule="a task step takes no config",
                ),
            )
        return ()

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        if isinstance(given, StartAttempt):
            draft.emit(
                schedule_attempt(draft.state, step_id, given.attempt, given.input, draft.at_ms)
            )
            return None
        return super().on(draft, step_id, given)

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        if isinstance(event, StepScheduled):
            return (enqueue_task(state, event.step_id),)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        return (enqueue_task(state, step_id),)


TASK = registry.register(TaskStep())
