"""`dagnats serve`, `dagnats worker` and `dagnats demo`: the long-running processes.

`register(app)` adds `serve` and `worker`; `demo` is added last by `dagnats/cli/__init__`.
Both serve and worker refuse to start under `python -O` (assertions are part of the engine's
safety). Imports `dagnats.cli.common` and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
import typer

from dagnats import logs
from dagnats.api.limits import http_default_address
from dagnats.cli import cluster as cluster_cli
from dagnats.cli.common import (
    JsonOption,
    LogJsonOption,
    UrlOption,
    err,
    fail,
    load_worker,
    out,
    run_async,
)
from dagnats.observe.metrics import MetricsServer, parse_address
from dagnats.runtime import collector, settings
from dagnats.runtime.assertions import AssertionsDisabledError, require_assertions
from dagnats.runtime.connection import Connection, default_data_dir
from dagnats.runtime.nats_server import LOOPBACK_HOST
from dagnats.runtime.parent_watch import watch_parent
from dagnats.runtime.serve import ServeInfo, Server, install_stop_signals
from dagnats.worker_groups import check_groups
from kernel.errors import DagnatsError

if TYPE_CHECKING:
    from dagnats.api.serving import RunningApi
    from dagnats.worker import Worker


def refuse_without_assertions(what: str) -> None:
    """Exit with one error line and its hint under `python -O` / `PYTHONOPTIMIZE`."""
    try:
        require_assertions(what)
    except AssertionsDisabledError as error:
        raise fail(str(error), error.hint) from None


def register(app: typer.Typer) -> None:
    """Add `serve` and `worker` to the `dagnats` app."""
    app.command()(serve)
    app.command()(worker)


PORT_MAX: Final = 65_535
API_MODULE: Final = (
    "dagnats.api.serving"  # Litestar, uvicorn, the console: imported when the API starts
)


HttpOption = Annotated[
    str | None,
    typer.Option(
        "--http",
        metavar="ADDR",
        help=f"Serve the HTTP API on HOST:PORT (default {http_default_address}; port 0 = "
        "a free one). Beyond loopback it needs a token.",
    ),
]
ApiTokenFileOption = Annotated[
    Path | None,
    typer.Option(help="The HTTP API's bearer token (first line); else $DAGNATS_API_TOKEN."),
]
DieWithParentOption = Annotated[
    bool, typer.Option(help="Stop when the process that started serve dies (supervisors, IDEs).")
]
MetricsOption = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        metavar="ADDR",
        help="Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; :PORT = loopback).",
    ),
]


def serve(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where NATS keeps its data (default ~/.dagnats).")
    ] = None,
    nats_port: Annotated[int, typer.Option(help="Port of the embedded NATS; 0 = a free one.")] = 0,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
    log_json: LogJsonOption = False,
    http: HttpOption = None,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve no HTTP API.")] = False,
    api_token_file: ApiTokenFileOption = None,
    die_with_parent: DieWithParentOption = False,
    retention: Annotated[
        str | None,
        typer.Option(help="Purge finished runs older than this (30d, 12h); off by default."),
    ] = None,
    metrics: MetricsOption = None,
    clustered: cluster_cli.ClusterOption = False,
    cluster_name: cluster_cli.ClusterNameOption = "dagnats",
    node_name: cluster_cli.NodeNameOption = None,
    routes: cluster_cli.RoutesOption = None,
    cluster_listen: cluster_cli.ClusterListenOption = cluster_cli.CLUSTER_LISTEN_DEFAULT,
    nats_host: cluster_cli.NatsHostOption = LOOPBACK_HOST,
    replicas: cluster_cli.ReplicasOption = None,
    insecure: cluster_cli.InsecureOption = False,
    engine_only: cluster_cli.EngineOnlyOption = False,
    no_engine: cluster_cli.NoEngineOption = False,
    credentials_from: cluster_cli.CredentialsFromOption = None,
    partitions: cluster_cli.PartitionsOption = None,
) -> None:
    """Run the engine with an embedded nats-server (or --nats-url for an existing one)."""
    if not 0 <= nats_port <= PORT_MAX:
        raise fail(f"--nats-port {nats_port} is outside 0..{PORT_MAX} (0 = a free port)", "", 2)
    where = cluster_cli.placement(
        clustered=clustered, name=cluster_name, node_name=node_name, routes=routes,
        listen=cluster_listen, nats_host=nats_host, replicas=replicas, insecure=insecure,
        engine_only=engine_only, no_engine=no_engine, nats_url=nats_url, partitions=partitions,
    )  # fmt: skip
    metrics_at = metrics_address(metrics)
    _check_test_seams()
    refuse_without_assertions("dagnats serve")
    logs.configure(json_lines=log_json)
    no_http = no_http or engine_only
    token = _http_checks(http, no_http, api_token_file)
    home = data_dir or default_data_dir()
    cluster_cli.share_credentials(credentials_from, home)
    server = Server(home, nats_port=nats_port, nats_url=nats_url, placement=where)
    server.retention_ms = _retention_ms(retention)
    run_async(_serve(server, http, no_http, token, die_with_parent, metrics_at, as_json))


async def _serve(
    server: Server,
    http: str | None,
    no_http: bool,
    token: str | None,
    die_with_parent: bool,
    metrics_at: tuple[str, int] | None,
    as_json: bool,
) -> None:
    """Start the server, then its engine, then its HTTP API and metrics; print where once
    all are up; run until stopped. The engine does not wait for the API; the API waits for
    the engine's first resume pass (bounded), so that its framework's import (in a thread)
    does not take the engine's turns under the GIL while it resumes unfinished runs."""
    stop = asyncio.Event()
    install_stop_signals(stop, lambda name: err.print(f"{name}: stopping"))
    api: RunningApi | None = None
    metrics_server: MetricsServer | None = None
    watch = asyncio.create_task(watch_parent(stop)) if die_with_parent else None
    running: asyncio.Task[None] | None = None
    try:
        info = await server.start()
        metrics_server = start_metrics(server, metrics_at)
        running = asyncio.create_task(server.run(stop))
        if not no_http:
            await _until_resumed(server, running)
        if not no_http and not running.done():  # (an engine that ended says its own error)
            api = await _start_api(server, http, token)
            if api is not None:
                info = msgspec.structs.replace(info, http_url=api.url)
        if not running.done():  # (else it ended already: its error, not "ready", is said)
            collector.settle()  # all is up: what it holds now lives as long as the process
            _print_ready(info, as_json, metrics_server)
        await running
    finally:
        if running is not None:  # ended here when the API failed to start (its error is said)
            stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await running
        if api is not None:
            await api.stop()
        if metrics_server is not None:
            metrics_server.stop()
        if watch is not None:
            watch.cancel()
        await server.stop()


async def _until_resumed(server: Server, running: asyncio.Task[None]) -> None:
    """Until the engine's first resume pass is done, it has ended, or the bound passed."""
    resumed = asyncio.ensure_future(server.resumed.wait())
    try:
        await asyncio.wait(
            {resumed, running},
            timeout=settings.api_after_resume_wait_max_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        resumed.cancel()


async def _start_api(server: Server, http: str | None, token: str | None) -> RunningApi | None:
    """The HTTP API (None when the default address is taken), its modules imported in a
    thread so that the engine's loop goes on meanwhile."""
    serving = await asyncio.to_thread(importlib.import_module, API_MODULE)
    address = http or http_default_address
    started = await serving.start_http(server, address, explicit=http is not None, token=token)
    assert started is None or isinstance(started, serving.RunningApi)
    return started


def _retention_ms(text: str | None) -> int | None:
    """Milliseconds of --retention (None: off); a bad or too short age exits (usage)."""
    if text is None:
        return None
    from dagnats.cli.lifecycle import age_ms
    try:
        value = age_ms(text, "--retention")
    except DagnatsError as error:
        raise fail(str(error), "e.g. --retention 30d", 2) from None
    if value < settings.retention_min_ms:
        raise fail(
            f"--retention {text!r} is under the minimum of {settings.retention_min_ms} ms",
            "e.g. --retention 30d",
            2,
        )
    return value


def _http_checks(http: str | None, no_http: bool, token_file: Path | None) -> str | None:
    """The API token (None: none), after the usage checks of --http and of the bridge's
    $DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT (exit 2 when wrong), before anything starts."""
    from dagnats.api.checks import (
        BridgeSettingError,
        HttpAddressError,
        TokenError,
        bridge_ack_wait_ms,
        load_token,
        parse_address,
        require_token_beyond_loopback,
    )

    if no_http and http is not None:
        raise fail("--http and --no-http exclude each other", "pass one of them", 2)
    if no_http:
        return None
    try:
        token = load_token(token_file)
        host, _ = parse_address(http or http_default_address)
        require_token_beyond_loopback(host, token)
        bridge_ack_wait_ms()  # (read again when the API starts, after the engine resumed)
    except (TokenError, HttpAddressError, BridgeSettingError) as error:
        raise fail(str(error), error.hint, 2) from None
    return token


def _print_ready(info: ServeInfo, as_json: bool, metrics: MetricsServer | None) -> None:
    if as_json:
        print(msgspec.json.encode(info).decode(), flush=True)
        return
    out.print(f"dagnats serve: NATS at [bold]{info.nats_url}[/bold]")
    out.print(
        f"data dir: {info.data_dir}" + (f" (nats log {info.nats_log})" if info.nats_log else "")
    )
    if info.http_url:
        out.print(f"HTTP API at {info.http_url} (docs: {info.http_url}/docs)", highlight=False)
    if metrics is not None:
        out.print(f"metrics at http://{metrics.host}:{metrics.port}/metrics", highlight=False)
    out.print("ready; stop with Ctrl-C", highlight=False)


def _check_test_seams() -> None:
    """A bad test-seam variable ends serve before it starts, in one line."""
    import os

    from dagnats.runtime.admission_compact import compact_after_from_env

    try:
        compact_after_from_env(os.environ)
    except ValueError as error:
        raise fail(str(error), "unset it (a test seam), or set an integer >= 2", 2) from None


def metrics_address(text: str | None) -> tuple[str, int] | None:
    """(host, port) of --metrics, or None; a bad value exits with a usage error."""
    if text is None:
        return None
    try:
        return parse_address(text)
    except ValueError as error:
        raise fail(str(error), "", 2) from None


def start_metrics(server: Server, where: tuple[str, int] | None) -> MetricsServer | None:
    """The --metrics HTTP server (None without --metrics); a port taken exits with a hint."""
    if where is None:
        return None
    try:
        return MetricsServer(server.metrics, *where)
    except OSError as error:
        message = f"--metrics {where[0]}:{where[1]}: {error.strerror or error}"
        raise fail(message, "choose another port") from None


def worker(
    spec: Annotated[str, typer.Argument(help="MODULE:ATTR of a dagnats.Worker.")],
    nats_url: UrlOption = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Handlers run at once (1..10000).")
    ] = None,
    heartbeat_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a heartbeat before a task goes to another worker "
            "(the task consumer's ack wait; every worker of a task must use the same)."
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="Serve the tasks of steps with this worker group (repeat for more); a "
            "worker with groups takes no ungrouped tasks.",
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds from SIGTERM to the exit: handlers finish, results are sent, what "
            "is left comes back to other workers (keep it under the supervisor's grace; "
            "default 25)."
        ),
    ] = None,
    log_json: LogJsonOption = False,
) -> None:
    """Serve the task handlers of a Worker until SIGTERM (then drain)."""
    from dagnats.worker import check_concurrency, concurrency_max

    refuse_without_assertions("dagnats worker")
    logs.configure(json_lines=log_json)
    if concurrency is not None:
        try:
            check_concurrency(concurrency)
        except ValueError:
            rule = f"it must be within 1..{concurrency_max} (handlers run at once)"
            raise fail(f"--concurrency {concurrency}: {rule}", "", 2) from None
    drain_timeout_ms = drain_timeout_of(drain_timeout)
    the_worker = load_worker(spec)
    if group:
        try:
            the_worker.groups = check_groups(group)
        except ValueError as error:
            raise fail(f"--group: {error}", "", 2) from None
    the_worker.concurrency = concurrency or the_worker.concurrency  # (checked above)
    the_worker.drain_timeout_ms = drain_timeout_ms or the_worker.drain_timeout_ms
    check_worker_settings(spec, the_worker)
    ack_wait_ms: int | None = None
    if heartbeat_timeout is not None:
        if not 0.5 <= heartbeat_timeout <= 3600:
            raise fail(f"--heartbeat-timeout {heartbeat_timeout} is outside 0.5..3600 s", "", 2)
        ack_wait_ms = int(heartbeat_timeout * 1000)
        the_worker.heartbeat_interval_ms = max(100, ack_wait_ms // 3)
    run_async(serve_worker(the_worker, nats_url, ack_wait_ms))


def check_worker_settings(spec: str, the_worker: Worker) -> None:
    """A setting the worker's module gave out of range exits with one line, not a traceback
    from `serve` (the options given on the command line were checked already)."""
    from dagnats.worker import check_concurrency
    from dagnats.worker_drain import check_drain_timeout

    try:
        check_concurrency(the_worker.concurrency)
        check_drain_timeout(the_worker.drain_timeout_ms)
    except ValueError as error:
        raise fail(f"{spec}: {error}", "fix the Worker's settings in its module", 2) from None


def drain_timeout_of(seconds: float | None) -> int | None:
    """--drain-timeout in ms (None without it); out of range exits with a usage error."""
    from dagnats.worker_drain import check_drain_timeout, drain_timeout_ms_max, drain_timeout_ms_min

    if seconds is None:
        return None
    try:
        return check_drain_timeout(round(seconds * 1000))
    except (ValueError, OverflowError):  # (nan, inf)
        low, high = drain_timeout_ms_min / 1000, drain_timeout_ms_max / 1000
        rule = f"it must be within {low:g}..{high:g} s (from SIGTERM to the exit)"
        raise fail(f"--drain-timeout {seconds:g}: {rule}", "", 2) from None


async def serve_worker(the_worker: Worker, nats_url: str | None, ack_wait_ms: int | None) -> None:
    """Serve `the_worker` until SIGTERM, then exit within its `drain_timeout_ms` of the signal:
    the drain, closing the connection and the threads' end share it; what outlasts it (a hung
    handler, a blocked thread, a server that does not answer the close) is not waited for."""
    # A worker needs a connection, not a Client: its role may not read history.
    connection = await Connection.open(nats_url, task_ack_wait_ms=ack_wait_ms, role="worker")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled: list[float] = []  # the loop time of the first stop signal

    def on_signal(name: str) -> None:
        signalled.append(loop.time())
        err.print(f"{name}: draining", highlight=False)

    install_stop_signals(stop, on_signal)
    tasks = ", ".join(sorted(the_worker.handlers))
    groups = f" in group(s) {', '.join(the_worker.groups)}" if the_worker.groups else ""
    err.print(f"worker {the_worker.worker_id}: serving {tasks}{groups}", highlight=False)
    collector.settle()
    try:
        await the_worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    finally:
        exit_by = signalled[0] + the_worker.drain_timeout_ms / 1000 if signalled else None
        closed = await closed_by(connection, exit_by)
    grace_ms = the_worker.handler_cancel_grace_ms
    if exit_by is not None:
        grace_ms = min(grace_ms, int((exit_by - loop.time()) * 1000))
    left = "" if closed else "the connection's close"
    # A handler that ignored its cancellation, or a thread a cancelled handler left blocked,
    # would hold the interpreter's exit forever (it joins the thread pool).
    if the_worker.hung:
        left = "hung handler(s)"
    elif grace_ms <= 0:
        left = "the handlers' threads (the drain's bound passed)"
    elif not await threads_ended(grace_ms):
        left = "hung handler(s)"
    if left:
        err.print(f"exiting without waiting for {left}", highlight=False)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def closed_by(connection: Connection, exit_by: float | None) -> bool:
    """Close `connection`, by the loop time `exit_by` when given; False when cut short."""
    if exit_by is None:
        await connection.close()
        return True
    try:
        left_s = max(0.0, exit_by - asyncio.get_running_loop().time())
        await asyncio.wait_for(connection.close(), timeout=left_s)
    except TimeoutError:
        return False
    return True


async def threads_ended(timeout_ms: int) -> bool:
    """Shut the loop's default thread pool down, waiting at most timeout_ms for its threads
    (asyncio.run would wait for them without a bound); False when some still run."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.shutdown_default_executor(), timeout=timeout_ms / 1000)
    except TimeoutError:
        return False
    return True


def demo(
    copy_to: Annotated[
        Path | None,
        typer.Option(
            "--copy-to",
            help="Copy the example (order/workflow.json, input.json, worker.py and the "
            "workflow schema) into DIR for the quick start, and exit.",
        ),
    ] = None,
) -> None:
    """Run the example order workflow end to end on a throwaway embedded server."""
    from dagnats.demo import copy_example
    from dagnats.demo import main as demo_main

    if copy_to is not None:
        try:
            written = copy_example(copy_to)
        except OSError as error:
            message = f"--copy-to {copy_to}: {error.strerror or error}"
            raise fail(message, "pass a writable dir") from None
        for path in written:
            out.print(str(path), highlight=False)
        return
    refuse_without_assertions("dagnats demo")
    raise typer.Exit(demo_main())
