"""The HTTP API's request and response bodies: frozen msgspec Structs (OpenAPI is generated
from them), and the functions that build the responses from the kernel's states.

Request bodies reject unknown fields (a typo is named, not ignored). JSON payloads (inputs,
outputs, data) are `Any`: they are taken as written and checked by `dagnats.json_input` as
the Client checks them. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dagnats.client import ChildLink
from dagnats.client.approvals import PendingApproval
from kernel.events import Decision
from kernel.state import RunState, StepState
from kernel.step_states import ApprovalState

# -- requests ------------------------------------------------------------------------------


class StartRunBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Start a run of a registered workflow (`Idempotency-Key` header: see the route)."""

    workflow: str
    input: Any = None
    run_id: str | None = None
    # Start later: an ISO 8601 time, a delay ("90s") or ms since the epoch (dagnats/run_at.py).
    run_at: str | int | None = None


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class SignalBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    payload: Any = None


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Approve or reject: `by` names the approver identity (its credential decides; empty:
    the serve's default approver), `data` is an approved step's output."""

    by: str = ""
    comment: str = ""
    data: Any = None
    key: str = ""


class EventBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    payload: Any = None
    event_id: str | None = None


class QueryBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sql: str
    limit: int = 1_000


# -- responses -----------------------------------------------------------------------------


class ErrorView(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    kind: str


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    status: str
    attempt: int
    output: Any
    error: ErrorView | None
    worker_id: str
    ended_at_ms: int | None
    lost_attempts: int


class ApprovalView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    key: str
    step_id: str
    status: str
    question: str
    description: str
    metadata: Any
    requested_at_ms: int
    deadline_ms: int | None
    on_timeout: str
    decision: str
    by: str
    comment: str
    data: Any
    timed_out: bool
    resolved_at_ms: int | None


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    """A run's state folded from its history (what `dagnats run show --json` prints)."""

    run_id: str
    workflow: str | None
    status: str
    input: Any
    output: Any
    error: ErrorView | None
    failed_step_id: str
    cancel_reason: str | None
    started_at_ms: int
    ended_at_ms: int | None
    event_count: int
    parent_run_id: str | None
    continued_from: str | None
    continued_as: str | None
    steps: list[StepView]
    approvals: list[ApprovalView]
    children: list[ChildLink] = msgspec.field(default_factory=list)


class StartedView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    workflow: str
    created: bool  # False: an earlier request with the same run id or Idempotency-Key


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    workflow: str | None
    status: str
    started_at_ms: int
    ended_at_ms: int | None
    failed_step_id: str | None
    steps_total: int
    steps_done: int


class RunListView(msgspec.Struct, frozen=True, kw_only=True):
    runs: list[RunSummary]
    source: str  # "sqlite" (the query tables) or "history" (folded runs)


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    command: Any
    events: list[Any]


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    items: list[HistoryItem]
    next_after: int | None  # pass as `after` for the next page; None: the end for now


class WaitView(msgspec.Struct, frozen=True, kw_only=True):
    ended: bool  # False: the long poll's bound passed first; ask again
    run: RunView


class AcceptedView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    accepted: bool = True


class SignalSentView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    signal: str
    sent: bool = True


class WorkflowRegisteredView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    revision: int
    warnings: list[str]


class WorkflowListView(msgspec.Struct, frozen=True, kw_only=True):
    workflows: list[str]


class WorkflowView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    revision: int
    revisions: list[int]
    workflow: dict[str, Any]


class ValidationView(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    name: str | None
    steps: int
    problems: list[dict[str, str]]


class PendingListView(msgspec.Struct, frozen=True, kw_only=True):
    approvals: list[PendingApproval]


class EventPublishedView(msgspec.Struct, frozen=True, kw_only=True):
    event: str
    seq: int


class QueryView(msgspec.Struct, frozen=True, kw_only=True):
    columns: list[str]
    rows: list[dict[str, Any]]


class AuditView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    consistent: bool
    summary: str
    messages: int
    events: int
    status: str
    last_seq: int
    snapshot_checked: bool
    rows_checked: bool
    divergence: str | None


class HealthView(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # "ok" or "unavailable"
    nats: bool
    jetstream: bool
    engine: bool


class ReadyView(msgspec.Struct, frozen=True, kw_only=True):
    ready: bool


# -- building responses ----------------------------------------------------------------------


def plain(raw: msgspec.Raw | None) -> Any:
    """A stored JSON payload as a value."""
    if raw is None or not bytes(raw):
        return None
    return msgspec.json.decode(bytes(raw))


def error_view(error: Any) -> ErrorView | None:
    return None if error is None else ErrorView(message=error.message, kind=error.kind)


def step_view(step: StepState) -> StepView:
    return StepView(
        step_id=step.step_id, status=step.status, attempt=step.attempt,
        output=plain(step.output), error=error_view(step.error), worker_id=step.worker_id,
        ended_at_ms=step.ended_at_ms, lost_attempts=step.lost_attempts,
    )  # fmt: skip


def approval_status(approval: ApprovalState) -> str:
    if not approval.decision:
        return "pending"
    return "approved" if approval.decision == "approve" else "rejected"


def approval_view(run_id: str, approval: ApprovalState) -> ApprovalView:
    return ApprovalView(
        run_id=run_id, key=approval.key, step_id=approval.step_id,
        status=approval_status(approval), question=approval.question,
        description=approval.description, metadata=plain(approval.metadata),
        requested_at_ms=approval.requested_at_ms, deadline_ms=approval.deadline_ms,
        on_timeout=approval.on_timeout, decision=approval.decision, by=approval.by,
        comment=approval.comment, data=plain(approval.data), timed_out=approval.timed_out,
        resolved_at_ms=approval.resolved_at_ms,
    )  # fmt: skip


def run_view(state: RunState, children: list[ChildLink] | None = None) -> RunView:
    return RunView(
        run_id=state.run_id,
        workflow=state.workflow.name if state.workflow is not None else None,
        status=state.status, input=plain(state.input), output=plain(state.output),
        error=error_view(state.error), failed_step_id=state.failed_step_id,
        cancel_reason=state.cancel_reason, started_at_ms=state.started_at_ms,
        ended_at_ms=state.ended_at_ms, event_count=state.event_count,
        parent_run_id=state.parent_run_id, continued_from=state.continued_from,
        continued_as=state.continued_as, steps=[step_view(s) for s in state.steps],
        approvals=[approval_view(state.run_id, a) for a in state.approvals],
        children=children or [],
    )  # fmt: skip


def summary_of_state(state: RunState) -> RunSummary:
    done = sum(1 for s in state.steps if s.status in ("completed", "skipped", "recovered"))
    return RunSummary(
        run_id=state.run_id,
        workflow=state.workflow.name if state.workflow is not None else None,
        status=state.status, started_at_ms=state.started_at_ms, ended_at_ms=state.ended_at_ms,
        failed_step_id=state.failed_step_id or None, steps_total=len(state.steps),
        steps_done=done,
    )  # fmt: skip


def summary_of_row(row: dict[str, Any]) -> RunSummary:
    return RunSummary(
        run_id=str(row["run_id"]), workflow=row.get("workflow"), status=str(row["status"]),
        started_at_ms=int(row.get("started_at_ms") or 0), ended_at_ms=row.get("ended_at_ms"),
        failed_step_id=row.get("failed_step_id") or None,
        steps_total=int(row.get("steps_total") or 0), steps_done=int(row.get("steps_done") or 0),
    )  # fmt: skip


def history_item(seq: int, decision: Decision) -> HistoryItem:
    document = msgspec.json.decode(msgspec.json.encode(decision))
    return HistoryItem(
        seq=seq, command=document.get("command"), events=list(document.get("events") or [])
    )
