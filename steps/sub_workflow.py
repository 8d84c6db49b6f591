"""The `sub_workflow` step type: starts a child run of a registered workflow; no worker.

Config: `workflow` (a registered workflow's name) and `detach` (bool, default false). The child
gets the step's resolved input. Its run id is `<parent>-<step>-<attempt>` (made subject-safe),
so starting it again is idempotent. Attached (the default), the step waits for the child: it
completes with the child's output, fails when the child fails (retried under the step's policy,
each attempt a new child) and fails for good when the child is cancelled or its workflow is not
registered. Detached, the step completes as soon as the child has started, with
`{"child_run_id": ...}`, and the child outlives the parent. Depth is bounded by
`limits.sub_workflow_depth_max`.

decide: start schedules the attempt and records `child.started` (or fails when too deep); a
child's report (`RecordChild`) for the live attempt records `child.completed`/`child.failed`
and completes or fails the step.
evolve: nothing of its own (the link is in history; the child id is derived).
react: `child.started` starts the child; a timed-out attempt or the parent's end cancels an
attached child still running.
resume: a live step starts its child again (a no-op for a child that exists; one that already
ended reports again, see `kernel.run_links.repeat_start`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

import msgspec

from kernel import limits, registry
from kernel.commands import RecordChild, Rejection
from kernel.effects import AnyEffect, CancelChild, StartChild
from kernel.errors import Problem, show_value
from kernel.events import (
    AnyEvent,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    ErrorInfo,
    ErrorKind,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepEvent,
    StepTimedOut,
)
from kernel.outcome import StartAttempt, StepInput
from kernel.payloads import compose_object, encode
from kernel.state import RunState
from kernel.timers import timer_seed
from kernel.workflow import StepDef
from steps.base import ConfiguredStepType, Draft, config_of, counted, schedule_attempt

CONFIG_FIELDS = ("workflow", "detach")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_CHARS = 16


class SubWorkflowConfig(msgspec.Struct, frozen=True, kw_only=True):
    workflow: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.workflow_name_length_max)]
    detach: bool = False


def read_config(step: StepDef, path: str) -> SubWorkflowConfig | tuple[Problem, ...]:
    """The step's config, or every problem with it (paths like `steps[3].config.workflow`)."""
    document = msgspec.json.decode(bytes(step.config))
    assert isinstance(document, dict)
    problems = [
        Problem(
            path=f"{path}.config.{key}",
            value=show_value(document[key]),
            rule=f"unknown field (allowed: {', '.join(CONFIG_FIELDS)})",
        )
        for key in document
        if key not in CONFIG_FIELDS
    ]
    name = document.get("workflow")
    bound = limits.workflow_name_length_max
    if not isinstance(name, str) or not name or len(name) > bound:
        rule = f"is required: the name of a registered workflow (1..{bound} characters)"
        problems.append(Problem(path=f"{path}.config.workflow", value=show_value(name), rule=rule))
    detach = document.get("detach")
    if detach is not None and not isinstance(detach, bool):
        rule = "must be true (complete once the child started) or false (wait for its end)"
        problems.append(Problem(path=f"{path}.config.detach", value=show_value(detach), rule=rule))
    if problems:
        return tuple(problems)
    assert isinstance(name, str)
    return SubWorkflowConfig(workflow=name, detach=bool(detach))


def child_run_id(run_id: str, step_id: str, attempt: int) -> str:
    """The run id of the child started by `attempt` of a parent's step: `<run>-<step>-<attempt>`
    when that reads back unambiguously, else that (made safe, shortened to fit) followed by a
    digest of the three parts, so two different triples never give the same id.
    """
    assert attempt >= 1, f"attempt {attempt} must be >= 1"
    plain = f"{run_id}-{step_id}-{attempt}"
    ambiguous = "-" in run_id or "-" in step_id or _UNSAFE.search(step_id) is not None
    if not ambiguous and _UNSAFE.search(run_id) is None and len(plain) <= limits.run_id_length_max:
        return plain
    parts = f"{run_id}\x00{step_id}\x00{attempt}".encode()
    digest = hashlib.blake2b(parts, digest_size=_DIGEST_CHARS // 2).hexdigest()
    keep = limits.run_id_length_max - _DIGEST_CHARS - 1
    result = f"{_UNSAFE.sub('_', plain)[:keep]}-{digest}"
    assert len(result) <= limits.run_id_length_max
    return result


def _config(state: RunState, step_id: str) -> SubWorkflowConfig:
    return config_of(state, step_id, SubWorkflowConfig)


class SubWorkflowStep(ConfiguredStepType[SubWorkflowConfig]):
    """Run another workflow as a child run, and wait for it (unless detached)."""

    config_type = SubWorkflowConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "sub_workflow"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _start(draft, step_id, given)
            case RecordChild():
                _child_reported(draft, step_id, given)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        assert isinstance(event, ChildStarted | ChildCompleted | ChildFailed), type(event).__name__
        return counted(state)  # the link is in history; the child's id is derived from the attempt

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        match event:
            case ChildStarted():
                return (_start_child(state, event.step_id, event.at_ms),)
            case StepTimedOut():
                return _cancel_child(state, event.step_id, event.attempt, event.at_ms, "timed out")
            case RunCompleted() | RunFailed() | RunCancelled():
                return self._cancel_live_children(state, event.at_ms)
        return ()

    def _cancel_live_children(self, state: RunState, at_ms: int) -> tuple[AnyEffect, ...]:
        effects: list[AnyEffect] = []
        for step, step_def in zip(state.steps, state.step_defs, strict=True):
            if step_def.type == self.name and step.status in ("scheduled", "running"):
                reason = f"its parent run ended as {state.status}"
                effects.extend(_cancel_child(state, step.step_id, step.attempt, at_ms, reason))
        return tuple(effects)

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        step = state.step(step_id)
        assert step is not None
        at_ms = step.first_scheduled_at_ms if step.first_scheduled_at_ms is not None else 0
        return (_start_child(state, step_id, at_ms),)


def _start(draft: Draft, step_id: str, given: StartAttempt) -> None:
    state = draft.state
    config = _config(state, step_id)
    draft.emit(schedule_attempt(state, step_id, given.attempt, given.input, draft.at_ms))
    if state.depth + 1 > limits.sub_workflow_depth_max:
        message = (
            f"a child of run {state.run_id!r} would be at depth {state.depth + 1}; "
            f"the limit is {limits.sub_workflow_depth_max} (sub_workflow_depth_max)"
        )
        draft.fail(step_id, ErrorInfo(message=message, kind="non_retryable"), retryable=False)
        return
    draft.emit(
        ChildStarted(
            step_id=step_id,
            attempt=given.attempt,
            child_run_id=child_run_id(state.run_id, step_id, given.attempt),
            workflow=config.workflow,
            detached=config.detach,
            at_ms=draft.at_ms,
        )
    )


def _child_reported(draft: Draft, step_id: str, command: RecordChild) -> None:
    state = draft.state
    step = state.step(step_id)
    assert step is not None and step.status in ("scheduled", "running")
    if command.child_run_id != child_run_id(state.run_id, step_id, step.attempt):
        return  # the child of an earlier attempt
    detached = _config(state, step_id).detach
    child = command.child_run_id
    at_ms = draft.at_ms
    if command.status == "started" and detached:
        output = compose_object((("child_run_id", encode(child)),))
        draft.emit(ChildCompleted(step_id=step_id, child_run_id=child, output=output, at_ms=at_ms))
        draft.complete(step_id, output)
    elif command.status == "completed" and not detached:
        draft.emit(
            ChildCompleted(step_id=step_id, child_run_id=child, output=command.output, at_ms=at_ms)
        )
        draft.complete(step_id, command.output)
    elif command.status in ("failed", "cancelled"):
        cancelled = command.status == "cancelled"
        kind: ErrorKind = (
            "cancelled" if cancelled else "error" if command.retryable else "non_retryable"
        )
        message = command.error or f"child run {child!r} {command.status}"
        error = ErrorInfo(message=message[: limits.error_message_bytes_max // 4], kind=kind)
        status: Literal["failed", "cancelled"] = "cancelled" if cancelled else "failed"
        draft.emit(
            ChildFailed(
                step_id=step_id, child_run_id=child, status=status, error=error, at_ms=at_ms
            )
        )
        draft.fail(step_id, error, retryable=command.retryable and not cancelled)


def _start_child(state: RunState, step_id: str, at_ms: int) -> StartChild:
    step = state.step(step_id)
    assert step is not None and step.attempt >= 1
    config = _config(state, step_id)
    child = child_run_id(state.run_id, step_id, step.attempt)
    return StartChild(
        run_id=state.run_id,
        step_id=step_id,
        child_run_id=child,
        workflow=config.workflow,
        input=step.input,
        depth=state.depth + 1,
        detached=config.detach,
        at_ms=at_ms,
        seed=timer_seed(state.seed, child),
    )


def _cancel_child(
    state: RunState, step_id: str, attempt: int, at_ms: int, why: str
) -> tuple[AnyEffect, ...]:
    if _config(state, step_id).detach or attempt < 1:
        return ()  # a detached child outlives its parent
    child = child_run_id(state.run_id, step_id, attempt)
    reason = f"cancelled by parent run {state.run_id!r} (step {step_id!r}): {why}"
    cancel = CancelChild(
        run_id=state.run_id, child_run_id=child, reason=reason, at_ms=at_ms, seed=state.seed
    )
    return (cancel,)


SUB_WORKFLOW = registry.register(SubWorkflowStep())
