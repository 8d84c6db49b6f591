"""`dagnats approval list|show|approve|reject`: human decisions on `approval` steps.

Registered on the `dagnats` app by `register(app)`; each command goes through the Client
(`pending_approvals`, `get_run`, `approve`, `reject`), so a second decision gets the same
"already resolved by ... at ..." error as the Python API.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from dagnats.cli.common import (
    JsonOption,
    UrlOption,
    emit_json,
    fail,
    load_json_argument,
    out,
    run_async,
    with_client,
)
from dagnats.client import Client
from dagnats.client.approvals import PendingApproval
from kernel.step_states import ApprovalState
from steps import approvals

ByOption = Annotated[
    str, typer.Option("--by", envvar="DAGNATS_APPROVER", help="Who decides (default: OS user).")
]
CommentOption = Annotated[str, typer.Option("--comment", help="Why (recorded in history).")]
DataOption = Annotated[
    str | None, typer.Option("--data", help="JSON data: an approved step's output.")
]
DataFileOption = Annotated[Path | None, typer.Option(help="Read --data from a file.")]
KeyOption = Annotated[
    str, typer.Option("--key", help="The approval's key when a step asks several.")
]


def _when(at_ms: int | None) -> str:
    if at_ms is None:
        return "-"
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def approval_document(run_id: str, approval: ApprovalState) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(approval))
    document["run_id"] = run_id
    document["status"] = _status(approval)
    return document


def _status(approval: ApprovalState) -> str:
    if not approval.decision:
        return "pending"
    return "approved" if approval.decision == "approve" else "rejected"


approval_app = typer.Typer(help="List, show, approve and reject approvals.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `approval` commands to the `dagnats` app (called once from `cli/__init__`)."""
    app.add_typer(approval_app, name="approval")


@approval_app.command("list")
def approval_list(nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List approvals waiting for a decision, across unfinished runs, oldest first."""
    pending: list[PendingApproval] = run_async(
        with_client(nats_url, lambda client: client.pending_approvals())
    )
    if as_json:
        emit_json([msgspec.to_builtins(p) for p in pending])
        return
    if not pending:
        out.print("no approvals pending")
        return
    table = Table("run", "step", "workflow", "question", "requested", "deadline")
    for p in pending:
        deadline = f"{_when(p.deadline_ms)} ({p.on_timeout})" if p.deadline_ms else "-"
        table.add_row(p.run_id, p.key, p.workflow, p.question, _when(p.requested_at_ms), deadline)
    out.print(table)


@approval_app.command("show")
def approval_show(
    run_id: str,
    step_id: str,
    key: KeyOption = "",
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one approval: what it asks and, once resolved, who decided and when."""

    async def action(client: Client) -> ApprovalState | None:
        return approvals.find(await client.get_run(run_id), key or step_id)

    approval = run_async(with_client(nats_url, action))
    if approval is None:
        raise fail(
            f"run {run_id!r} has no approval {key or step_id!r}",
            "list pending approvals with `dagnats approval list`",
        )
    if as_json:
        emit_json(approval_document(run_id, approval))
        return
    out.print(f"[bold]{approval.question}[/bold]  ({_status(approval)})")
    if approval.description:
        out.print(approval.description)
    out.print(f"requested {_when(approval.requested_at_ms)}", highlight=False)
    if approval.deadline_ms is not None:
        out.print(
            f"deadline {_when(approval.deadline_ms)}, then {approval.on_timeout}",
            highlight=False,
        )
    if approval.decision:
        out.print(
            f"{_status(approval)} by {approval.by} at {_when(approval.resolved_at_ms)}"
            + (f": {approval.comment}" if approval.comment else ""),
            highlight=False,
        )


def _decide(
    decision: str, run_id: str, step_id: str, key: str, by: str, comment: str,
    data: str | None, data_file: Path | None, nats_url: str | None, as_json: bool,
) -> None:  # fmt: skip
    value = load_json_argument(data, data_file, "data")
    who = by  # empty: the credential's identity (an approver's decisions are recorded so)

    async def action(client: Client) -> ApprovalState:
        if decision == "approve":
            return await client.approve(
                run_id, step_id, data=value, comment=comment, by=who, key=key
            )
        return await client.reject(run_id, step_id, data=value, comment=comment, by=who, key=key)

    approval = run_async(with_client(nats_url, action, role="approver"))
    if as_json:
        emit_json(approval_document(run_id, approval))
    else:
        out.print(f"{_status(approval)} {run_id} {approval.key} (by {approval.by})")


def _decision_command(decision: str, doc: str) -> Callable[..., None]:
    """`dagnats approval approve` or `reject`: the same options, one decision."""

    def command(
        run_id: str,
        step_id: str,
        comment: CommentOption = "",
        data: DataOption = None,
        data_file: DataFileOption = None,
        by: ByOption = "",
        key: KeyOption = "",
        nats_url: UrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        _decide(decision, run_id, step_id, key, by, comment, data, data_file, nats_url, as_json)

    command.__name__ = command.__qualname__ = f"approval_{decision}"
    command.__doc__ = doc
    return command


approval_approve = approval_app.command("approve")(
    _decision_command("approve", "Approve: the step completes with --data (null when left out).")
)
approval_reject = approval_app.command("reject")(
    _decision_command(
        "reject",
        "Reject: the step fails for good (the workflow's on_failure and compensation apply).",
    )
)
