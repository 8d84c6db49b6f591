"""The CLI of projections and replay: `query`, `projection run|rebuild|status`, `run audit`,
`history export`, `replay`, and the filters of `run list` (served from the SQLite tables).

`register(app, run_app)` adds them to the `dagnats` app (called once from `dagnats/cli/`'s
`__init__`). The shared helpers (errors, JSON output, clients) come from `dagnats.cli.common`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Final, get_args

import typer
from rich.progress import Progress
from rich.table import Table

from dagnats.audit import AuditReport
from dagnats.cli import render
from dagnats.cli.common import (
    DataDirOption,
    JsonOption,
    UrlOption,
    emit_json,
    err,
    fail,
    out,
    run_async,
    with_client,
)
from dagnats.client import Client
from dagnats.observe.status import projection_lag
from dagnats.query_tables import list_runs_sql, read_only_authorizer, state_matches
from dagnats.replay import audit_file
from dagnats.runtime import projector
from dagnats.runtime.clock import now_ms
from dagnats.runtime.connection import default_data_dir
from dagnats.runtime.resources import PROJECTIONS_BUCKET, RUNS_BUCKET
from dagnats.runtime.serve import install_stop_signals
from kernel.errors import DagnatsError
from kernel.state import RunState, RunStatus
from kernel.workflow.durations import parse_duration
from projections.base import read_checkpoints, reset_projection

query_rows_max: Final = 10_000
audit_all_max: Final = 100_000
RUN_STATUSES_LISTED: Final = tuple(s for s in get_args(RunStatus) if s != "new")
status_fresh_ms: Final = 10_000  # a projector's rate older than this is shown as 0

DbOption = Annotated[
    Path | None, typer.Option("--db", help="The SQLite file (default <data dir>/dagnats.sqlite).")
]


def sqlite_path(data_dir: Path | None, db: Path | None = None) -> Path:
    """The SQLite file of the query tables: --db, else <data dir>/dagnats.sqlite."""
    if db is not None:
        return db
    return (data_dir or default_data_dir()).expanduser() / projector.SQLITE_FILE


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the projection, query, audit, export and replay commands to the `dagnats` app."""
    projection_app = typer.Typer(
        help="Run, rebuild and inspect projections of the history stream.", no_args_is_help=True
    )
    history_app = typer.Typer(help="Export run histories.", no_args_is_help=True)
    app.add_typer(projection_app, name="projection")
    app.add_typer(history_app, name="history")
    app.command("query")(query)
    app.command("replay")(replay)
    projection_app.command("run")(projection_run)
    projection_app.command("rebuild")(projection_rebuild)
    projection_app.command("status")(projection_status)
    history_app.command("export")(history_export)
    run_app.command("audit")(run_audit)


# -- query -------------------------------------------------------------------------------


def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL statement (SELECT ...).")],
    data_dir: DataDirOption = None,
    db: DbOption = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 1_000,
    as_json: JsonOption = False,
) -> None:
    """Run read-only SQL on the query tables (runs, steps, events, approvals, ...)."""
    path = sqlite_path(data_dir, db)
    if not 1 <= limit <= query_rows_max:
        raise fail(f"--limit {limit} is out of 1..{query_rows_max}", "", 2)
    try:
        database = projector.open_database(path, readonly=True)
    except DagnatsError as error:
        raise fail(str(error), "start `dagnats serve`: it maintains the file") from None
    try:
        database.conn.set_authorizer(read_only_authorizer)
        cursor = database.conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(limit)
    except Exception as error:  # sqlite3.Error, and read-only violations
        hint = "the tables: runs, steps, events, ..."
        message = " ".join(str(error).split())
        if "not authorized" in message:
            message += " (the query tables are readonly: no ATTACH, writes or setting PRAGMAs)"
            hint = "`dagnats query` runs SELECT, and PRAGMAs that only read"
        raise fail(f"query failed: {message}", hint) from None
    finally:
        database.close()
    if as_json:
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    out.print(table)


# -- run list (served from SQLite) -------------------------------------------------------


def parse_since(text: str, now_ms: int) -> int:
    """Epoch ms of `--since`: a duration back from now (`90m`, `2h`, `7d`) or an ISO date.

    Raises:
        typer.Exit: neither (after printing an error naming the value).
    """
    days = re.fullmatch(r"(\d{1,5})d", text)
    if days:
        return now_ms - int(days.group(1)) * 86_400_000
    duration = parse_duration(text, "--since")
    if isinstance(duration, int):
        return now_ms - duration
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"--since {text!r} is neither a duration nor an ISO date",
            "e.g. --since 2h, --since 7d, --since 2025-01-31",
            2,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def run_list(
    limit: int,
    status: str | None,
    workflow: str | None,
    since: str | None,
    failed_step: str | None,
    data_dir: Path | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """`dagnats run list`: from the SQLite tables when the file exists, else folded runs."""
    if status is not None and status not in RUN_STATUSES_LISTED:
        allowed = ", ".join(RUN_STATUSES_LISTED)
        raise fail(f"--status {status!r} is not a run status (allowed: {allowed})", "", 2)
    if not 1 <= limit <= query_rows_max:
        raise fail(f"--limit {limit} is out of 1..{query_rows_max}", "", 2)
    since_ms = parse_since(since, now_ms()) if since is not None else None
    path = sqlite_path(data_dir)
    rows = list_runs_sql(
        path, status=status, workflow=workflow, since_ms=since_ms, failed_step=failed_step,
        limit=limit,
    )  # fmt: skip
    if rows is not None:
        if as_json:
            emit_json(rows)
        else:
            out.print(_rows_table(rows))
        return

    async def action(client: Client) -> list[RunState]:
        states = await client.list_runs(10_000)
        matching = [
            state for state in states
            if state_matches(
                state, status=status, workflow=workflow, since_ms=since_ms,
                failed_step=failed_step,
            )
        ]  # fmt: skip
        return matching[:limit]

    states = run_async(with_client(nats_url, action))
    if as_json:
        emit_json([render.state_document(state) for state in states])
    else:
        out.print(render.runs_table(states))


def _time(ms: object) -> str:
    if not isinstance(ms, int):
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rows_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("run", "workflow", "status", "steps done", "failed step", "started (UTC)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["run_id"],
            row["workflow"],
            render.styled(row["status"]),
            f"{row['steps_done']}/{row['steps_total']}",
            row["failed_step_id"] or "",
            _time(row["started_at_ms"]),
        )
    return table


# -- projection run / rebuild / status ----------------------------------------------------


def projection_run(
    spec: Annotated[str, typer.Argument(help="MODULE:CLASS of a SqliteProjection.")],
    data_dir: DataDirOption = None,
    db: DbOption = None,
    nats_url: UrlOption = None,
    once: Annotated[
        bool, typer.Option(help="Catch up to the end of the stream, then exit.")
    ] = False,
    batch: Annotated[int, typer.Option(help="History messages per transaction.")] = 1_000,
) -> None:
    """Run a projection (yours, or `projections.sqlite:QueryTables`): catch up, then tail."""
    try:
        projection = projector.load_projection(spec)
    except DagnatsError as error:
        raise fail(str(error), "e.g. examples.projections.task_stats:TaskStats", 2) from None
    path = sqlite_path(data_dir, db)

    async def action(client: Client) -> int:
        target = projector.SqliteTarget(path, projection)
        runner = projector.Projector(client.connection.js, target, batch_max=batch)
        try:
            if once:
                return await runner.catch_up()
            stop = asyncio.Event()
            install_stop_signals(stop, lambda name: err.print(f"{name}: stopping"))
            err.print(f"projection {target.name} into {path}; stop with Ctrl-C")
            await runner.run(stop)
            return runner.position
        finally:
            await target.close()

    position = run_async(with_client(nats_url, action))
    err.print(f"projection {projection.name}: at sequence {position}")


def projection_rebuild(
    name: Annotated[str, typer.Argument(help="`snapshots`, `dagnats` or your projection's name.")],
    data_dir: DataDirOption = None,
    db: DbOption = None,
    nats_url: UrlOption = None,
) -> None:
    """Drop a projection's data and checkpoint; its projector rebuilds it from sequence 0."""
    if name == projector.SNAPSHOTS:

        async def action(client: Client) -> None:
            js = client.connection.js
            await js.purge_stream(f"KV_{RUNS_BUCKET}")
            kv = await js.key_value(PROJECTIONS_BUCKET)
            await kv.put(projector.SNAPSHOTS, b"")

        run_async(with_client(nats_url, action, role="admin"))  # a purge: admin only
        out.print("snapshots: dropped; the projector in `dagnats serve` rebuilds them")
        return
    path = sqlite_path(data_dir, db)
    database = projector.open_database(path)
    try:
        known = {checkpoint.name for checkpoint in read_checkpoints(database)}
        if name not in known:
            shown = ", ".join(sorted(known | {projector.SNAPSHOTS}))
            raise fail(f"no projection {name!r} in {path}", f"known: {shown}")
        reset_projection(database, name)
    finally:
        database.close()
    out.print(f"{name}: dropped; its projector rebuilds it from sequence 0")


def projection_status(
    data_dir: DataDirOption = None,
    db: DbOption = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each projection's position, lag (messages behind the stream) and rate."""
    path = sqlite_path(data_dir, db)
    positions: dict[str, tuple[str, str, int]] = {}
    if path.exists():
        database = projector.open_database(path, readonly=True)
        try:
            for checkpoint in read_checkpoints(database):
                positions[checkpoint.name] = ("sqlite", str(checkpoint.version), checkpoint.seq)
        finally:
            database.close()

    async def action(client: Client) -> list[dict[str, Any]]:
        js = client.connection.js
        last = await projector.stream_last_seq(js)
        snapshot = await projector.read_status(js, projector.SNAPSHOTS)
        if snapshot is not None:
            positions[projector.SNAPSHOTS] = ("kv", snapshot.version, snapshot.seq)
        now = now_ms()
        rows = []
        for name, (kind, version, seq) in sorted(positions.items()):
            status = await projector.read_status(js, projector.status_key(name))
            fresh = status is not None and now - status.updated_at_ms <= status_fresh_ms
            rate = status.events_per_s if status is not None and fresh else 0.0
            rows.append({
                "name": name, "kind": kind, "version": version, "position": seq,
                "lag": await projection_lag(js, seq, last), "events_per_s": rate,
                "updated_at_ms": status.updated_at_ms if status is not None else None,
            })  # fmt: skip
        return rows

    rows = run_async(with_client(nats_url, action))
    if as_json:
        emit_json(rows)
        return
    table = Table("projection", "kind", "version", "position", "lag", "events/s", "updated (UTC)")
    for row in rows:
        table.add_row(
            row["name"], row["kind"], str(row["version"])[:16], str(row["position"]),
            str(row["lag"]), f"{row['events_per_s']:.0f}", _time(row["updated_at_ms"]),
        )  # fmt: skip
    out.print(table)


# -- audit, export, replay -------------------------------------------------------------------


def _print_report(report: AuditReport, as_json: bool) -> None:
    if as_json:
        emit_json({"consistent": report.consistent, **render.to_plain(report)})
    elif report.consistent:
        out.print(report.summary(), highlight=False)
    else:
        err.print(report.summary(), highlight=False, soft_wrap=True)


def run_audit(
    run_id: Annotated[str | None, typer.Argument(help="The run to audit.")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Audit every run of --workflow.")] = False,
    workflow: Annotated[str | None, typer.Option(help="With --all: the workflow.")] = None,
    data_dir: DataDirOption = None,
    db: DbOption = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replay-audit: re-decide each recorded command with the current code, fold, and compare
    with the run's snapshot and SQLite rows; exit 1 at a divergence."""
    path = sqlite_path(data_dir, db)
    if all_runs == (run_id is not None) or (all_runs and workflow is None):
        raise fail("give RUN_ID, or --all --workflow NAME", "", 2)
    if run_id is not None:
        report = run_async(
            with_client(nats_url, lambda client: client.audit(run_id, sqlite_path=path))
        )
        _print_report(report, as_json)
        if not report.consistent:
            raise typer.Exit(1)
        return
    assert workflow is not None
    reports = run_async(with_client(nats_url, lambda c: _audit_all(c, workflow, path)))
    bad = [report for report in reports if not report.consistent]
    if as_json:
        emit_json([{"consistent": r.consistent, **render.to_plain(r)} for r in reports])
    else:
        for report in bad:
            err.print(report.summary(), highlight=False, soft_wrap=True)
        events = sum(report.events for report in reports)
        verdict = "consistent" if not bad else f"{len(bad)} diverged"
        out.print(f"workflow {workflow}: {len(reports)} runs, {events} events: {verdict}")
    if bad:
        raise typer.Exit(1)


async def _audit_all(client: Client, workflow: str, path: Path) -> list[AuditReport]:
    rows = list_runs_sql(
        path, status=None, workflow=workflow, since_ms=None, failed_step=None, limit=audit_all_max
    )
    if rows is not None:
        run_ids = [str(row["run_id"]) for row in rows]
    else:
        states = await client.list_runs(10_000)
        run_ids = [s.run_id for s in states if s.workflow and s.workflow.name == workflow]
    reports = []
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(f"auditing {workflow}", total=len(run_ids))
        for run_id in run_ids:
            reports.append(await client.audit(run_id, sqlite_path=path))
            progress.advance(task)
    return reports


def history_export(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    nats_url: UrlOption = None,
) -> None:
    """Write the run's history messages exactly as stored, one per line (JSON Lines)."""

    async def action(client: Client) -> int:
        count = 0
        async for _, data in client.history_bytes(run_id):
            sys.stdout.buffer.write(data + b"\n")
            count += 1
        sys.stdout.buffer.flush()
        return count

    if run_async(with_client(nats_url, action)) == 0:
        raise fail(f"run {run_id!r} has no history", "list runs with `dagnats run list`")


def replay(
    files: Annotated[list[Path], typer.Argument(help="Histories from `dagnats history export`.")],
    as_json: JsonOption = False,
) -> None:
    """Audit exported histories offline (no server): exit 1 at the first divergence."""
    diverged = 0
    for file in files:
        try:
            report = audit_file(file)
        except DagnatsError as error:
            raise fail(str(error), "pass a file written by `dagnats history export`") from None
        if report.messages == 0:
            raise fail(f"{file}: no history messages", "is it a `dagnats history export`?")
        _print_report(report, as_json)
        diverged += not report.consistent
    if diverged:
        raise typer.Exit(1)
