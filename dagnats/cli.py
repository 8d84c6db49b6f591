"""The `dagnats` command (typer + rich).

Every command takes `--json` for machine output. Errors are one readable line plus a hint, on
stderr, with exit code 1 (2 for usage errors). `workflow validate` works offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.live import Live

from dagnats import cli_approvals, cli_chains_render, cli_projections, logs, render
from dagnats.client import ChildLink, Client
from dagnats.loading import LoadError, load_attribute
from dagnats.runtime.connection import default_data_dir
from dagnats.runtime.serve import Server, install_stop_signals
from dagnats.sim.cli import sim_command
from dagnats.worker import Worker
from kernel.errors import DagnatsError, WorkflowInvalidError
from kernel.events import Decision
from kernel.state import RunState
from kernel.workflow import parse_workflow

T = TypeVar("T")

app = typer.Typer(
    name="dagnats",
    help="A durable DAG workflow engine on NATS JetStream alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
workflow_app = typer.Typer(
    help="Register, validate, list and show workflows.", no_args_is_help=True
)
run_app = typer.Typer(help="Start, inspect, wait for and cancel runs.", no_args_is_help=True)
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.command("sim")(sim_command)
cli_projections.register(app, run_app)  # query, projection, history export, replay, run audit
cli_approvals.register(app)  # approval list|show|approve|reject

out = Console()
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
LogJsonOption = Annotated[
    bool, typer.Option("--log-json", help="Log one JSON object per line (default key=value).")
]
UrlOption = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="DAGNATS_NATS_URL", help="NATS URL (default: local serve)."),
]


def fail(message: str, hint: str = "", code: int = 1) -> typer.Exit:
    """Print one error line (and a hint) to stderr; return the Exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/dim] {hint}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn the project's errors into one line plus a hint."""
    try:
        return asyncio.run(coroutine)
    except WorkflowInvalidError as error:
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(str(error).splitlines()[0], "fix the fields listed above") from None
    except DagnatsError as error:
        hint = getattr(error, "hint", "") or _hint_for(error)
        raise fail(str(error).splitlines()[0], hint) from None


def _hint_for(error: DagnatsError) -> str:
    name = type(error).__name__
    hints = {
        "RunNotFoundError": "list runs with `dagnats run list`",
        "WorkflowNotFoundError": "register it with `dagnats workflow register FILE`",
        "RunFinishedError": "see what happened with `dagnats run show RUN_ID`",
        "WaitTimeoutError": "wait longer with --timeout, or look with `dagnats run show`",
        "PayloadTooLargeError": "store large data elsewhere and pass a reference",
    }
    return hints.get(name, "")


def emit_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


async def with_client(url: str | None, action: Callable[[Client], Awaitable[T]]) -> T:
    logging.getLogger("dagnats.connection").setLevel(logging.ERROR)  # one error line suffices
    client = await Client.connect(url)
    try:
        return await action(client)
    finally:
        await client.close()


def load_json_argument(text: str | None, file: Path | None, field: str) -> Any:
    """A JSON value from an option's text or a file; a clear error naming the option."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise fail(f"{field}-file {file}: {error.strerror}", "pass a readable file") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(
            f"{field} is not valid JSON: {error}", f"e.g. --{field} '{{\"key\": 1}}'"
        ) from None


# -- serve and worker --------------------------------------------------------------------


@app.command()
def serve(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where NATS keeps its data (default ~/.dagnats).")
    ] = None,
    nats_port: Annotated[int, typer.Option(help="Port of the embedded NATS; 0 = a free one.")] = 0,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
    log_json: LogJsonOption = False,
) -> None:
    """Run the engine with an embedded nats-server (or --nats-url for an existing one)."""
    logs.configure(json_lines=log_json)
    server = Server(data_dir or default_data_dir(), nats_port=nats_port, nats_url=nats_url)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop, lambda name: err.print(f"{name}: stopping"))
        try:
            info = await server.start()
            if as_json:
                print(msgspec.json.encode(info).decode(), flush=True)
            else:
                out.print(f"dagnats serve: NATS at [bold]{info.nats_url}[/bold]")
                out.print(
                    f"data dir: {info.data_dir}"
                    + (f" (nats log {info.nats_log})" if info.nats_log else "")
                )
                out.print("ready; stop with Ctrl-C", highlight=False)
            await server.run(stop)
        finally:
            await server.stop()

    run_async(main())


def load_worker(spec: str) -> Worker:
    """The Worker named by `MODULE:ATTR` (a module path or a .py file)."""
    try:
        worker = load_attribute(spec, "worker")
    except LoadError as error:
        raise fail(str(error), error.hint, 2) from None
    if not isinstance(worker, Worker):
        raise fail(
            f"{spec} is a {type(worker).__name__}, not a dagnats.Worker", "name the Worker object"
        )
    return worker


@app.command()
def worker(
    spec: Annotated[str, typer.Argument(help="MODULE:ATTR of a dagnats.Worker.")],
    nats_url: UrlOption = None,
    concurrency: Annotated[int | None, typer.Option(help="Handlers run at once.")] = None,
    heartbeat_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a heartbeat before a task goes to another worker "
            "(the task consumer's ack wait; every worker of a task must use the same)."
        ),
    ] = None,
    log_json: LogJsonOption = False,
) -> None:
    """Serve the task handlers of a Worker until SIGTERM (then drain)."""
    logs.configure(json_lines=log_json)
    the_worker = load_worker(spec)
    if concurrency is not None:
        the_worker.concurrency = concurrency
    ack_wait_ms: int | None = None
    if heartbeat_timeout is not None:
        if not 0.5 <= heartbeat_timeout <= 3600:
            raise fail(f"--heartbeat-timeout {heartbeat_timeout} is outside 0.5..3600 s", "", 2)
        ack_wait_ms = int(heartbeat_timeout * 1000)
        the_worker.heartbeat_interval_ms = max(100, ack_wait_ms // 3)

    async def main() -> None:
        client = await Client.connect(nats_url, task_ack_wait_ms=ack_wait_ms)
        stop = asyncio.Event()
        install_stop_signals(stop, lambda name: err.print(f"{name}: draining"))
        tasks = ", ".join(sorted(the_worker.handlers))
        err.print(f"worker {the_worker.worker_id}: serving {tasks}", highlight=False)
        connection = client.connection
        try:
            await the_worker.serve(connection.tasks, connection.commands, connection.commands, stop)
        finally:
            await client.close()

    run_async(main())


# -- workflows ---------------------------------------------------------------------------


def read_workflow_file(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise fail(f"{file}: {error.strerror}", "pass the path of a workflow JSON file") from None


@workflow_app.command("validate")
def workflow_validate(file: Path, as_json: JsonOption = False) -> None:
    """Validate a workflow file offline (no server needed)."""
    try:
        workflow = parse_workflow(read_workflow_file(file))
    except WorkflowInvalidError as error:
        if as_json:
            problems = [render.to_plain(problem) for problem in error.problems]
            emit_json({"valid": False, "problems": problems})
            raise typer.Exit(1) from None
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(
            f"{file}: {len(error.problems)} problem(s)", "fix the fields listed above"
        ) from None
    if as_json:
        emit_json({"valid": True, "name": workflow.name, "steps": len(workflow.steps)})
    else:
        out.print(f"{file}: workflow {workflow.name!r} is valid ({len(workflow.steps)} steps)")


@workflow_app.command("register")
def workflow_register(file: Path, nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Register (or update) a workflow from a JSON file."""
    workflow = parse_workflow_or_exit(file)

    async def action(client: Client) -> int:
        return await client.register_workflow(workflow)

    revision = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"name": workflow.name, "revision": revision})
    else:
        out.print(f"registered workflow {workflow.name!r} (revision {revision})")


def parse_workflow_or_exit(file: Path) -> Any:
    try:
        return parse_workflow(read_workflow_file(file))
    except WorkflowInvalidError as error:
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(
            f"{file}: {len(error.problems)} problem(s)", "fix the fields listed above"
        ) from None


@workflow_app.command("list")
def workflow_list(nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List registered workflows."""
    names = run_async(with_client(nats_url, lambda client: client.list_workflows()))
    if as_json:
        emit_json(names)
    else:
        for name in names:
            out.print(name)
        if not names:
            err.print("no workflows registered; `dagnats workflow register FILE` adds one")


@workflow_app.command("show")
def workflow_show(
    name: str,
    revision: Annotated[int | None, typer.Option(help="A past revision.")] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a registered workflow (the latest revision unless --revision)."""

    async def action(client: Client) -> tuple[Any, list[int]]:
        workflow = await client.get_workflow(name, revision)
        return render.workflow_document(workflow), await client.workflow_revisions(name)

    document, revisions = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"workflow": document, "revisions": revisions})
    else:
        out.print_json(json.dumps(document))
        out.print(f"revisions: {', '.join(map(str, revisions))}")


# -- runs --------------------------------------------------------------------------------


@run_app.command("start")
def run_start(
    workflow: Annotated[str, typer.Argument(help="The registered workflow's name.")],
    input: Annotated[str | None, typer.Option("--input", help="The run input as JSON.")] = None,
    input_file: Annotated[Path | None, typer.Option(help="Read the input from a file.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Your own run id (idempotent).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to end, showing progress.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run of a registered workflow."""
    value = load_json_argument(input, input_file, "input")

    async def action(client: Client) -> tuple[str, RunState | None]:
        started = await client.start(workflow, value, run_id=run_id)
        if not wait:
            return started, None
        return started, await wait_with_progress(client, started, timeout, as_json)

    started, final = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"run_id": started, **({"run": render.state_document(final)} if final else {})})
    else:
        out.print(f"started run [bold]{started}[/bold]")
    if final is not None and final.status != "completed":
        raise typer.Exit(1)


async def wait_with_progress(
    client: Client, run_id: str, timeout: float, quiet: bool, follow: bool = False
) -> RunState:
    if quiet or not out.is_terminal:
        return await client.wait(run_id, timeout_s=timeout, follow=follow)
    with Live(console=out, refresh_per_second=8, transient=False) as live:

        def update(state: RunState, _decision: Decision) -> None:
            live.update(render.run_table(state))

        return await client.wait(run_id, timeout_s=timeout, on_update=update, follow=follow)


@run_app.command("show")
def run_show(run_id: str, nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show a run's state (folded from its history)."""

    async def show(client: Client) -> tuple[RunState, list[ChildLink], list[Any]]:
        state = await client.get_run(run_id)
        chained = state.continued_from is not None or state.continued_as is not None
        chain = await client.lineage(run_id) if chained else []
        return state, await client.children(run_id), chain

    state, links, chain = run_async(with_client(nats_url, show))
    if as_json:
        document = render.state_document(state)
        if links:  # a run without children reads as `run wait --json` does
            document["children"] = [msgspec.to_builtins(link) for link in links]
        cli_chains_render.add_lineage(document, state, chain)
        emit_json(document)
    else:
        out.print(render.run_table(state))
        cli_chains_render.print_lineage(out, err, state, chain)
        if state.parent_run_id:
            out.print(f"parent: {state.parent_run_id} (step {state.parent_step_id})")
        for link in links:
            how = "detached" if link.detached else "attached"
            out.print(
                f"  └─ {link.step_id}: {link.child_run_id} ({link.workflow}, {how}) {link.status}"
            )


# -- run list: served from the SQLite query tables (issue 8; dagnats/cli_projections.py) --
@run_app.command("list")
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
    data_dir: cli_projections.DataDirOption = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent runs, newest first (from <data dir>/dagnats.sqlite when it exists)."""
    cli_projections.run_list(
        limit, status, workflow, since, failed_step, data_dir, nats_url, as_json
    )


# -- end of run list -----------------------------------------------------------------------


@run_app.command("history")
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


@run_app.command("wait")
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

    async def action(client: Client) -> RunState:
        return await wait_with_progress(client, run_id, timeout, as_json, follow)

    state = run_async(with_client(nats_url, action))
    if as_json:
        emit_json(render.state_document(state))
    elif not out.is_terminal:
        out.print(render.run_table(state))
    if state.status == "continued_as_new":
        err.print(f"[dim]hint:[/dim] run continued as {state.continued_as}; wait with --follow")
    if state.status != "completed":
        raise typer.Exit(1)


@run_app.command("cancel")
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


@run_app.command("signal")
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


event_app = typer.Typer(help="Publish external events.", no_args_is_help=True)
app.add_typer(event_app, name="event")


@event_app.command("publish")
def event_publish(
    name: Annotated[str, typer.Argument(help="The event's name (e.g. order.paid).")],
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload.")] = None,
    payload_file: Annotated[Path | None, typer.Option(help="Read the payload from a file.")] = None,
    event_id: Annotated[
        str | None, typer.Option(help="Idempotency key: the same id again is one event.")
    ] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish an external event to every run waiting for its name."""
    value = load_json_argument(payload, payload_file, "payload")
    seq = run_async(
        with_client(nats_url, lambda client: client.publish_event(name, value, event_id=event_id))
    )
    if as_json:
        emit_json({"event": name, "seq": seq})
    else:
        out.print(f"event {name!r} published (seq {seq})")


@app.command()
def demo() -> None:
    """Run the example order workflow end to end on a throwaway embedded server."""
    from dagnats.demo import main as demo_main

    raise typer.Exit(demo_main())


def main() -> None:
    """Entry point of the `dagnats` console script."""
    app()


if __name__ == "__main__":
    main()
