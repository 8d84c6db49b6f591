"""The client side of approvals: decide, list pending, and learn who decided first.

`Client.approve`, `Client.reject` and `Client.pending_approvals` call these. A decision is
checked against the run's state first (the kernel's own `decide`, so the answer is the one the
engine would give), sent as a `ResolveApproval` command, then confirmed from history: when
another decision got there first, the caller gets `ApprovalResolvedError` naming who decided
and when, never a silent success.
"""

from __future__ import annotations

import contextlib
import getpass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from dagnats import json_input
from dagnats.client.errors import ApprovalNotFoundError, ApprovalResolvedError
from dagnats.runtime.clock import new_seed, now_ms
from kernel import limits
from kernel.commands import Rejection, ResolveApproval
from kernel.decide import decide
from kernel.errors import DagnatsError, PayloadTooLargeError
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from kernel.step_states import ApprovalState
from steps import approvals

if TYPE_CHECKING:
    from dagnats.client.core import Client

confirm_wait_s_default = 10.0
runs_scanned_max = 10_000


class PendingApproval(msgspec.Struct, frozen=True, kw_only=True):
    """An approval waiting for a decision, for listings."""

    run_id: str
    workflow: str
    step_id: str
    key: str
    question: str
    description: str
    metadata: Any
    requested_at_ms: int
    deadline_ms: int | None
    on_timeout: str


def default_by() -> str:
    """Who decides when the caller does not say: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


def pending_of(state: RunState) -> list[PendingApproval]:
    assert state.workflow is not None
    return [
        PendingApproval(
            run_id=state.run_id,
            workflow=state.workflow.name,
            step_id=a.step_id,
            key=a.key,
            question=a.question,
            description=a.description,
            metadata=msgspec.json.decode(bytes(a.metadata)),
            requested_at_ms=a.requested_at_ms,
            deadline_ms=a.deadline_ms,
            on_timeout=a.on_timeout,
        )
        for a in approvals.pending(state)
    ]


async def pending_approvals(client: Client, limit: int = 1_000) -> list[PendingApproval]:
    """Pending approvals across unfinished runs, oldest request first (runs are folded)."""
    states = await client.list_runs(limit=runs_scanned_max)
    found = [p for state in states for p in pending_of(state)]
    found.sort(key=lambda p: p.requested_at_ms)
    return found[:limit]


async def resolve(
    client: Client,
    run_id: str,
    step_id: str,
    decision: Literal["approve", "reject"],
    *,
    data: object,
    comment: str,
    by: str,
    key: str,
    confirm_wait_s: float = confirm_wait_s_default,
) -> ApprovalState:
    """Send a decision and return the approval as resolved by it.

    Raises:
        RunNotFoundError: no such run.
        ApprovalNotFoundError: no such approval waits.
        ApprovalResolvedError: it was resolved already (the message says by whom and when).
        PayloadTooLargeError: `data` is over the payload limit.
    """
    json_input.check_value(data, "approval data")
    encoded = msgspec.json.encode(data)
    if len(encoded) > limits.payload_bytes_max:
        raise PayloadTooLargeError("approval data", len(encoded), limits.payload_bytes_max)
    by = _identity(client, by)
    state = await client.get_run(run_id)
    command = ResolveApproval(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), step_id=step_id, decision=decision,
        by=by, comment=comment, data=msgspec.Raw(encoded), key=key,
    )  # fmt: skip
    checked = decide(state, command)
    if isinstance(checked, Rejection):
        raise _error(run_id, key or step_id, checked)
    await client.send(command)
    resolved = await _await_resolution(client, run_id, key or step_id, confirm_wait_s)
    if resolved is None:
        raise DagnatsError(
            f"approval {key or step_id!r} of run {run_id!r}: the decision was sent but not "
            f"recorded within {confirm_wait_s}s (is `dagnats serve` running?)"
        )
    mine = (resolved.by, resolved.decision, resolved.comment) == (
        command.by, decision, comment,
    ) and not resolved.timed_out  # fmt: skip
    if not mine:
        message = approvals.already_resolved_message(resolved)
        raise ApprovalResolvedError(run_id, resolved.key, message)
    return resolved


def _identity(client: Client, by: str) -> str:
    """Who decides: the credential's identity, which the engine records whatever `by` says
    (runtime/roles); a different `by` is an error, not a silent change."""
    connection = client.connection
    if connection.role not in ("approver", "admin"):
        raise DagnatsError(
            f"this connection's credential is a {connection.role}'s, which may not decide "
            "approvals (an approver credential may)"
        )
    identity = connection.identity or (by or default_by())
    if by and by != identity:
        raise DagnatsError(
            f"by {by!r} differs from the credential's identity {identity!r}: approvals are "
            "recorded under the credential's identity"
        )
    return identity


async def _await_resolution(
    client: Client, run_id: str, key: str, timeout_s: float
) -> ApprovalState | None:
    state = INITIAL_STATE
    decisions = client.watch(run_id, timeout_s=timeout_s)
    async with contextlib.aclosing(decisions):
        async for _, decision in decisions:
            for event in decision.events:
                state = evolve(state, event)
            approval = approvals.find(state, key)
            if approval is not None and approval.decision:
                return approval
    return None


def _error(run_id: str, key: str, rejection: Rejection) -> DagnatsError:
    if rejection.code == "already_resolved":
        return ApprovalResolvedError(run_id, key, rejection.message)
    if rejection.code in ("unknown_step", "run_finished"):
        return ApprovalNotFoundError(run_id, key, rejection.message)
    return DagnatsError(rejection.message)
