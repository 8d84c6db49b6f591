"""Pure queries over a run's state and DAG that `decide` builds on.

Readiness inputs (a step's resolved input, the run's output), handler roles (on_failure and
compensate steps), attempts that are live, and the shaping of texts and refusals. No events
are decided here; `kernel/decide.py` does that.
"""

from __future__ import annotations

from typing import Final, cast

import msgspec

from kernel import appended, limits
from kernel.commands import AnyCommand, CompleteTask, FailTask, Rejection, SendSignal, TaskStarted
from kernel.dag_index import HandlerRole, dag_index
from kernel.effects import life_tag
from kernel.payloads import compose_object
from kernel.state import DONE_STEP_STATUSES, RunState, StepState
from kernel.workflow import NO_RETRY, RetryPolicy, StepDef


def no_run(command: AnyCommand) -> str:
    return f"run {command.run_id!r} does not exist (no run.started in its history)"


def unknown_step(state: RunState, step_id: str) -> Rejection:
    known = ", ".join(state.step_ids[:20])
    message = f"run {state.run_id!r} has no step {step_id!r} (known: {known})"
    return Rejection(run_id=state.run_id, code="unknown_step", message=message)


def current_attempt(state: RunState, step_id: str, attempt: int) -> StepState | None:
    """The step when `attempt` is its live attempt (scheduled or running), else None."""
    assert attempt >= 0, f"attempt {attempt} of {step_id!r}"
    step = state.step(step_id)
    if step is None or step.attempt != attempt:
        return None
    assert step.attempt <= limits.attempt_number_max, f"{step_id!r} at attempt {step.attempt}"
    return step if step.status in ("scheduled", "running") else None


def of_another_life(state: RunState, command: AnyCommand) -> bool:
    """Whether `command` is a result (TaskStarted, CompleteTask, FailTask) of a task of
    another life of the run: its run id purged and started again while the old task ran
    (kernel/commands `Life`; a result without a life tag is not checked)."""
    if type(command) not in _RESULTS:  # (every command comes here: no attribute look-up)
        return False
    life = cast("TaskStarted | CompleteTask | FailTask", command).life
    return life is not msgspec.UNSET and life != life_tag(state.seed)


_RESULTS: Final = frozenset({TaskStarted, CompleteTask, FailTask})


def truncate(text: str) -> str:
    """`text` cut to limits.error_message_bytes_max bytes (an ellipsis included)."""
    data = text.encode()
    if len(data) <= limits.error_message_bytes_max:
        return text
    ellipsis = "…"
    room = limits.error_message_bytes_max - len(ellipsis.encode())
    result = data[:room].decode(errors="ignore") + ellipsis
    assert len(result.encode()) <= limits.error_message_bytes_max
    return result


def signal_problem(state: RunState, command: SendSignal) -> str | None:
    if not command.name or len(command.name) > limits.signal_name_length_max:
        return f"signal name {command.name!r} must be 1..{limits.signal_name_length_max} characters"
    if len(command.signal_id) > limits.signal_id_length_max:
        size = len(command.signal_id)
        return f"signal_id is {size} characters; the limit is {limits.signal_id_length_max}"
    if len(command.payload) > limits.signal_bytes_max:
        size = len(command.payload)
        return f"signal payload is {size} bytes; the limit is {limits.signal_bytes_max} bytes"
    if len(state.signals) >= limits.signals_per_run_max:
        return (
            f"run {state.run_id!r} already holds {limits.signals_per_run_max} signals (the limit)"
        )
    return None


def signal_received(state: RunState, signal_id: str) -> bool:
    """Whether the run already received the signal with this identity ("" is no identity)."""
    assert len(state.signals) <= limits.signals_per_run_max, len(state.signals)
    return bool(signal_id) and any(signal.signal_id == signal_id for signal in state.signals)


def retry_policy(state: RunState, step_def: StepDef) -> RetryPolicy:
    policy = step_def.retry or (state.workflow and state.workflow.default_retry) or NO_RETRY
    assert state.workflow is not None, "a started run has its workflow"
    assert 1 <= policy.max_attempts <= limits.attempts_max, f"max_attempts {policy.max_attempts}"
    return policy


def handler_role(state: RunState, step_id: str) -> HandlerRole | None:
    """Whether `step_id` is some step's on_failure or compensate handler, and whose (the
    first step naming it, on_failure before compensate; kernel.dag_index keeps the answer)."""
    return dag_index(state.step_defs).roles.get(step_id)


def handler_ids(state: RunState) -> frozenset[str]:
    """Every step that is some step's on_failure or compensate handler."""
    handlers = dag_index(state.step_defs).handlers
    assert len(handlers) <= len(state.step_defs), "handlers are steps of the run"
    return handlers


def compensable(state: RunState) -> tuple[str, ...]:
    """Completed, not yet compensated steps that have a compensate handler, latest first."""
    candidates = [
        (step.completion_index, step.step_id)
        for step, step_def in zip(state.steps, state.step_defs, strict=True)
        if step.status == "completed" and not step.compensated and step_def.compensate
    ]
    assert all(index >= 0 for index, _ in candidates), "a completed step has its order"
    assert len({index for index, _ in candidates}) == len(candidates), "completion order is total"
    return tuple(step_id for _, step_id in sorted(candidates, reverse=True))


def resolve_input(
    state: RunState, step_def: StepDef, positions: tuple[int, ...] | None = None
) -> msgspec.Raw:
    """Root: the run input; one dependency: its output; several: an object keyed by step id.
    `positions`: those of the dependencies (kernel.dag_index), when the caller knows them and
    each is done (one dependency's output is then found without a look-up by id)."""
    if positions is not None and len(positions) == 1:
        done = state.steps[positions[0]]
        assert done.status in DONE_STEP_STATUSES, f"{done.step_id!r} is done"
        return done.output
    deps = step_def.depends_on
    outputs = [_done_output(state, dep) for dep in deps]
    if not deps:
        parent_input = appended.root_input(state, step_def)
        return state.input if parent_input is None else parent_input
    if len(deps) == 1:
        return outputs[0]
    return compose_object(zip(deps, outputs, strict=True))


def _done_output(state: RunState, step_id: str) -> msgspec.Raw:
    step = state.step(step_id)
    assert step is not None and step.status in DONE_STEP_STATUSES, f"{step_id!r} is done"
    return step.output


def run_output(state: RunState, handlers: frozenset[str]) -> msgspec.Raw:
    """Outputs of the terminal steps (no dependents): one as is, several keyed by step id."""
    depended_on = {dep for step_def in state.step_defs for dep in step_def.depends_on}
    terminal = [
        step
        for step in state.steps
        if step.step_id not in depended_on
        and step.step_id not in handlers
        and not appended.is_appended(step.step_id)
    ]
    assert all(step.status in DONE_STEP_STATUSES for step in terminal), "the run's output is final"
    if len(terminal) == 1:
        return terminal[0].output
    return compose_object((step.step_id, step.output) for step in terminal)
