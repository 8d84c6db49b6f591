"""The `planner` step type: a worker handler returns a plan (a sub-DAG) that runs in this run.

Config: `max_steps`, `max_depth`, `allowed_tasks`, `allowed_types` (steps/planner_plan.py).
The handler returns `{"steps": [...]}` in the workflow step format. A valid plan is recorded
(`planner.materialized`) and its steps join the run with ids `<planner>.<id>`; steps that
depend on the planner wait for the whole plan and get the outputs of its terminal steps as an
object keyed by their ids in the plan. An empty plan completes the planner with `{}`. An invalid
plan is recorded (`planner.rejected`, every problem) and fails the attempt; under a retry policy
the next attempt's task message carries those problems (its envelope's `previous_errors`) so
the planner can fix its plan. The step's `timeout` bounds each planning attempt, not the plan's run.

decide: start schedules an attempt (a task, like `task`); the task's result is read as a plan.
evolve: `planner.materialized` appends the plan (kernel.appended); `planner.rejected` keeps the
problems for the next attempt.
react: a scheduled attempt is a task message with the previous attempt's problems.
resume: the task message again, while no plan of the live attempt was materialized.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import appended, limits, registry
from kernel.commands import CompleteTask, Rejection
from kernel.effects import AnyEffect, CancelTimer
from kernel.errors import Problem
from kernel.events import (
    AnyEvent,
    ErrorInfo,
    PlannerMaterialized,
    PlannerRejected,
    StepEvent,
    StepScheduled,
    StepSkipped,
)
from kernel.outcome import OwnedStepFailed, OwnedStepsDone, StartAttempt, StepInput
from kernel.payloads import compose_object
from kernel.state import RunState
from kernel.step_states import DynamicParent
from kernel.timers import step_timeout_timer_id
from kernel.workflow import StepDef
from steps.base import ConfiguredStepType, Draft, counted, enqueue_task, schedule_attempt
from steps.planner_plan import CONFIG_FIELDS, PlannerConfig, read_config, read_plan

ELLIPSIS: Final = "…"


class PlannerStep(ConfiguredStepType[PlannerConfig]):
    """Ask a handler for a plan; validate, namespace and run it; join its terminal outputs."""

    name = "planner"
    needs_task = True
    config_type = PlannerConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                draft.emit(
                    schedule_attempt(draft.state, step_id, given.attempt, given.input, draft.at_ms)
                )
            case CompleteTask():
                _plan_returned(draft, step_id, given.output)
            case OwnedStepsDone():
                record = appended.parent_record(draft.state, step_id)
                assert record is not None, f"{step_id!r} appended no plan"
                draft.complete(step_id, plan_output(draft.state, record))
            case OwnedStepFailed():
                _plan_step_failed(draft, step_id, given)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        state = counted(state)
        match event:
            case PlannerMaterialized():
                return appended.append_steps(state, event.step_id, event.attempt, event.steps)
            case PlannerRejected():
                record = appended.parent_record(state, event.step_id)
                record = record or DynamicParent(step_id=event.step_id)
                record = msgspec.structs.replace(
                    record, rejected_attempt=event.attempt, previous_errors=event.problems
                )
                return appended.with_parent(state, record)
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
        assert step is not None
        if appended.runs_appended(state, step_id, step.attempt):
            return ()  # the plan runs; its steps resume as steps of the run
        return (_task(state, step_id),)


class PlannerEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """What a planner's handler is told beside its input (`EnqueueTask.envelope`): the
    problems of the plan its previous attempt returned, so it can fix its plan."""

    previous_errors: tuple[str, ...] = ()


def _task(state: RunState, step_id: str) -> AnyEffect:
    """The task message of the live attempt, with the problems of the previous attempt's plan."""
    step = state.step(step_id)
    record = appended.parent_record(state, step_id)
    assert step is not None and step.attempt >= 1
    if record is None or record.rejected_attempt != step.attempt - 1:
        return enqueue_task(state, step_id)
    envelope = PlannerEnvelope(previous_errors=record.previous_errors)
    return enqueue_task(state, step_id, msgspec.Raw(msgspec.json.encode(envelope)))


def _plan_returned(draft: Draft, step_id: str, output: msgspec.Raw) -> None:
    state = draft.state
    step = state.step(step_id)
    assert step is not None
    if appended.runs_appended(state, step_id, step.attempt):
        return  # this attempt's plan already runs: a repeated result
    plan = read_plan(state, step_id, output)
    if plan and isinstance(plan[0], Problem):
        problems = tuple(str(problem) for problem in plan)
        draft.emit(
            PlannerRejected(
                step_id=step_id, attempt=step.attempt, problems=problems, at_ms=draft.at_ms
            )
        )
        draft.fail(step_id, ErrorInfo(message=_rejection_message(problems)), retryable=True)
        return
    steps = tuple(item for item in plan if isinstance(item, StepDef))
    draft.emit(
        PlannerMaterialized(step_id=step_id, attempt=step.attempt, steps=steps, at_ms=draft.at_ms)
    )  # the run starts the plan's roots, and tells the planner when all are done


def plan_output(state: RunState, record: DynamicParent) -> msgspec.Raw:
    """The outputs of a plan's terminal steps (no sibling depends on them, not handlers),
    as an object keyed by their ids in the plan."""
    used = appended.handlers_among(state, record.children)
    for child in record.children:
        step_def = state.step_def(child)
        assert step_def is not None
        used.update(step_def.depends_on)
    pairs = []
    for child in record.children:
        if child not in used:
            step = state.step(child)
            assert step is not None
            pairs.append((appended.local_id(child), step.output))
    return compose_object(pairs)


def _plan_step_failed(draft: Draft, step_id: str, given: OwnedStepFailed) -> None:
    """A step of the plan failed for good: skip the plan's pending steps, and the planner
    fails for good (its own on_failure, or the run's failure, follows)."""
    state = draft.state
    reason = f"step {given.step_id!r} of its plan failed"
    handlers = {
        name
        for step_def in state.step_defs
        for name in (step_def.on_failure, step_def.compensate)
        if name
    }
    prefix = step_id + "."
    for step in state.steps:
        pending = step.status == "pending" and step.step_id.startswith(prefix)
        if pending and step.step_id not in handlers:
            draft.emit(StepSkipped(step_id=step.step_id, reason=reason, at_ms=draft.at_ms))
    message = f"step {appended.local_id(given.step_id)!r} of the plan failed: {given.error.message}"
    draft.fail(step_id, ErrorInfo(message=message, kind=given.error.kind), retryable=False)


def _rejection_message(problems: tuple[str, ...]) -> str:
    text = f"the plan is invalid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
    data = text.encode()
    if len(data) <= limits.error_message_bytes_max:
        return text
    room = limits.error_message_bytes_max - len(ELLIPSIS.encode())
    return data[:room].decode(errors="ignore") + ELLIPSIS


PLANNER = registry.register(PlannerStep())
