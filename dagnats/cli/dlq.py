"""`dagnats dlq list|show|retry|discard`: dead letters (steps that failed for good).

A dead letter is derived from its run's state (kernel.reopen.dead_letters): recorded once,
gone when discarded or when its step runs again. `retry` reopens its run in place from the
step (the run goes on). Imports `dagnats.cli.common` and the rest of the project, never
`dagnats.cli`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from dagnats.cli.common import JsonOption, UrlOption, emit_json, out, run_async, with_client
from dagnats.client import Client
from dagnats.client import lifecycle as client_lifecycle
from kernel.reopen import DeadLetter

dlq_app = typer.Typer(help="Dead letters: steps that failed for good.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    dlq_app.command("list")(dlq_list)
    dlq_app.command("show")(dlq_show)
    dlq_app.command("retry")(dlq_retry)
    dlq_app.command("discard")(dlq_discard)
    app.add_typer(dlq_app, name="dlq")


def document(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as plain JSON (its input decoded)."""
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(letter))
    return plain


def dlq_list(
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Dead letters across ended runs, newest first."""

    async def action(client: Client) -> list[DeadLetter]:
        return await client_lifecycle.list_dead_letters(client, workflow=workflow, limit=limit)

    letters = run_async(with_client(nats_url, action))
    if as_json:
        emit_json([document(letter) for letter in letters])
        return
    table = Table("run", "workflow", "step", "task", "attempts", "error")
    for letter in letters:
        error = letter.error.message if letter.error is not None else ""
        table.add_row(
            letter.run_id, letter.workflow, letter.step_id, letter.task,
            str(letter.attempts), error[:80],
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(letters)} dead letter(s)")


def dlq_show(
    run_id: str,
    step_id: str,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """One dead letter: attempts, last error and traceback, and the exact task input."""

    async def action(client: Client) -> DeadLetter:
        return await client_lifecycle.dead_letter(client, run_id, step_id)

    letter = run_async(with_client(nats_url, action))
    plain = document(letter)
    if as_json:
        emit_json(plain)
        return
    for name in ("run_id", "workflow", "step_id", "task", "attempt", "attempts"):
        out.print(f"{name}: {plain[name]}")
    if letter.error is not None:
        out.print(f"error ({letter.error.kind}): {letter.error.message}")
        if letter.error.traceback:
            out.print(letter.error.traceback)
    out.print("input:")
    out.print_json(data=plain["input"])


def dlq_retry(
    run_id: str,
    step_id: str,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-run a dead letter's step inside its run (the run is reopened from the step)."""

    async def action(client: Client) -> str:
        await client_lifecycle.dead_letter(client, run_id, step_id)
        state = await client_lifecycle.retry(client, run_id, from_step=step_id, reason="dlq retry")
        return state.status

    status = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"run_id": run_id, "step_id": step_id, "status": status})
    else:
        out.print(f"run {run_id} reopened from step {step_id} ({status})")


def dlq_discard(
    run_id: str,
    step_id: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in history).")] = "",
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a dead letter aside (recorded in its run's history; the run stays as it was)."""

    async def action(client: Client) -> DeadLetter:
        return await client_lifecycle.discard(client, run_id, step_id, reason=reason)

    letter = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"run_id": run_id, "step_id": step_id, "attempt": letter.attempt})
    else:
        out.print(f"dead letter of run {run_id} step {step_id} discarded")
