"""The `planner` step type: a worker handler returns a plan (a sub-DAG) that runs in this run.

Config: `max_steps`, `max_depth`, `allowed_tasks`, `allowed_types` (steps/planner_plan.py).
The handler returns `{"steps": [...]}` in the workflow step format. A valid plan is recorded
(`planner.materialized`) and its steps join the run with ids `<planner>.<id>`; steps that
depend on the planner wait for the whole plan and get the outputs of its terminal steps as an
object keyed by their ids in the plan. An empty plan completes the planner with `{}`. An invalid
plan is recorded (`planner.rejected`, every problem) and fails the attempt; under a retry policy
the next attempt's task message carries those problems (`previous_errors`) so the planner can
fix its plan. The step's `timeout` bounds each planning attempt, not the plan's run.

decide: start schedules an attempt (a task, like `task`); the task's result is read as a plan.
evolve: `planner.materialized` appends the plan (kernel.dynamic); `planner.rejected` keeps the
problems for the next attempt.
react: a scheduled attempt is a task message with the previous attempt's problems.
resume: the task message again, while no plan of the live attempt was materialized.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import dynamic, limits, registry
from kernel.effects import AnyEffect, CancelTimer
from kernel.errors import Problem
from kernel.events import (
    AnyEvent,
    ErrorInfo,
    PlannerMaterialized,
    PlannerRejected,
    StepEvent,
    StepScheduled,
)
from kernel.registry import DecideContext
from kernel.state import RunState
from kernel.step_api import StepTypeBase, enqueue_task, schedule_attempt, step_timeout_timer_id
from kernel.workflow import StepDef
from steps.planner_plan import read_config, read_plan

ELLIPSIS: Final = "…"


class PlannerStep(StepTypeBase):
    """Ask a handler for a plan; validate, namespace and run it; join its terminal outputs."""

    name = "planner"
    needs_task = True

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        config = read_config(step, path)
        return config if isinstance(config, tuple) else ()

    # decide
    def start(self, context: DecideContext, step_id: str, input: msgspec.Raw, attempt: int) -> None:
        context.emit(schedule_attempt(context.state, step_id, attempt, input, context.at_ms))

    def task_completed(self, context: DecideContext, step_id: str, output: msgspec.Raw) -> None:
        state = context.state
        step = state.step(step_id)
        assert step is not None
        record = dynamic.parent_record(state, step_id)
        if record is not None and record.attempt == step.attempt:
            return  # this attempt's plan already runs: a repeated result
        plan = read_plan(state, step_id, output)
        if plan and isinstance(plan[0], Problem):
            problems = tuple(str(problem) for problem in plan)
            context.emit(
                PlannerRejected(
                    step_id=step_id, attempt=step.attempt, problems=problems, at_ms=context.at_ms
                )
            )
            context.fail(step_id, ErrorInfo(message=_rejection_message(problems)), retryable=True)
            return
        steps = tuple(item for item in plan if isinstance(item, StepDef))
        context.emit(
            PlannerMaterialized(
                step_id=step_id, attempt=step.attempt, steps=steps, at_ms=context.at_ms
            )
        )  # the kernel starts the plan's roots, and completes the planner when all are done

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        match event:
            case PlannerMaterialized():
                return dynamic.append_steps(state, event.step_id, event.attempt, event.steps)
            case PlannerRejected():
                return dynamic.record_rejection(state, event.step_id, event.attempt, event.problems)
        raise AssertionError(f"planner owns no event {type(event).__name__}")

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        match event:
            case StepScheduled():
                return (_task(state, event.step_id),)
            case PlannerMaterialized():
                step_def = state.step_def(event.step_id)
                assert step_def is not None
                if step_def.timeout_ms is None:
                    return ()
                timer_id = step_timeout_timer_id(event.step_id, event.attempt)
                return (CancelTimer(run_id=state.run_id, timer_id=timer_id),)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        step = state.step(step_id)
        record = dynamic.parent_record(state, step_id)
        assert step is not None
        if record is not None and record.attempt == step.attempt:
            return ()  # the plan runs; its steps resume as steps of the run
        return (_task(state, step_id),)


def _task(state: RunState, step_id: str) -> AnyEffect:
    """The task message of the live attempt, with the problems of the previous attempt's plan."""
    task = enqueue_task(state, step_id)
    record = dynamic.parent_record(state, step_id)
    if record is None or record.rejected_attempt != task.attempt - 1:
        return task
    return msgspec.structs.replace(task, previous_errors=record.previous_errors)


def _rejection_message(problems: tuple[str, ...]) -> str:
    text = f"the plan is invalid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
    data = text.encode()
    if len(data) <= limits.error_message_bytes_max:
        return text
    room = limits.error_message_bytes_max - len(ELLIPSIS.encode())
    return data[:room].decode(errors="ignore") + ELLIPSIS


PLANNER = registry.register(PlannerStep())
