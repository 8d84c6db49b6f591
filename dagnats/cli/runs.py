"""`dagnats run start|show|list|history|wait|cancel|signal`: runs.

`run list` is served from the SQLite query tables (`dagnats/cli/projections.py`); `run audit`
is added there too. Imports `dagnats.cli.common`, its sibling modules and the rest of the
project, never `dagnats.cli`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel

from dagnats.cli import chains_render, lifecycle, projections, render
from dagnats.cli.common import (
    DataDirOption,
    JsonOption,
    UrlOption,
    emit_json,
    err,
    fail,
    load_json_argument,
    out,
    run_async,
    with_client,
)
from dagnats.client import ChildLink, Client
from dagnats.client import lifecycle as client_lifecycle
from dagnats.llm.live import LiveChunk, LiveText, follow_live
from dagnats.run_at import RunAtError, run_at_ms_of, run_at_text
from dagnats.runtime.clock import now_ms
from kernel.events import Decision
from kernel.state import RunState


def register(run_app: typer.Typer) -> None:
    """Add the `run` commands to their sub-app (after `run audit`, as before)."""
    run_app.command("start")(run_start)
    run_app.command("show")(run_show)
    run_app.command("list")(run_list)
    run_app.command("history")(run_history)
    run_app.command("wait")(run_wait)
    run_app.command("cancel")(run_cancel)
    run_app.command("signal")(run_signal)


def run_start(
    workflow: Annotated[str, typer.Argument(help="The registered workflow's name.")],
    input: Annotated[str | None, typer.Option("--input", help="The run input as JSON.")] = None,
    input_file: Annotated[Path | None, typer.Option(help="Read the input from a file.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Your own run id (idempotent).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to end, showing progress.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    at: Annotated[str | None, typer.Option("--at", help="Start then (ISO time; UTC).")] = None,
    delay: Annotated[str | None, typer.Option("--in", help="Start after (e.g. 90s).")] = None,
    inputs_file: Annotated[
        Path | None, typer.Option("--inputs-file", help="JSON Lines: one run per line.")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="With --inputs-file: run id from this input path.")
    ] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run of a registered workflow (now, or scheduled with --at or --in); or one run
    per line of --inputs-file, all lines checked first (idempotent per line, or per --key)."""
    if inputs_file is not None:
        given = [name for name, v in (("--input", input), ("--input-file", input_file),
                 ("--run-id", run_id), ("--at", at), ("--in", delay)) if v is not None]  # fmt: skip
        if given or wait:
            used = ", ".join(given + (["--wait"] if wait else []))
            raise fail(f"--inputs-file starts many runs: {used} cannot be used with it", "", 2)
        bulk_start(workflow, inputs_file, key, nats_url, as_json)
        return
    if key is not None:
        raise fail("--key is for --inputs-file (a run id per line)", "", 2)
    if wait:
        check_timeout(timeout)
    value = load_json_argument(input, input_file, "input")
    try:
        run_at_ms = run_at_ms_of(at, delay, now_ms())
    except RunAtError as error:
        raise fail(str(error), "e.g. --at 2030-01-31T09:00:00Z or --in 10m", 2) from None

    async def action(client: Client) -> tuple[str, RunState | None]:
        started = await client.start(workflow, value, run_id=run_id, run_at_ms=run_at_ms)
        if not wait:
            return started, None
        return started, await wait_with_progress(client, started, timeout, as_json)

    started, final = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"run_id": started, **({"run": render.state_document(final)} if final else {})})
    else:
        scheduled = "" if run_at_ms is None else f" (scheduled for {run_at_text(run_at_ms)})"
        out.print(f"started run [bold]{started}[/bold]{scheduled}")
        if final is not None:
            print_outcome(final)
    if final is not None and final.status != "completed":
        raise typer.Exit(1)


def bulk_start(
    workflow: str, path: Path, key: str | None, nats_url: str | None, as_json: bool
) -> None:
    """`run start NAME --inputs-file F`: check every line, then start one run per line."""
    from dagnats.cli import bulk_start as bulk

    data = bulk.read_lines(path) if path.exists() else b""
    if not path.exists():
        raise fail(f"--inputs-file {path}: no such file", "pass a JSON Lines file")

    async def action(client: Client) -> list[dict[str, Any]]:
        definition = await client.get_workflow(workflow)
        lines = bulk.check_lines(data, definition, key=key, source=f"--inputs-file {path}")
        return await bulk.start_all(client, definition, lines, quiet=as_json)

    results = run_async(with_client(nats_url, action))
    failed = [item for item in results if "error" in item]
    if as_json:
        emit_json({"workflow": workflow, "runs": results, "failed": len(failed)})
    else:
        for item in failed:
            err.print(f"line {item['line']}: {item['error']}", highlight=False, soft_wrap=True)
        out.print(
            f"started {len(results) - len(failed)} run(s) of {workflow} ({len(failed)} failed)"
        )
    if failed:
        raise typer.Exit(1)


def check_timeout(timeout: float) -> None:
    """Refuse a --timeout that is not a finite number of seconds above 0 (usage error)."""
    if not timeout > 0 or not math.isfinite(timeout):  # NaN fails both
        raise fail(
            f"--timeout {timeout} must be a finite number of seconds above 0",
            "e.g. --timeout 60",
            2,
        )


async def wait_with_progress(
    client: Client, run_id: str, timeout: float, quiet: bool, follow: bool = False
) -> RunState:
    """Wait for the run, showing its steps and the text of a model call as it streams
    (dagnats/llm/live.py); `quiet` (--json) shows nothing."""
    if quiet:
        return await client.wait(run_id, timeout_s=timeout, follow=follow)
    streamed = LiveText()
    if not out.is_terminal:

        def plain(chunk: LiveChunk) -> None:
            if streamed.add(chunk):
                err.print(f"\n[{streamed.title()}]", highlight=False)
            if chunk.text:
                err.file.write(chunk.text)
                err.file.flush()

        async with follow_live(client.connection.nc, run_id, plain):
            return await client.wait(run_id, timeout_s=timeout, follow=follow)
    with Live(console=out, refresh_per_second=8, transient=False) as live:
        shown: list[Any] = [""]

        def view() -> Any:
            if not streamed.text:
                return shown[0]
            return Group(shown[0], Panel(streamed.text, title=streamed.title(), expand=True))

        def update(state: RunState, _decision: Decision) -> None:
            shown[0] = render.run_table(state)
            live.update(view())

        def text(chunk: LiveChunk) -> None:
            streamed.add(chunk)
            live.update(view())

        async with follow_live(client.connection.nc, run_id, text):
            return await client.wait(run_id, timeout_s=timeout, on_update=update, follow=follow)


outcome_chars_max = 200  # of the output or error on the outcome line


def outcome_line(state: RunState) -> str:
    """One line saying how a run ended: `run ID STATUS`, then its error or a summary of
    its output (`run r1 completed: output {"total": 3}`, `run r2 failed: error: ...`)."""
    line = f"run {state.run_id} {state.status}"
    if state.error is not None and state.status != "completed":
        detail = f"{state.error.kind}: {' '.join(state.error.message.split())}"
    else:
        output = bytes(state.output).decode(errors="replace")
        detail = "" if output in ("", "null") else f"output {output}"
    if len(detail) > outcome_chars_max:
        detail = detail[: outcome_chars_max - 1] + "…"
    return f"{line}: {detail}" if detail else line


def print_outcome(state: RunState) -> None:
    """The outcome line on stdout, whether or not it is a terminal (never wrapped)."""
    out.print(outcome_line(state), highlight=False, markup=False, soft_wrap=True)


def run_show(run_id: str, nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show a run's state (folded from its history)."""

    async def show(client: Client) -> tuple[RunState, list[ChildLink], list[Any]]:
        state = await client.get_run(run_id)
        chained = state.continued_from is not None or state.continued_as is not None
        chain = await client.lineage(run_id) if chained else []
        waiting.update(await client_lifecycle.groups_without_workers(client, state))
        return state, await client.children(run_id), chain

    waiting: dict[str, str] = {}  # step -> a worker group no live worker serves
    state, links, chain = run_async(with_client(nats_url, show))
    if as_json:
        document = render.state_document(state)
        if waiting:
            document["waiting_for_group"] = waiting
        if links:  # a run without children reads as `run wait --json` does
            document["children"] = [msgspec.to_builtins(link) for link in links]
        chains_render.add_lineage(document, state, chain)
        emit_json(document)
    else:
        out.print(render.run_table(state))
        for step_id, group in waiting.items():
            hint = f"start one with `dagnats worker MODULE:ATTR --group {group}`"
            out.print(f"{step_id}: waiting for worker group {group!r} (no live worker: {hint})")
        chains_render.print_lineage(out, err, state, chain)
        if state.parent_run_id:
            out.print(f"parent: {state.parent_run_id} (step {state.parent_step_id})")
        for link in links:
            how = "detached" if link.detached else "attached"
            out.print(
                f"  └─ {link.step_id}: {link.child_run_id} ({link.workflow}, {how}) {link.status}"
            )


# -- run list: served from the SQLite query tables (issue 8; dagnats/cli/projections.py) --
def run_list(
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
    status: Annotated[str | None, typer.Option(help="Only runs in this status.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Started since: a duration back (2h, 7d) or an ISO date.")
    ] = None,
    failed_step: Annotated[
        str | None, typer.Option(help="Only runs where this step failed.")
    ] = None,
    purged: Annotated[
        bool, typer.Option("--purged", help="List purged runs (the retention log) instead.")
    ] = False,
    data_dir: DataDirOption = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent runs, newest first (from <data dir>/dagnats.sqlite when it exists)."""
    if purged:
        lifecycle.print_purged(limit, nats_url, as_json)
        return
    projections.run_list(limit, status, workflow, since, failed_step, data_dir, nats_url, as_json)


# -- end of run list -----------------------------------------------------------------------


def run_history(run_id: str, nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Print a run's history: each command and the events decided from it."""

    async def action(client: Client) -> list[tuple[int, Decision]]:
        return [item async for item in client.history(run_id)]

    decisions = run_async(with_client(nats_url, action))
    if not decisions:
        raise fail(f"run {run_id!r} has no history", "list runs with `dagnats run list`")
    if as_json:
        emit_json([{"seq": seq, **render.to_plain(decision)} for seq, decision in decisions])
    else:
        out.print(render.history_table(decisions))


def run_wait(
    run_id: str,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300.0,
    follow: Annotated[
        bool, typer.Option("--follow", help="Follow continue-as-new runs to the chain's end.")
    ] = False,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wait for a run to end, showing its steps live; exit 1 unless it completed."""
    check_timeout(timeout)

    async def action(client: Client) -> RunState:
        return await wait_with_progress(client, run_id, timeout, as_json, follow)

    state = run_async(with_client(nats_url, action))
    if as_json:
        emit_json(render.state_document(state))
    else:
        if not out.is_terminal:
            out.print(render.run_table(state))
        print_outcome(state)
    if state.status == "continued_as_new":
        err.print(f"[dim]hint:[/dim] run continued as {state.continued_as}; wait with --follow")
    if state.status != "completed":
        raise typer.Exit(1)


def run_cancel(
    run_id: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in history).")] = "",
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run (compensations of completed steps run first)."""
    run_async(with_client(nats_url, lambda client: client.cancel(run_id, reason)))
    if as_json:
        emit_json({"run_id": run_id, "cancel_requested": True})
    else:
        out.print(f"cancel requested for run {run_id}")


def run_signal(
    run_id: str,
    name: Annotated[str, typer.Argument(help="The signal's name.")],
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload.")] = None,
    payload_file: Annotated[Path | None, typer.Option(help="Read the payload from a file.")] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a named signal (with a JSON payload) to a run."""
    value = load_json_argument(payload, payload_file, "payload")
    run_async(with_client(nats_url, lambda client: client.signal(run_id, name, value)))
    if as_json:
        emit_json({"run_id": run_id, "signal": name, "sent": True})
    else:
        out.print(f"signal {name!r} sent to run {run_id}")
