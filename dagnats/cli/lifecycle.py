"""`dagnats run retry|rerun|terminate`: run lifecycle operations (kernel.reopen).

`retry` reopens an ended run in place; `rerun` starts a new run with the same input; both take
one RUN_ID or a selection (`--workflow W --status failed --since 2h`, with `--dry-run`).
Imports `dagnats.cli.common` and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import typer
from rich.table import Table

from dagnats.cli.common import JsonOption, UrlOption, emit_json, fail, out, run_async, with_client
from dagnats.client import Client
from dagnats.client import lifecycle as client_lifecycle
from dagnats.runtime.clock import now_ms
from kernel.errors import DagnatsError
from kernel.state import RunState
from kernel.workflow.durations import parse_duration

bulk_runs_max: Final = 1_000  # runs one bulk retry or rerun acts on
_DAYS = re.compile(r"^([0-9]{1,5})d$")

WorkflowOption = Annotated[
    str | None, typer.Option("--workflow", help="Select the ended runs of this workflow.")
]
StatusOption = Annotated[
    str, typer.Option("--status", help="Select runs in this status (failed, cancelled, ...).")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Select runs that ended within this age (2h, 30d).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="List the runs selected; change nothing.")
]


def register(run_app: typer.Typer) -> None:
    run_app.command("retry")(run_retry)
    run_app.command("rerun")(run_rerun)
    run_app.command("terminate")(run_terminate)
    run_app.command("delete")(run_delete)


def register_workflow(workflow_app: typer.Typer) -> None:
    workflow_app.command("delete")(workflow_delete)


def age_ms(text: str, option: str) -> int:
    """Milliseconds of an age such as "90s", "2h" or "30d" (days beside Go-style units).

    Raises:
        DagnatsError: naming the option, the value and the rule.
    """
    days = _DAYS.match(text.strip())
    if days is not None:
        return int(days.group(1)) * 86_400_000
    parsed = parse_duration(text, option)
    if not isinstance(parsed, int):
        raise DagnatsError(f"{option} {text!r} {parsed.rule}, or whole days such as '30d'")
    return parsed


def _selection(
    run_id: str | None, workflow: str | None, status: str, since: str | None
) -> tuple[str | None, frozenset[str], int | None]:
    if run_id is None and workflow is None:
        raise fail(
            "give a RUN_ID or a selection with --workflow",
            "e.g. `dagnats run retry --workflow orders --status failed --since 2h --dry-run`",
        )
    statuses = frozenset(s.strip() for s in status.split(",") if s.strip())
    unknown = statuses - client_lifecycle.RETRYABLE
    if unknown:
        allowed = ", ".join(sorted(client_lifecycle.RETRYABLE))
        raise fail(f"--status {status!r} names {sorted(unknown)}; allowed: {allowed}")
    since_ms = now_ms() - age_ms(since, "--since") if since else None
    return workflow, statuses, since_ms


async def _chosen(
    client: Client, workflow: str | None, statuses: frozenset[str], since_ms: int | None
) -> list[RunState]:
    states = await client_lifecycle.select_runs(
        client, workflow=workflow, statuses=statuses, since_ms=since_ms
    )
    return states[:bulk_runs_max]


def _on_each(
    selection: tuple[str | None, frozenset[str], int | None], dry_run: bool, verb: str,
    act: Callable[[Client, RunState], Awaitable[dict[str, str]]],
) -> Callable[[Client], Awaitable[list[dict[str, str]]]]:  # fmt: skip
    """A bulk action over the chosen runs: a row each (run_id, status, then what `act` says,
    or `action: verb` under --dry-run, which acts on none)."""

    async def action(client: Client) -> list[dict[str, str]]:
        done: list[dict[str, str]] = []
        for state in await _chosen(client, *selection):
            row = {"run_id": state.run_id, "status": state.status}
            done.append({**row, "action": verb} if dry_run else {**row, **await act(client, state)})
        return done

    return action


def run_retry(
    run_id: Annotated[str | None, typer.Argument(help="The run to reopen in place.")] = None,
    from_step: Annotated[
        str, typer.Option("--from", help="Re-run this step and everything downstream of it.")
    ] = "",
    workflow: WorkflowOption = None,
    status: StatusOption = "failed",
    since: SinceOption = None,
    dry_run: DryRunOption = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in history).")] = "",
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reopen a failed or cancelled run in place from its failed step (or --from STEP),
    keeping the outputs of the steps before it; or every run of a selection."""
    if run_id is not None:
        state = run_async(
            with_client(
                nats_url,
                lambda c: client_lifecycle.retry(c, run_id, from_step=from_step, reason=reason),
            )
        )
        if as_json:
            emit_json({"run_id": run_id, "status": state.status, "reopens": state.reopens})
        else:
            out.print(f"run {run_id} reopened ({state.status}; reopen {state.reopens})")
        return
    selection = _selection(run_id, workflow, status, since)

    async def retried(client: Client, state: RunState) -> dict[str, str]:
        try:
            await client_lifecycle.retry(
                client, state.run_id, from_step=from_step, reason=reason, confirm_wait_s=0.0
            )
        except DagnatsError as error:
            return {"error": str(error)}
        return {"action": "retried"}

    done = run_async(with_client(nats_url, _on_each(selection, dry_run, "retry", retried)))
    _report(done, dry_run, as_json)


def run_rerun(
    run_id: Annotated[
        str | None, typer.Argument(help="The run whose input to start again.")
    ] = None,
    workflow: WorkflowOption = None,
    status: StatusOption = "failed",
    since: SinceOption = None,
    dry_run: DryRunOption = False,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a new run with the same workflow and input (the old run stays as it is); or one
    for every run of a selection."""
    if run_id is not None:
        started = run_async(with_client(nats_url, lambda c: client_lifecycle.rerun(c, run_id)))
        if as_json:
            emit_json({"run_id": started, "rerun_of": run_id})
        else:
            out.print(f"started run [bold]{started}[/bold] (a rerun of {run_id})")
        return
    selection = _selection(run_id, workflow, status, since)

    async def rerun(client: Client, state: RunState) -> dict[str, str]:
        return {"rerun_as": await client_lifecycle.rerun(client, state.run_id)}

    done = run_async(with_client(nats_url, _on_each(selection, dry_run, "rerun", rerun)))
    _report(done, dry_run, as_json)


def _report(done: list[dict[str, str]], dry_run: bool, as_json: bool) -> None:
    if as_json:
        emit_json({"dry_run": dry_run, "runs": done})
        return
    for item in done:
        detail = item.get("error") or item.get("rerun_as") or item.get("action", "")
        out.print(f"{item['run_id']}  {item['status']}  {detail}")
    verb = "would act on" if dry_run else "acted on"
    out.print(f"{verb} {len(done)} run(s)")
    if any("error" in item for item in done):
        raise typer.Exit(1)


def run_terminate(
    run_id: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in history).")] = "",
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """End a run at once WITHOUT compensation (for runs whose compensations cannot run)."""
    if not reason.strip():
        raise fail("--reason is required: say why the run ends without compensation")
    run_async(with_client(nats_url, lambda c: client_lifecycle.terminate(c, run_id, reason)))
    if as_json:
        emit_json({"run_id": run_id, "terminate_requested": True})
    else:
        out.print(f"terminate requested for run {run_id}")


def run_delete(
    run_id: Annotated[str, typer.Argument(help="The finished run to purge.")],
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Purge one finished run for good: its history, snapshot and query rows (recorded in
    the retention log: `dagnats run list --purged`). Needs the admin credential."""
    record = run_async(
        with_client(nats_url, lambda c: client_lifecycle.delete_run(c, run_id), role="admin")
    )
    if as_json:
        emit_json(record.as_json())
    else:
        out.print(
            f"run {run_id} deleted ({record.status}; its history up to stream sequence "
            f"{record.history_last_seq})"
        )


def workflow_delete(
    name: Annotated[str, typer.Argument(help="The registered workflow's name.")],
    force: Annotated[
        bool, typer.Option("--force", help="Cancel its open runs first, then delete it.")
    ] = False,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a registered workflow (every revision); refused while runs of it are open,
    unless --force (which cancels them first; their compensations run)."""
    cancelled = run_async(
        with_client(nats_url, lambda c: client_lifecycle.delete_workflow(c, name, force=force))
    )
    if as_json:
        emit_json({"workflow": name, "deleted": True, "cancelled": cancelled})
    else:
        extra = f" (cancelled {len(cancelled)} open run(s))" if cancelled else ""
        out.print(f"workflow {name} deleted{extra}")


def print_purged(limit: int, nats_url: str | None, as_json: bool) -> None:
    """`dagnats run list --purged`: the retention log, newest purge first."""
    records = run_async(
        with_client(nats_url, lambda c: client_lifecycle.purged_runs(c, limit=limit))
    )
    if as_json:
        emit_json([record.as_json() for record in records])
        return
    table = Table(title="purged runs", title_justify="left")
    for column in ("run", "workflow", "status", "ended (UTC)", "purged (UTC)", "reason"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.run_id, record.workflow, record.status, _utc(record.ended_at_ms),
            _utc(record.purged_at_ms), record.reason,
        )  # fmt: skip
    out.print(table)


def _utc(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
