"""`dagnats workers list`: the live workers, from the worker directory (README "Worker
groups"; dagnats/runtime/workers_directory.py). Imports `dagnats.cli.common` and the rest of
the project, never `dagnats.cli`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from dagnats.cli.common import JsonOption, UrlOption, emit_json, out, run_async, with_client
from dagnats.client import Client
from dagnats.client import lifecycle as client_lifecycle
from dagnats.runtime.clock import now_ms
from dagnats.runtime.workers_directory import WorkerEntry

workers_app = typer.Typer(help="Live workers: task types, groups, load.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    workers_app.command("list")(workers_list)
    app.add_typer(workers_app, name="workers")


def document(entry: WorkerEntry, now: int) -> dict[str, Any]:
    """An entry as plain JSON, with whether it is live and the age of its last heartbeat."""
    plain: dict[str, Any] = msgspec.to_builtins(entry)
    plain["live"] = entry.live(now)
    plain["heartbeat_age_ms"] = max(0, now - entry.heartbeat_ms)
    return plain


def workers_list(
    stale: Annotated[
        bool, typer.Option("--stale", help="Also workers whose heartbeats stopped lately.")
    ] = False,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live workers: their task types, groups, concurrency, in-flight tasks, last heartbeat."""

    async def action(client: Client) -> list[WorkerEntry]:
        return await client_lifecycle.list_workers(client, include_stale=stale)

    entries = run_async(with_client(nats_url, action))
    now = now_ms()
    if as_json:
        emit_json([document(entry, now) for entry in entries])
        return
    table = Table("worker", "user", "task types", "groups", "in flight", "last heartbeat")
    for entry in entries:
        age_s = max(0, now - entry.heartbeat_ms) / 1000
        table.add_row(
            entry.worker_id, entry.user, ", ".join(entry.task_types),
            ", ".join(entry.groups) or "-", f"{entry.in_flight}/{entry.concurrency}",
            f"{age_s:.1f}s ago" + ("" if entry.live(now) else " (stale)"),
        )  # fmt: skip
    out.print(table)
    if not entries:
        out.print("no live workers (start one with `dagnats worker MODULE:ATTR`)")
