"""The `task` step type: runs a worker handler once per attempt (retries are the kernel's).

decide: a ready task step schedules attempt 1 with its resolved input.
evolve: nothing of its own (the common step events carry it).
react: a scheduled attempt becomes a task message for the worker.
resume: a scheduled or running attempt's task message is published again (deduplicated).
"""

from __future__ import annotations

import msgspec

from kernel import registry
from kernel.effects import AnyEffect
from kernel.errors import Problem
from kernel.events import AnyEvent, StepScheduled
from kernel.registry import DecideContext
from kernel.state import RunState
from kernel.step_api import StepTypeBase, enqueue_task, schedule_attempt
from kernel.workflow import EMPTY_OBJECT, StepDef


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
    def start(self, context: DecideContext, step_id: str, input: msgspec.Raw, attempt: int) -> None:
        context.emit(schedule_attempt(context.state, step_id, attempt, input, context.at_ms))

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        if isinstance(event, StepScheduled):
            return (enqueue_task(state, event.step_id),)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        return (enqueue_task(state, step_id),)


TASK = registry.register(TaskStep())
