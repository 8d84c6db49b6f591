"""`dagnats serve`: the embedded nats-server (or an external one), resources, the engine.

One asyncio process runs the nats-server child (its data under the data dir, loopback only,
killed with its parent), creates the streams and buckets, and runs the engine until SIGINT or
SIGTERM. The embedded server's port is kept in `<data dir>/nats.port` and chosen again on the
next start while it is free (a new one, logged, only when it is taken), so workers and clients
that know the URL reconnect to a restarted serve. If the nats-server child dies, serve stops
with a clear message and a non-zero exit: its data is on disk, and starting serve again on the
same data dir resumes every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from dagnats.runtime import credentials, external_events
from dagnats.runtime.connection import URL_FILE, Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.links import KvWorkflows, RunLinks
from dagnats.runtime.nats_server import EmbeddedNats, NatsServerError, is_port_busy
from dagnats.runtime.resources import ensure_resources, ensure_stream
from dagnats.worker import Worker

if TYPE_CHECKING:
    from dagnats.client import Client

log = logging.getLogger("dagnats.serve")
PORT_FILE = "nats.port"  # the embedded server's last port, next to nats.url
PORT_BUSY_MARKER = "already in use"  # in NatsServerError's message for a taken port
child_poll_interval_s = 0.5
local_stop_timeout_s = 10.0  # a local stack's engine and worker stop (drain) within this


class ServeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a started serve tells its user (printed, or as JSON with --json)."""

    nats_url: str
    data_dir: str
    embedded: bool
    nats_log: str = ""


class Server:
    """The serve process's parts, started and stopped together."""

    def __init__(self, data_dir: Path, *, nats_port: int = 0, nats_url: str | None = None) -> None:
        self.data_dir = data_dir.expanduser().absolute()
        self.nats_port = nats_port
        self.external_url = nats_url
        self.nats: EmbeddedNats | None = None
        self.connection: Connection | None = None
        self.engine: Engine | None = None
        self.links: RunLinks | None = None
        self.url = ""

    async def start(self) -> ServeInfo:
        """Start nats-server (unless an external URL was given), connect, create resources.

        Raises:
            NatsServerError: the embedded server could not start (one clear line + hint).
            ConnectError: the external server cannot be reached.
            ResourceConfigError: an existing stream or bucket differs from what we need.
        """
        if self.external_url is None:
            self.nats = await self._start_embedded()
            self.url = self.nats.url
            (self.data_dir / PORT_FILE).write_text(f"{self.nats.port}\n", encoding="utf-8")
            (self.data_dir / URL_FILE).write_text(self.url + "\n", encoding="utf-8")
            credentials.register_local_server(self.url, self.data_dir)  # (roles: see README)
        else:
            self.url = self.external_url
        self.connection = await Connection.open(self.url, role="engine", data_dir=self.data_dir)
        await ensure_resources(self.connection.js)
        commands = self.connection.commands
        js = self.connection.js
        await ensure_stream(js, external_events.stream_config())
        self.links = RunLinks(
            commands,
            KvWorkflows(js),
            external_events.JetStreamEvents(js),
            notify=self.connection.nc.publish,
        )
        self.engine = Engine(
            self.connection.history,
            self.connection.tasks,
            self.connection.timers,
            commands,
            links=self.links,
        )
        return ServeInfo(
            nats_url=self.url,
            data_dir=str(self.data_dir),
            embedded=self.nats is not None,
            nats_log=str(self.nats.log_path) if self.nats is not None else "",
        )

    async def _start_embedded(self) -> EmbeddedNats:
        """The embedded server on --nats-port, else on the port of the last start while it
        is free, else on a free one."""
        if self.nats_port != 0:
            nats = EmbeddedNats(self.data_dir, port=self.nats_port, authorization=self._auth())
            await nats.start()
            return nats
        last_port = read_port_file(self.data_dir / PORT_FILE)
        if last_port is not None:
            if not _port_taken(last_port):
                nats = EmbeddedNats(self.data_dir, port=last_port, authorization=self._auth())
                try:
                    await nats.start()
                    return nats
                except NatsServerError as error:  # taken between the probe and the bind
                    if PORT_BUSY_MARKER not in str(error):
                        raise
            log.warning("port %d (NATS's port last time) is taken; choosing another (workers "
                        "that read %s follow it)", last_port, URL_FILE)  # fmt: skip
        nats = EmbeddedNats(self.data_dir, authorization=self._auth())
        await nats.start()
        if last_port is not None:
            log.warning("NATS is now on port %d (was %d)", nats.port, last_port)
        return nats

    def _auth(self) -> str:
        """The server's users and permissions; generates missing credentials (first start,
        or a data dir from before roles) in `<data dir>/credentials`, 0600."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return credentials.server_authorization(credentials.ensure_credentials(self.data_dir))

    async def run(self, stop: asyncio.Event) -> None:
        """Run the engine until `stop` is set or the nats-server child dies.

        Raises:
            NatsServerError: the embedded nats-server exited while serving.
        """
        assert self.engine is not None and self.connection is not None
        projection_tasks = self.start_projections(stop)
        assert self.links is not None
        await self.links.open_routing()  # before the engine resumes runs (see RunLinks)
        projection_tasks.append(asyncio.create_task(self.links.route(stop)))
        engine_task = asyncio.create_task(self.engine.serve(self.connection.commands, stop))
        watch_task = asyncio.create_task(self._watch_child(stop))
        done, _ = await asyncio.wait({engine_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in (engine_task, watch_task, *projection_tasks):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in done:
            task.result()  # raise what ended it

    # -- projections (issue 8) ------------------------------------------------------------

    def start_projections(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Run the built-in projections until `stop`: run snapshots in KV (which the engine
        then loads, plus the history after them) and the SQLite query tables in
        `<data dir>/dagnats.sqlite`. Each catches up from its checkpoint, then tails."""
        from dagnats.runtime import projector
        from projections.sqlite import QueryTables

        assert self.engine is not None and self.connection is not None
        js = self.connection.js
        self.engine.snapshots = projector.KvSnapshotStore(js)
        targets: tuple[projector.ProjectionTarget, ...] = (
            projector.SnapshotTarget(js),
            projector.SqliteTarget(self.data_dir / projector.SQLITE_FILE, QueryTables()),
        )
        return [asyncio.create_task(projector.Projector(js, t).run(stop)) for t in targets]

    async def _watch_child(self, stop: asyncio.Event) -> None:
        if self.nats is None:
            await stop.wait()
            return
        while not stop.is_set():
            if not self.nats.is_running():
                raise NatsServerError(
                    f"the embedded nats-server exited unexpectedly (log: {self.nats.log_path})",
                    hint=f"start `dagnats serve` again on {self.data_dir}: no data is lost",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=child_poll_interval_s)

    async def stop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None
        if self.nats is not None:
            await self.nats.stop()
            url_file = self.data_dir / URL_FILE
            url_file.unlink(missing_ok=True)
            credentials.forget_local_server(self.url)
            self.nats = None


def _port_taken(port: int) -> bool:
    try:
        return is_port_busy(port)
    except OSError:  # not bindable at all (e.g. EACCES): as good as taken
        return True


def read_port_file(path: Path) -> int | None:
    """The port in serve's port file; None when there is none or it does not hold a port."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.isdigit() or not 0 < int(text) < 65_536:
        log.warning("%s holds %r, not a port; choosing a free one", path, text[:40])
        return None
    return int(text)


def install_stop_signals(
    stop: asyncio.Event, on_signal: Callable[[str], None] | None = None
) -> None:
    """Set `stop` on SIGINT and SIGTERM."""
    loop = asyncio.get_running_loop()

    def handler(name: str) -> None:
        if on_signal is not None:
            on_signal(name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig.name)


@contextlib.asynccontextmanager
async def local_stack(data_dir: Path, worker: Worker) -> AsyncIterator[tuple[ServeInfo, Client]]:
    """An embedded server, the engine and `worker` in this process, and a client to them,
    all stopped (the worker drained) on exit. For the demo, examples and tests."""
    from dagnats.client import Client

    server = Server(data_dir)
    info = await server.start()
    stop = asyncio.Event()
    engine_task = asyncio.create_task(server.run(stop))
    worker_client = await Client.connect(info.nats_url, role="worker")
    connection = worker_client.connection
    worker_task = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    client = await Client.connect(info.nats_url)
    try:
        yield info, client
    finally:
        stop.set()
        for task in (worker_task, engine_task):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=local_stop_timeout_s)
        await client.close()
        await worker_client.close()
        await server.stop()
