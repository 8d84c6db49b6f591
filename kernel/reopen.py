"""Run lifecycle operations: reopen an ended run in place, terminate a run, discard a dead letter.

A run's rules say that an ended run stays ended; these are the operator's exceptions, each a
command and an event in the run's own history, so they replay and audit like the rest:

- `ReopenRun` -> `run.reopened`: a failed, cancelled or terminated run goes on in place. The
  steps reset to pending are the start points (the given step, or the failed steps), every
  step downstream of them, every step that had not finished, and every step whose
  compensation ran (its effect was undone); the outputs of the other steps are kept and they
  do not run again. A reset step's attempts go on from where they were (`attempt_base`), so
  task message ids stay unique and its retry policy counts afresh.
- `TerminateRun` -> `run.terminated`: the run ends at once, no compensation (terminal).
- `DiscardDeadLetter` -> `dead_letter.discarded`: a dead letter leaves the list (also on an
  ended run); nothing else changes.

A dead letter is derived, never stored apart: a step of the run that failed for good (status
`failed`) whose attempt was not discarded. It is recorded once by construction (it is the
step's state), and it leaves the list when its step runs again after a reopen.

Pure: no I/O, no clock. `decide` here returns events (or a Rejection); `kernel.decide` emits
them and advances the DAG. No step type is named here.
"""

from __future__ import annotations

import msgspec

from kernel import limits
from kernel.commands import DiscardDeadLetter, Rejection, ReopenRun, TerminateRun
from kernel.dag_index import dag_index
from kernel.events import NULL, DeadLetterDiscarded, ErrorInfo, RunReopened, RunTerminated
from kernel.state import DONE_STEP_STATUSES, RunState, StepState, is_terminal

replace = msgspec.structs.replace

REOPENABLE_STATUSES: frozenset[str] = frozenset(
    {"failed", "compensate_failed", "cancelled", "terminated"}
)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A step that failed for good: where, how often it was tried, why, and its exact input."""

    run_id: str
    workflow: str
    step_id: str
    task: str  # the worker task it ran ("" for a step without one)
    attempt: int  # its last attempt number (the id of this dead letter with the step)
    attempts: int  # attempts since the run's last reopen
    error: ErrorInfo | None
    input: msgspec.Raw
    at_ms: int | None


# --- decide ---------------------------------------------------------------------------------


def decide_reopen(state: RunState, command: ReopenRun) -> tuple[RunReopened, ...] | Rejection:
    """The `run.reopened` event of a reopen, or why it is refused; () for a stale one."""
    if command.reopens != state.reopens:
        return ()  # redelivered after it applied, or raced by another reopen
    if state.status not in REOPENABLE_STATUSES:
        message = (
            f"run {state.run_id!r} is {state.status}; only a failed, cancelled or terminated "
            "run can be retried in place"
        )
        if is_terminal(state):
            return Rejection(run_id=state.run_id, code="run_finished", message=message)
        return Rejection(run_id=state.run_id, code="invalid", message=message)
    if state.reopens >= limits.reopens_max:
        message = (
            f"run {state.run_id!r} was reopened {state.reopens} times; the limit is "
            f"reopens_max = {limits.reopens_max} (start a new run with `dagnats run rerun`)"
        )
        return Rejection(run_id=state.run_id, code="invalid", message=message)
    starts = _start_points(state, command.from_step)
    if isinstance(starts, Rejection):
        return starts
    reset = reset_steps(state, starts)
    problem = _not_resettable(state, reset)
    if problem:
        return Rejection(run_id=state.run_id, code="invalid", message=problem)
    event = RunReopened(
        from_steps=starts, reset=reset, reason=command.reason[:1024], at_ms=command.at_ms
    )
    return (event,)


def decide_terminate(state: RunState, command: TerminateRun) -> tuple[RunTerminated, ...]:
    """A live run ends at once (the caller refuses a terminal one)."""
    assert not is_terminal(state), f"run {state.run_id!r} is {state.status}"
    return (RunTerminated(reason=command.reason[:1024], at_ms=command.at_ms),)


def decide_discard(
    state: RunState, command: DiscardDeadLetter
) -> tuple[DeadLetterDiscarded, ...] | Rejection:
    """Discard a dead letter of the run; () when it was discarded already."""
    key = f"{command.step_id}:{command.attempt}"
    if key in state.discarded:
        return ()
    letters = {(d.step_id, d.attempt) for d in dead_letters(state)}
    if (command.step_id, command.attempt) not in letters:
        message = (
            f"run {state.run_id!r} has no dead letter for step {command.step_id!r} attempt "
            f"{command.attempt} (see `dagnats dlq list`)"
        )
        return Rejection(run_id=state.run_id, code="unknown_step", message=message)
    event = DeadLetterDiscarded(
        step_id=command.step_id,
        attempt=command.attempt,
        reason=command.reason[:1024],
        at_ms=command.at_ms,
    )
    return (event,)


def _start_points(state: RunState, from_step: str) -> tuple[str, ...] | Rejection:
    if from_step:
        if state.step(from_step) is None:
            known = ", ".join(state.step_ids[:20])
            message = f"--from names {from_step!r}, which is not a step of the run (known: {known})"
            return Rejection(run_id=state.run_id, code="unknown_step", message=message)
        if from_step in dag_index(state.step_defs).handlers:
            message = (
                f"--from names {from_step!r}, an on_failure or compensate handler; retry from "
                "the step it handles"
            )
            return Rejection(run_id=state.run_id, code="invalid", message=message)
        return (from_step,)
    return tuple(step.step_id for step in state.steps if step.status == "failed")


def reset_steps(state: RunState, starts: tuple[str, ...]) -> tuple[str, ...]:
    """The steps a reopen from `starts` makes pending again, in the run's step order."""
    handlers = dag_index(state.step_defs).handlers
    chosen = set(starts)
    for step in state.steps:
        if step.step_id in handlers:
            continue
        if step.status not in DONE_STEP_STATUSES or step.compensated:
            chosen.add(step.step_id)
    dependents: dict[str, list[str]] = {}
    for step_def in state.step_defs:
        for dep in step_def.depends_on:
            dependents.setdefault(dep, []).append(step_def.id)
    stack = list(chosen)
    for _ in range(len(state.step_ids) + 1):  # bounded: each step is pushed at most once
        if not stack:
            break
        for child in dependents.get(stack.pop(), ()):
            if child not in chosen:
                chosen.add(child)
                stack.append(child)
    else:
        assert not stack, "the walk downstream is bounded by the run's steps"
    for step_def in state.step_defs:  # handlers that ran, of reset steps, run again if needed
        if step_def.on_failure and step_def.id in chosen and _ran(state, step_def.on_failure):
            chosen.add(step_def.on_failure)
        if step_def.compensate and _ran(state, step_def.compensate):
            chosen.add(step_def.compensate)
    reset = tuple(step_id for step_id in state.step_ids if step_id in chosen)
    return tuple(step_id for step_id in reset if _touched(state, step_id) or step_id in starts)


def _ran(state: RunState, step_id: str) -> bool:
    step = state.step(step_id)
    return step is not None and step.status != "pending"


def _touched(state: RunState, step_id: str) -> bool:
    """Whether a step is anything but a never-run pending step (those need no reset)."""
    step = state.step(step_id)
    assert step is not None
    return step.status != "pending" or step.attempt != step.attempt_base


def _not_resettable(state: RunState, reset: tuple[str, ...]) -> str:
    """Why some step of `reset` cannot be reset ("" when all can): a step that keeps its
    type's own state (steps it appended, map items, agent turns, an approval) or was
    appended by another step would need that state undone; a reopen does not guess."""
    dynamic = state.dynamic
    owners = {p.step_id for p in dynamic.parents} | {m.step_id for m in dynamic.maps}
    owners |= {a.step_id for a in dynamic.agents} | {a.step_id for a in state.approvals}
    appended = {child for p in dynamic.parents for child in p.children}
    for step_id in reset:
        if step_id in owners or step_id in appended:
            return (
                f"step {step_id!r} keeps its own state in the run (appended steps, map items, "
                "agent turns or an approval), which a reopen cannot reset; start a new run "
                "with `dagnats run rerun`"
            )
        step = state.step(step_id)
        assert step is not None
        if step.attempt + limits.attempts_per_reopen_max > limits.attempt_number_max:
            return f"step {step_id!r} is at attempt {step.attempt}; attempt_number_max is reached"
    return ""


# --- evolve ---------------------------------------------------------------------------------


def evolve_reopened(state: RunState, event: RunReopened) -> RunState:
    """The run is running again with the steps in `reset` pending."""
    assert state.status in REOPENABLE_STATUSES, f"run {state.run_id!r} reopened: {state.status}"
    assert state.reopens < limits.reopens_max, state.reopens
    reset = set(event.reset)
    steps = tuple(_reset(step) if step.step_id in reset else step for step in state.steps)
    return replace(
        state,
        status="running",
        steps=steps,
        output=NULL,
        error=None,
        failed_step_id="",
        cancel_reason=None,
        compensation_outcome=None,
        ended_at_ms=None,
        reopens=state.reopens + 1,
        reopened_at_ms=event.at_ms,
    )


def _reset(step: StepState) -> StepState:
    return StepState(
        step_id=step.step_id,
        attempt=step.attempt,
        attempt_base=step.attempt,
        first_scheduled_at_ms=step.first_scheduled_at_ms,
    )


def evolve_terminated(state: RunState, event: RunTerminated) -> RunState:
    message = f"terminated: {event.reason}" if event.reason else "terminated"
    return replace(
        state,
        status="terminated",
        error=ErrorInfo(message=message[: limits.error_message_bytes_max], kind="cancelled"),
        ended_at_ms=event.at_ms,
    )


def evolve_discarded(state: RunState, event: DeadLetterDiscarded) -> RunState:
    key = f"{event.step_id}:{event.attempt}"
    assert key not in state.discarded, f"dead letter {key} discarded twice"
    return replace(state, discarded=(*state.discarded, key))


# --- queries --------------------------------------------------------------------------------


def dead_letters(state: RunState) -> tuple[DeadLetter, ...]:
    """The run's dead letters: its steps that failed for good, less those discarded."""
    if state.workflow is None:
        return ()
    letters: list[DeadLetter] = []
    for step, step_def in zip(state.steps, state.step_defs, strict=True):
        if step.status != "failed" or f"{step.step_id}:{step.attempt}" in state.discarded:
            continue
        letters.append(
            DeadLetter(
                run_id=state.run_id,
                workflow=state.workflow.name,
                step_id=step.step_id,
                task=step_def.task or "",
                attempt=step.attempt,
                attempts=step.attempt - step.attempt_base,
                error=step.error,
                input=step.input,
                at_ms=step.ended_at_ms,
            )
        )
    return tuple(letters)
