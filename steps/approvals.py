"""Approvals, shared by the step types that ask them (`approval`, an agent loop's tools).

A step halts for a human decision, resumed by a `ResolveApproval` command (or its deadline).
The approval step asks one approval keyed by its step id; an agent loop may ask one per tool
call under keys `<step>.<call>`. A step type that asks approvals:

- asks with `request(draft, step_id, key, ApprovalRequest(...))` from its decide part (this
  records `approval.requested`; `react` then publishes a notice and arms the deadline timer);
- hands its `ResolveApproval` commands to `resolve(draft, command, then)` and its own timers
  first to `fire(draft, step_id, command, then)` (True: it was an approval's deadline),
  where `then(draft, step_id, approval)` is its own rule for a resolved approval;
- evolves the approval events with `evolve`, reacts with `react` (and `cancel_pending` when
  the run ends), and resumes with `resume_step`.

A decision on an approval already resolved is a `Rejection` ("already_resolved") naming who
decided and when. The state formats live in kernel.step_states (`ApprovalState`). Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from kernel import limits
from kernel.commands import FireTimer, Rejection, ResolveApproval
from kernel.effects import AnyEffect, ArmTimer, CancelTimer, PublishNotice
from kernel.events import AnyEvent, ApprovalRequested, ApprovalResolved
from kernel.state import RunState
from kernel.step_states import ApprovalState
from kernel.timers import arm_timer
from steps.base import Draft, no_approval

Resolved = Callable[[Draft, str, ApprovalState], None]

OnTimeout = Literal["approve", "reject", "fail"]
TIMER_PREFIX = "approval."
NOTICE_TOPIC = "approval"  # notices on dagnats.approval.<run>.<step>
TIMEOUT_BY = "timeout"


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a step asks: shown to the approver and in the notice (never the step's input)."""

    question: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.approval_text_bytes_max)]
    description: Annotated[str, msgspec.Meta(max_length=limits.approval_text_bytes_max)] = ""
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    timeout_ms: int | None = None
    on_timeout: OnTimeout = "fail"


def timer_id(key: str, attempt: int) -> str:
    """The id of an approval's deadline timer."""
    return f"{TIMER_PREFIX}{key}.{attempt}"


def find(state: RunState, key: str) -> ApprovalState | None:
    """The run's approval named `key`, or None."""
    for approval in state.approvals:
        if approval.key == key:
            return approval
    return None


def pending(state: RunState) -> tuple[ApprovalState, ...]:
    """The approvals still waiting for a decision (none once the run has ended)."""
    if state.status not in ("running", "compensating"):
        return ()
    return tuple(approval for approval in state.approvals if not approval.decision)


# -- decide --------------------------------------------------------------------------------


def request(draft: Draft, step_id: str, key: str, asked: ApprovalRequest) -> str | None:
    """Ask approval `key` for the live attempt of `step_id` (records `approval.requested`).

    A key asked before (an earlier attempt) is asked again; the state keeps the latest.

    Returns:
        None when asked; else why not (the run holds `limits.approvals_per_run_max`
        approvals already), for the caller to fail the step or tell its agent.
    """
    state = draft.state
    step = state.step(step_id)
    assert step is not None and step.status in ("scheduled", "running"), (step_id, step)
    assert key, "an approval needs a key"
    if len(state.approvals) >= limits.approvals_per_run_max and find(state, key) is None:
        return (
            f"run {state.run_id!r} already asked {limits.approvals_per_run_max} approvals "
            "(approvals_per_run_max)"
        )
    deadline = draft.at_ms + asked.timeout_ms if asked.timeout_ms is not None else None
    draft.emit(
        ApprovalRequested(
            step_id=step_id,
            key=key,
            attempt=step.attempt,
            question=_clip(asked.question),
            description=_clip(asked.description),
            metadata=asked.metadata,
            deadline_ms=deadline,
            on_timeout=asked.on_timeout,
            at_ms=draft.at_ms,
        )
    )
    return None


def resolve(draft: Draft, command: ResolveApproval, then: Resolved) -> Rejection | None:
    """Decide a human's decision: record `approval.resolved` and hand it to the step type.

    Returns:
        A Rejection when there is no such approval, it is resolved already, or the decision
        is malformed; None when it was recorded.
    """
    state = draft.state
    key = command.key or command.step_id
    approval = find(state, key)
    if approval is None or approval.step_id != command.step_id:
        return no_approval(state, command)
    if approval.decision:
        return Rejection(run_id=state.run_id, code="already_resolved", message=_resolved(approval))
    problem = _problem(command)
    if problem:
        return Rejection(run_id=state.run_id, code="invalid", message=problem)
    step = state.step(approval.step_id)
    if step is None or step.status not in ("scheduled", "running"):
        message = f"approval {key!r} of run {state.run_id!r} no longer waits (step ended)"
        return Rejection(run_id=state.run_id, code="run_finished", message=message)
    _resolve(draft, approval, command.decision, command.by, command.comment, command.data, then)
    return None


def refuse_after_end(state: RunState, command: ResolveApproval) -> Rejection:
    """Why a decision on an ended run is refused: resolved already (by whom, when), or the
    run ended before anyone decided."""
    approval = find(state, command.key or command.step_id)
    if approval is not None and approval.decision:
        return Rejection(run_id=state.run_id, code="already_resolved", message=_resolved(approval))
    message = f"run {state.run_id!r} already ended as {state.status}; no approval waits"
    return Rejection(run_id=state.run_id, code="run_finished", message=message)


def fire(draft: Draft, step_id: str, command: FireTimer, then: Resolved) -> bool:
    """Route a step timer: True when it is an approval's deadline (then resolved by its
    `on_timeout`, or failed when that is "fail"); False for the step type's own timers."""
    if not command.timer_id.startswith(TIMER_PREFIX):
        return False
    for approval in draft.state.approvals:
        due = not approval.decision and approval.step_id == step_id
        if due and timer_id(approval.key, approval.attempt) == command.timer_id:
            decision: Literal["approve", "reject"] = (
                "approve" if approval.on_timeout == "approve" else "reject"
            )
            comment = f"no decision by the deadline; on_timeout: {approval.on_timeout}"
            null = msgspec.Raw(b"null")
            _resolve(draft, approval, decision, TIMEOUT_BY, comment, null, then, timed_out=True)
            return True
    return True  # a stale deadline (resolved meanwhile): nothing to do


def _resolve(
    draft: Draft,
    approval: ApprovalState,
    decision: Literal["approve", "reject"],
    by: str,
    comment: str,
    data: msgspec.Raw,
    then: Resolved,
    *,
    timed_out: bool = False,
) -> None:
    draft.emit(
        ApprovalResolved(
            step_id=approval.step_id,
            key=approval.key,
            decision=decision,
            by=by or "anonymous",
            comment=comment,
            data=data,
            timed_out=timed_out,
            at_ms=draft.at_ms,
        )
    )
    resolved = find(draft.state, approval.key)
    assert resolved is not None and resolved.decision == decision
    then(draft, approval.step_id, resolved)


def _problem(command: ResolveApproval) -> str:
    if command.decision not in ("approve", "reject"):
        return f"decision {command.decision!r} must be 'approve' or 'reject'"
    if len(command.by) > limits.approval_by_length_max:
        return f"by is {len(command.by)} characters; the limit is {limits.approval_by_length_max}"
    if len(command.comment.encode()) > limits.approval_text_bytes_max:
        size = len(command.comment.encode())
        return f"comment is {size} bytes; the limit is {limits.approval_text_bytes_max} bytes"
    if len(command.data) > limits.payload_bytes_max:
        size = len(command.data)
        return f"data is {size} bytes; the limit is {limits.payload_bytes_max} bytes"
    return ""


def _resolved(approval: ApprovalState) -> str:
    verb = "approved" if approval.decision == "approve" else "rejected"
    how = " (its deadline passed)" if approval.timed_out else ""
    return (
        f"approval {approval.key!r} was already resolved by {approval.by} at "
        f"{approval.resolved_at_ms} ({verb}{how}); a second decision is refused"
    )


def already_resolved_message(approval: ApprovalState) -> str:
    """The 'already resolved by X at T' text of a resolved approval."""
    assert approval.decision, f"approval {approval.key!r} is pending"
    return _resolved(approval)


def _clip(text: str) -> str:
    data = text.encode()
    if len(data) <= limits.approval_text_bytes_max:
        return text
    return data[: limits.approval_text_bytes_max].decode(errors="ignore")


# -- evolve --------------------------------------------------------------------------------


def evolve(state: RunState, event: ApprovalRequested | ApprovalResolved) -> RunState:
    """Apply an approval event (the evolve part of every step type that asks approvals)."""
    match event:
        case ApprovalRequested():
            approval = ApprovalState(
                key=event.key,
                step_id=event.step_id,
                attempt=event.attempt,
                question=event.question,
                description=event.description,
                metadata=event.metadata,
                requested_at_ms=event.at_ms,
                deadline_ms=event.deadline_ms,
                on_timeout=event.on_timeout,
            )
            kept = tuple(a for a in state.approvals if a.key != event.key)
            return msgspec.structs.replace(state, approvals=(*kept, approval))
        case ApprovalResolved():
            current = find(state, event.key)
            assert current is not None, f"approval {event.key!r} resolved before it was asked"
            assert not current.decision, f"approval {event.key!r} resolved twice"
            resolved = msgspec.structs.replace(
                current,
                decision=event.decision,
                by=event.by,
                comment=event.comment,
                data=event.data,
                timed_out=event.timed_out,
                resolved_at_ms=event.at_ms,
            )
            approvals = tuple(resolved if a.key == event.key else a for a in state.approvals)
            return msgspec.structs.replace(state, approvals=approvals)
    raise AssertionError(f"not an approval event: {type(event).__name__}")


# -- react and resume ----------------------------------------------------------------------


def react(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """A request publishes its notice and arms its deadline; a resolution cancels it."""
    if isinstance(event, ApprovalRequested):
        approval = find(state, event.key)
        assert approval is not None
        return _asked(state, approval)
    if isinstance(event, ApprovalResolved):
        approval = find(state, event.key)
        assert approval is not None
        if approval.deadline_ms is None or event.timed_out:
            return ()
        return (CancelTimer(run_id=state.run_id, timer_id=timer_id(event.key, approval.attempt)),)
    return ()


def cancel_pending(state: RunState, step_type: str) -> tuple[AnyEffect, ...]:
    """On the run's end: cancel the deadline timer of every approval still pending that a
    step of `step_type` asked (each type winds up its own)."""
    effects: list[AnyEffect] = []
    for approval in state.approvals:
        step_def = state.step_def(approval.step_id)
        assert step_def is not None, f"approval {approval.key!r} names no step"
        waiting = not approval.decision and approval.deadline_ms is not None
        if step_def.type == step_type and waiting:
            timer = timer_id(approval.key, approval.attempt)
            effects.append(CancelTimer(run_id=state.run_id, timer_id=timer))
    return tuple(effects)


def resume_step(state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
    """After a restart: each pending approval of the (live) step again: its notice (at least
    once) and its deadline timer."""
    step = state.step(step_id)
    assert step is not None and step.status in ("scheduled", "running"), (step_id, step)
    effects: list[AnyEffect] = []
    for approval in pending(state):
        if approval.step_id == step_id:
            effects.extend(_asked(state, approval))
    return tuple(effects)


class ApprovalNotice(msgspec.Struct, frozen=True, kw_only=True):
    """What a published notice says of a pending approval (never the step's input)."""

    run_id: str
    step_id: str
    key: str
    question: str
    description: str
    metadata: msgspec.Raw
    deadline_ms: int | None
    requested_at_ms: int


def notice_of(state: RunState, approval: ApprovalState) -> ApprovalNotice:
    return ApprovalNotice(
        run_id=state.run_id,
        step_id=approval.step_id,
        key=approval.key,
        question=approval.question,
        description=approval.description,
        metadata=approval.metadata,
        deadline_ms=approval.deadline_ms,
        requested_at_ms=approval.requested_at_ms,
    )


def _asked(state: RunState, approval: ApprovalState) -> tuple[AnyEffect, ...]:
    notice = PublishNotice(
        run_id=state.run_id,
        step_id=approval.step_id,
        topic=NOTICE_TOPIC,
        payload=msgspec.Raw(msgspec.json.encode(notice_of(state, approval))),
    )
    if approval.deadline_ms is None:
        return (notice,)
    timer: ArmTimer = arm_timer(
        state,
        timer_id(approval.key, approval.attempt),
        "step",
        approval.deadline_ms,
        step_id=approval.step_id,
        attempt=approval.attempt,
    )
    return (notice, timer)
