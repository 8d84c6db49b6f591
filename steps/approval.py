"""The `approval` step type: halts for a human decision; no worker.

Config: `question` (required), `description`, `on_timeout` (`approve`, `reject` or `fail`,
default `fail`). The step's `metadata` travels with the request; its `timeout` is the deadline
(a durable timer, not an attempt timeout). Nothing of the step's input goes into the notice.

decide: start schedules the attempt (without an attempt deadline) and asks the approval
(steps/approvals.py: `approval.requested`); a `ResolveApproval` (or the deadline) records
`approval.resolved`: approve completes the step with the decision's `data`; reject fails it
for good (no retry: the workflow's on_failure and compensation apply); a deadline resolves it
by `on_timeout` (`fail` fails the step as timed out, no retry).
evolve / react / resume: the approval's (steps/approvals.py, shared with agent loops).
"""

from __future__ import annotations

from kernel import limits, registry
from kernel.commands import FireTimer, Rejection, ResolveApproval
from kernel.effects import AnyEffect
from kernel.errors import Problem
from kernel.events import (
    AnyEvent,
    ApprovalRequested,
    ApprovalResolved,
    ErrorInfo,
    StepEvent,
    StepScheduled,
)
from kernel.outcome import StartAttempt, StepInput
from kernel.state import RunState, is_terminal
from kernel.step_states import ApprovalState
from kernel.workflow import StepDef
from steps import approvals
from steps.base import ConfiguredStepType, Draft, config_of, counted
from steps.config_read import config_document, unknown_fields

CONFIG_FIELDS = ("question", "description", "on_timeout")
ON_TIMEOUT = ("approve", "reject", "fail")


def read_config(step: StepDef, path: str) -> approvals.ApprovalRequest | tuple[Problem, ...]:
    """The approval asked by the step, or every problem with its config."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    question = document.get("question")
    bound = limits.approval_text_bytes_max
    if not isinstance(question, str) or not question or len(question.encode()) > bound:
        rule = f"is required: the question to ask (1..{bound} bytes)"
        problems.append(Problem(path=f"{path}.config.question", value=repr(question), rule=rule))
    description = document.get("description", "")
    if not isinstance(description, str) or len(description.encode()) > bound:
        rule = f"must be a string of at most {bound} bytes"
        problems.append(
            Problem(path=f"{path}.config.description", value=repr(description)[:80], rule=rule)
        )
    on_timeout = document.get("on_timeout", "fail")
    if on_timeout not in ON_TIMEOUT:
        rule = f"must be one of {', '.join(ON_TIMEOUT)}"
        problems.append(
            Problem(path=f"{path}.config.on_timeout", value=repr(on_timeout), rule=rule)
        )
    if problems:
        return tuple(problems)
    assert isinstance(question, str) and isinstance(description, str)
    return approvals.ApprovalRequest(
        question=question,
        description=description,
        metadata=step.metadata,
        timeout_ms=step.timeout_ms,
        on_timeout=on_timeout,  # type: ignore[arg-type]  # checked against ON_TIMEOUT above
    )


class ApprovalStep(ConfiguredStepType[approvals.ApprovalRequest]):
    """Wait for a human to approve (complete with their data) or reject (fail)."""

    config_type = approvals.ApprovalRequest
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "approval"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _ask(draft, step_id, given)
            case FireTimer():
                approvals.fire(draft, step_id, given, _resolved)
            case ResolveApproval() if is_terminal(draft.state):
                return approvals.refuse_after_end(draft.state, given)
            case ResolveApproval():
                return approvals.resolve(draft, given, _resolved)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        assert isinstance(event, ApprovalRequested | ApprovalResolved), type(event).__name__
        return approvals.evolve(counted(state), event)

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        if isinstance(event, ApprovalRequested | ApprovalResolved):
            return approvals.react(state, event)
        if is_terminal(state):
            return approvals.cancel_pending(state, self.name)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        return approvals.resume_step(state, step_id)


def _ask(draft: Draft, step_id: str, given: StartAttempt) -> None:
    asked = config_of(draft.state, step_id, approvals.ApprovalRequest)
    # The step's timeout is the approval's deadline (resolved by on_timeout), not an
    # attempt deadline: the attempt has none.
    draft.emit(
        StepScheduled(step_id=step_id, attempt=given.attempt, input=given.input, at_ms=draft.at_ms)
    )
    problem = approvals.request(draft, step_id, step_id, asked)
    if problem is not None:
        draft.fail(step_id, ErrorInfo(message=problem, kind="non_retryable"), retryable=False)


def _resolved(draft: Draft, step_id: str, approval: ApprovalState) -> None:
    if approval.timed_out and approval.on_timeout == "fail":
        message = f"approval {approval.key!r} timed out without a decision (on_timeout: fail)"
        draft.fail(step_id, ErrorInfo(message=message, kind="timeout"), retryable=False)
    elif approval.decision == "approve":
        draft.complete(step_id, approval.data)
    else:
        why = f": {approval.comment}" if approval.comment else ""
        message = f"approval {approval.key!r} rejected by {approval.by}{why}"
        draft.fail(step_id, ErrorInfo(message=message, kind="non_retryable"), retryable=False)


APPROVAL = registry.register(ApprovalStep())
