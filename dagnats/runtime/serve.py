"""`dagnats serve`: the embedded nats-server (or an external one), resources, the engine.

One asyncio process runs the nats-server child (its data under the data dir, loopback only,
killed with its parent), creates the streams and buckets, and runs the engine until SIGINT or
SIGTERM. The embedded server's port is kept in `<data dir>/nats.port` and chosen again on the
next start while it is free (a new one, logged, only when it is taken), so workers and clients
that know the URL reconnect to a restarted serve. If the nats-server child dies, serve stops
with a clear message and a non-zero exit: its data is on disk, and starting serve again on the
same data dir resumes every run.

The data dir is private (0700, its files 0600, the nats-server child's store too; see
`dagnats.runtime.data_dir`). Serve removes only the files it wrote, and only while they still
hold what it wrote: a second serve refused on the same data dir leaves the running one's
`nats.url` alone. No secret is printed: a URL's password is shown as `***`. If the history
stream is deleted, serve says so once ("the history stream is gone: ...") and runs no engine
until it is restored; it never creates an empty one in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import msgspec
from nats.js import JetStreamContext

from dagnats.observe.hooks import EngineObserver
from dagnats.observe.metrics import Metrics
from dagnats.observe.reporter import Reporter
from dagnats.runtime import credentials, external_events, serve_start, settings
from dagnats.runtime.admission_compact import serve_compaction
from dagnats.runtime.cluster_serve import (
    PartitionedParts,
    PartitionedSource,
    Placement,
    ensure_cluster_resources,
    partitioned_parts,
    settle_partitions,
    until_formed,
)
from dagnats.runtime.connection import URL_FILE, Connection
from dagnats.runtime.data_dir import (
    create_private_file,
    make_private_dir,
    private_umask,
    remove_if_ours,
    tighten_files,
    write_private,
)
from dagnats.runtime.ended_runs import EndedRuns
from dagnats.runtime.engine import Engine
from dagnats.runtime.history_guard import (
    HISTORY_GONE_HINT,
    HISTORY_GONE_MESSAGE,
    history_check_interval_ms,
    history_gone,
)
from dagnats.runtime.links import KvWorkflows, RunLinks
from dagnats.runtime.nats_server import (
    CONFIG_FILE_NAME,
    LOCK_FILE_NAME,
    LOG_FILE_NAME,
    STORE_DIR_NAME,
    EmbeddedNats,
    NatsServerError,
    is_port_busy,
)
from dagnats.runtime.partitions import forward_to_owner
from dagnats.runtime.projector_snapshot import KvSnapshotStore
from dagnats.runtime.protocols import CommandQueue
from dagnats.runtime.queue_anchor import ensure_anchors
from dagnats.runtime.resources import ensure_resources, ensure_stream
from dagnats.runtime.retention import Retention
from dagnats.runtime.triggers import TriggerService, command_starter
from kernel import registry
from kernel.errors import DagnatsError

if TYPE_CHECKING:
    from dagnats.client import Client
    from dagnats.worker import Worker

log = logging.getLogger("dagnats.serve")
PORT_FILE = "nats.port"  # the embedded server's last port, next to nats.url
PORT_BUSY_MARKER = "already in use"  # in NatsServerError's message for a taken port
child_poll_interval_s = 0.5
local_stop_timeout_s = 10.0  # a local stack's engine and worker stop (drain) within this
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` with its password (if any) shown as `***`: what serve may print (each URL of
    a cluster's comma-separated list)."""
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:{REDACTED}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class ServeEngine(Engine):
    """serve's engine: sets `resumed` once its first pass over the unfinished runs is done
    (or has failed), so that serve starts its HTTP API after it: the API's imports would take
    the engine's turns under the GIL while it resumes (issue 14, `bench.recovery`)."""

    resumed: asyncio.Event | None = None

    async def resume_all(self) -> int:
        try:
            return await super().resume_all()
        finally:
            if self.resumed is not None:
                self.resumed.set()


class ServeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a started serve tells its user (printed, or as JSON with --json)."""

    nats_url: str
    data_dir: str
    embedded: bool
    nats_log: str = ""
    http_url: str = ""  # the HTTP API's (dagnats/api), "" when it does not serve


class Server:
    """The serve process's parts, started and stopped together."""

    def __init__(
        self, data_dir: Path, *, nats_port: int = 0, nats_url: str | None = None,
        placement: Placement | None = None,
    ) -> None:  # fmt: skip
        self.data_dir = data_dir.expanduser().absolute()
        self.nats_port = nats_port
        self.external_url = nats_url
        self.placement = placement or Placement()  # cluster and placement (README "Cluster")
        self.partitioned: PartitionedParts | None = None
        self.nats: EmbeddedNats | None = None
        self.connection: Connection | None = None
        self.engine: Engine | None = None
        self.links: RunLinks | None = None
        self.url = ""
        self._written: dict[str, str] = {}  # file name -> what this server wrote there
        self.history_gone = False
        self.engine_serving = False  # the engine consumes commands now (GET /health)
        self.metrics = Metrics()  # README "Observability"; fed by the engine and the reporter
        self.reporter: Reporter | None = None
        self.retention_ms: int | None = None  # --retention (runtime/retention.py); None: off
        self.admin: Connection | None = None  # retention purges as admin (README "Security")
        # Set when the engine's first resume pass is done, or when no engine runs here.
        self.resumed = asyncio.Event()

    async def start(self) -> ServeInfo:
        """Start nats-server (unless an external URL was given), connect, create resources.

        Raises:
            NatsServerError: the embedded server could not start (one clear line + hint).
            ConnectError: the external server cannot be reached.
            ResourceConfigError: an existing stream or bucket differs from what we need.
        """
        if self.external_url is None:
            self._prepare_private_data_dir()
            shared = serve_start.current_umask()  # (the step modules' bytecode cache: shared)
            with private_umask():  # the child's store, log, config and lock: owner-only
                loading = functools.partial(serve_start.with_umask, shared, registry.names)
                self.nats = await serve_start.while_starting(self._start_embedded(), loading)
            self.url = self.nats.url
            self._write(PORT_FILE, f"{self.nats.port}\n")
            self._write(URL_FILE, self.url + "\n")
            credentials.register_local_server(self.url, self.data_dir)  # (roles: see README)
        else:
            self.url = self.external_url
        self.connection = await Connection.open(self.url, role="engine", data_dir=self.data_dir)
        js = self.connection.js
        clustered = self.placement.clustered(self.url)
        if clustered:  # a forming cluster answers "unavailable" for a while
            self.history_gone = await until_formed("answer", lambda: history_gone(js))
        else:
            self.history_gone = await history_gone(js)
        if self.history_gone:
            log.error("%s (%s)", HISTORY_GONE_MESSAGE, HISTORY_GONE_HINT)
        elif clustered:  # (idempotent, with the cluster's replicas; waits for its quorum)
            await ensure_cluster_resources(js, self.placement.stream_replicas(self.url))
        else:  # never create an empty history in place of a deleted one
            await _ensure_local_resources(js)
        if self.retention_ms is not None:  # the engine may not purge history; admin may
            self.admin = await Connection.open(self.url, role="admin", data_dir=self.data_dir)
        elif not self.history_gone:  # admission compaction purges as admin too
            self.admin = await _admin_or_none(self.url, self.data_dir)
        if not self.history_gone:
            if self.admin is not None:  # (a stream made before it republished)
                await serve_start.republish_history(self.admin.js)
            await self._settle_partitions(clustered)
        history = self.partitioned.history if self.partitioned else self.connection.history
        commands = self.connection.commands
        self.links = RunLinks(commands, KvWorkflows(js), external_events.JetStreamEvents(js),
                              notify=self.connection.nc.publish)  # fmt: skip
        self.engine = ServeEngine(history, self.connection.tasks, self.connection.timers,
                                  commands, links=self.links)  # fmt: skip
        self.engine.resumed = self.resumed
        admin_js = self.admin.js if self.admin is not None else None  # (its purges)
        serve_compaction(self.engine.admission.compactor, admin_js)  # (admission_compact.py)
        if self.partitioned is not None:  # follow-ups for other partitions go to their owners
            self.engine.admission.forward = forward_to_owner(self.partitioned.ownership, commands)
        self.engine.observer = EngineObserver(metrics=self.metrics)
        self.engine.ended = EndedRuns(js)  # workers skip tasks of ended runs (ended_runs)
        self.reporter = Reporter(
            self.engine, self.metrics, self.connection.nc, js,
            url=redact_url(self.url), sqlite_path=self._sqlite_path(),
        )  # fmt: skip
        return ServeInfo(
            nats_url=redact_url(self.url),
            data_dir=str(self.data_dir),
            embedded=self.nats is not None,
            nats_log=str(self.nats.log_path) if self.nats is not None else "",
        )

    async def _settle_partitions(self, clustered: bool) -> None:
        """A first start stores the partition count, later ones check it (cluster_serve);
        a partitioned engine gets its parts."""
        assert self.connection is not None
        js = self.connection.js
        asked = self.placement.partitions
        count = await settle_partitions(js, asked=asked, first_start=clustered)
        if count is not None:
            self.connection.partitions.known(count)
        if self.placement.engine:
            self.partitioned = await partitioned_parts(js, count)

    def _prepare_private_data_dir(self) -> None:
        """The data dir 0700, its store 0700 and the files found there 0600 (an older
        version made them readable by all)."""
        try:
            make_private_dir(self.data_dir)
            make_private_dir(self.data_dir / STORE_DIR_NAME)
        except OSError as error:
            raise NatsServerError(
                f"data dir {self.data_dir} is not usable: {error.strerror or error}",
                hint="pass a data dir this user can create and write",
            ) from error
        names = (PORT_FILE, URL_FILE, LOCK_FILE_NAME, LOG_FILE_NAME, CONFIG_FILE_NAME)
        sqlite = self._sqlite_path()
        tighten_files([*(self.data_dir / name for name in names), sqlite])
        tighten_files(sqlite.with_name(sqlite.name + suffix) for suffix in SQLITE_SIDE_FILES)

    def _sqlite_path(self) -> Path:
        return self.data_dir / settings.sqlite_file

    def _write(self, name: str, text: str) -> None:
        write_private(self.data_dir / name, text)
        self._written[name] = text

    async def _start_embedded(self) -> EmbeddedNats:
        """The embedded server on --nats-port, else on the port of the last start while it
        is free, else on a free one."""
        if self.nats_port != 0:
            nats = self._embedded(self.nats_port)
            await nats.start()
            return nats
        last_port = read_port_file(self.data_dir / PORT_FILE)
        if last_port is not None:
            if not _port_taken(last_port):
                nats = self._embedded(last_port)
                try:
                    await nats.start()
                    return nats
                except NatsServerError as error:  # taken between the probe and the bind
                    if PORT_BUSY_MARKER not in str(error):
                        raise
            log.warning("port %d (NATS's port last time) is taken; choosing another (workers "
                        "that read %s follow it)", last_port, URL_FILE)  # fmt: skip
        nats = self._embedded(0)
        await nats.start()
        if last_port is not None:
            log.warning("NATS is now on port %d (was %d)", nats.port, last_port)
        return nats

    def _embedded(self, port: int) -> EmbeddedNats:
        """The embedded server on `port` (0: a free one), a cluster node's config added."""
        extra = self.placement.server_config(self.data_dir)
        host = self.placement.nats_host
        return EmbeddedNats(
            self.data_dir, port=port, authorization=self._auth(), host=host, extra_config=extra
        )

    def _auth(self) -> str:
        """The server's users and permissions; generates missing credentials (first start,
        or a data dir from before roles) in `<data dir>/credentials`, 0600."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return credentials.server_authorization(credentials.ensure_credentials(self.data_dir))

    async def run(self, stop: asyncio.Event) -> None:
        """Run the engine until `stop` is set or the nats-server child dies. While the
        history stream is gone, run no engine (NATS stays up, so it can be restored); said
        once when it goes, once when it is back.

        Raises:
            NatsServerError: the embedded nats-server exited while serving.
        """
        watch_task = asyncio.create_task(self._watch_child(stop))
        try:
            while not stop.is_set() and not watch_task.done():
                if not self.placement.engine:  # a NATS (and HTTP) node: no engine here
                    self.resumed.set()
                    stopping = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({watch_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    continue
                if self.history_gone:
                    self.resumed.set()  # (nothing resumes until it is back)
                    await self._until_history_back(stop, watch_task)
                    continue
                await self._run_engine(stop, watch_task)
        finally:
            stop.set()
            self.resumed.set()
            if not watch_task.done():
                watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch_task
        if watch_task.done() and not watch_task.cancelled():
            watch_task.result()  # raise what ended it

    async def _run_engine(self, stop: asyncio.Event, watch_task: asyncio.Task[None]) -> None:
        """The engine, projections and links until stop, the child's death, or the history
        stream going (then `history_gone` is set and they are stopped)."""
        assert self.engine is not None and self.connection is not None
        running = asyncio.Event()  # the parts' own stop: set when any of them must end
        self.engine.snapshots = KvSnapshotStore(self.connection.js)  # (filled by projections)
        assert self.links is not None
        await self.links.open_routing()  # before the engine resumes runs (see RunLinks)
        projection_tasks = [asyncio.create_task(self._after_resume(running))]
        projection_tasks.append(asyncio.create_task(self.links.route(running)))
        triggers = TriggerService(self.connection.js, command_starter(self.connection))
        projection_tasks.append(asyncio.create_task(triggers.run(running)))
        source: CommandQueue = self.connection.commands
        if self.partitioned is not None:  # this engine's partitions only (runtime/partitions)
            source = PartitionedSource(self.partitioned.commands, self.connection.commands)
            ownership = self.partitioned.ownership
            projection_tasks.append(asyncio.create_task(ownership.run(running)))
        engine_task = asyncio.create_task(self.engine.serve(source, running))
        engine_task.add_done_callback(lambda _: setattr(self, "engine_serving", False))
        self.engine_serving = True
        guard_task = asyncio.create_task(self._watch_history(running))
        stop_task = asyncio.create_task(stop.wait())
        waited = {engine_task, guard_task, stop_task, watch_task}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        running.set()
        for task in (engine_task, guard_task, stop_task, *projection_tasks):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.partitioned is not None:  # hand back what its pumps hold
            await self.partitioned.commands.close()
        if engine_task in done and not self.history_gone:
            stop.set()
            engine_task.result()  # raise what ended it

    def _retention(self) -> Retention:
        """Drops purged runs' query rows; with --retention, purges old finished runs."""
        assert self.connection is not None
        admin = self.admin.js if self.admin is not None else None
        return Retention(
            self.connection.js, self._sqlite_path(), retention_ms=self.retention_ms, admin=admin
        )

    async def _watch_history(self, stop: asyncio.Event) -> None:
        """Return when the history stream is gone (said once, as an error), or at stop."""
        assert self.connection is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=history_check_interval_ms / 1000)
            try:
                gone = await history_gone(self.connection.js)
            except Exception as error:  # no answer is no verdict: the connection logs outages
                log.debug("history check failed: %s", error)
                continue
            if gone:
                log.error("%s (%s); the engine stops until it is back", HISTORY_GONE_MESSAGE,
                          HISTORY_GONE_HINT)  # fmt: skip
                self.history_gone = True
                return

    async def _until_history_back(
        self, stop: asyncio.Event, watch_task: asyncio.Task[None]
    ) -> None:
        """Wait (NATS serving) until the history stream is restored, then make sure every
        other resource exists again and let the engine run."""
        assert self.connection is not None
        while not stop.is_set() and not watch_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=history_check_interval_ms / 1000)
            with contextlib.suppress(Exception):
                if not await history_gone(self.connection.js):
                    await _ensure_local_resources(self.connection.js)
                    log.warning("the history stream is back; the engine starts again")
                    self.history_gone = False
                    return

    async def _after_resume(self, running: asyncio.Event) -> None:
        """The built-in projections, retention and the status reporter, once the engine's
        first resume pass is done (or at once when it is done already), until `running` is
        set. Their imports (sqlite-utils), catch-up, first sweep and first report would take
        the engine's turns
        while it resumes unfinished runs (issue 14, `bench.recovery`); the engine loads a
        run from its snapshot and the history after it, so a later snapshot is never wrong."""
        resumed = asyncio.ensure_future(self.resumed.wait())
        stopping = asyncio.ensure_future(running.wait())
        try:
            await asyncio.wait({resumed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            resumed.cancel()
            stopping.cancel()
        if running.is_set():
            return
        # Their modules (sqlite-utils) imported in a thread: the loop goes on meanwhile.
        try:
            await asyncio.to_thread(serve_start.import_projection_modules)
        except Exception as error:  # a broken install: said, and the engine goes on
            log.error("projections not started: their modules do not import (%s); "
                      "reinstall dagnats", error)  # fmt: skip
            return
        if running.is_set():
            return
        tasks = self.start_projections(running)
        tasks.append(asyncio.create_task(self._retention().run(running)))  # (its first sweep)
        if self.reporter is not None:  # the gauges of /metrics and `dagnats status`
            tasks.append(asyncio.create_task(self.reporter.run(running)))
        await asyncio.gather(*tasks, return_exceptions=True)  # (cancelled: cancels them)

    # -- projections (issue 8) ------------------------------------------------------------

    def start_projections(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Run the built-in projections until `stop`: run snapshots in KV (which the engine
        then loads, plus the history after them) and the SQLite query tables in
        `<data dir>/dagnats.sqlite`. Each catches up from its own checkpoint; both follow one
        tail of the history stream (`projector_shared.SharedTail`) while this process holds
        the snapshots' lease, the query tables alone while another engine holds it."""
        from dagnats.runtime.projector_shared import SharedTail, builtin_targets

        assert self.engine is not None and self.connection is not None
        js = self.connection.js
        sqlite = self._sqlite_path()
        if self.nats is not None:  # our own data dir: the query tables (inputs in clear) 0600
            create_private_file(sqlite)
        targets = builtin_targets(js, sqlite, self.engine)  # (handed what the engine appends)
        return [asyncio.create_task(SharedTail(js, targets).run(stop))]

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
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
            self.admin = None
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None
        if self.nats is not None:
            await self.nats.stop()
            credentials.forget_local_server(self.url)
            self.nats = None
        written, self._written = self._written, {}
        if URL_FILE in written:  # only ours, and only while it still holds our URL
            remove_if_ours(self.data_dir / URL_FILE, written[URL_FILE])


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


async def _ensure_local_resources(js: JetStreamContext) -> None:
    """Every stream and bucket of one server, and the work queues' anchors (queue_anchor)."""
    await ensure_resources(js)
    await ensure_stream(js, external_events.stream_config())
    await ensure_anchors(js)


async def _admin_or_none(url: str, data_dir: Path) -> Connection | None:
    """Serve's admin connection for admission compaction's purges; None (snapshots appended,
    nothing purged) when this data dir holds no usable admin credential for that server."""
    try:
        return await Connection.open(url, role="admin", data_dir=data_dir)
    except DagnatsError as error:
        log.warning("admission compaction will not purge (no admin connection: %s)", error)
        return None
