"""One NATS connection and the JetStream parts built on it (log, queues, timers, KV).

The URL comes from the caller, else `$DAGNATS_NATS_URL`, else the file `nats.url` that a local
`dagnats serve` writes into its data dir (`$DAGNATS_DATA_DIR`, default `~/.dagnats`). A
connection whose URL came from that file reads it again whenever a reconnect attempt fails and
follows a new URL (a restarted serve whose old port was taken). Losing the server is logged
once, then summarised every `settings.outage_log_interval_ms`, and its recovery once.
Each connection has a role (runtime/roles) and authenticates with that role's credential
(runtime/credentials); its commands go out on the subjects of its role's kind. Each reads the
wire with runtime/wire_parser (nats-py's protocol semantics, less CPU a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime import credentials, settings
from dagnats.runtime.credentials import TlsFiles, default_approver_identity
from dagnats.runtime.inline_reads import install as install_inline_reads
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.partition_count import PartitionCount
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.resources import WORKFLOWS_BUCKET
from dagnats.runtime.roles import Role, command_kind_tokens
from dagnats.runtime.task_tokens import TaskTokens
from dagnats.runtime.timers import JetStreamTimers
from dagnats.runtime.wire_parser import install as install_wire_parser
from kernel.errors import DagnatsError

URL_ENV = "DAGNATS_NATS_URL"
DATA_DIR_ENV = "DAGNATS_DATA_DIR"
URL_FILE = "nats.url"
connect_timeout_s = 5.0
initial_connect_attempts_max = 1
first_connect_timeout_s = 15.0  # the whole first connect, whatever nats-py goes on trying
reconnect_wait_s = 0.1  # between reconnect attempts, after the first seconds of an outage
# The first `reconnect_fast_window_s` of an outage try every `reconnect_wait_fast_s`: a
# restarted serve is back within ~0.3 s, and a worker's result waits for its reconnect.
reconnect_wait_fast_s = 0.02
reconnect_fast_window_s = 2.0
log = logging.getLogger("dagnats.connection")
# Roles whose connections parse their reads where they arrive (runtime/inline_reads): a
# worker's tasks and acknowledgements, a client's history messages, one loop iteration sooner.
INLINE_READ_ROLES: Final = frozenset({"worker", "client", "approver"})
# Errors the client reports when it lost (or cannot reach) the server: part of an outage.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
)


class ConnectionWatch:
    """The client's callbacks: rate-limited outage lines, and following serve's URL file."""

    def __init__(self, url: str, url_file: Path | None) -> None:
        self.url = url
        self.url_file = url_file
        self.nc: NatsClient | None = None
        self.refused = ""  # the server's authorization error during the first connect
        self.tls_failed = ""  # a failed TLS handshake during the first connect
        self.verdict = asyncio.Event()  # set when the first connect cannot succeed
        self.outage = OutageLog(log, f"nats connection to {url}")
        self.down_since: float | None = None  # (monotonic) when the outage began

    def pace(self) -> None:
        """The wait between reconnect attempts for this moment of an outage (nats-py reads
        it before each attempt): short at first, `reconnect_wait_s` after the fast window."""
        nc = self.nc
        if nc is None:
            return  # the first connect keeps its own pace
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        fast = now - self.down_since < reconnect_fast_window_s
        nc.options["reconnect_time_wait"] = reconnect_wait_fast_s if fast else reconnect_wait_s

    def up(self) -> None:
        """Connected: the next outage begins with quick attempts."""
        self.down_since = None
        if self.nc is not None:
            self.nc.options["reconnect_time_wait"] = reconnect_wait_fast_s

    async def on_error(self, error: Exception) -> None:
        if "authorization" in str(error).lower() and self.nc is None:
            self.refused = str(error).strip() or "authorization violation"
            self.verdict.set()
            return  # reported once, by open()
        if isinstance(error, ssl.SSLError) and self.nc is None:
            self.tls_failed = str(error).strip() or type(error).__name__
            self.verdict.set()
            return  # reported once, by open()
        nc = self.nc
        lost = isinstance(error, CONNECTION_ERRORS) or nc is None or not nc.is_connected
        if not lost and not self.outage.down:
            log.warning("nats: %s", error or type(error).__name__)  # not about the connection
            return
        self.outage.failed(error or type(error).__name__)
        self.pace()
        self.follow_url_file()

    async def on_disconnected(self) -> None:
        if self.nc is None or not self.nc.is_closed:  # (a close of ours is no outage)
            self.outage.failed("disconnected")
            self.pace()

    async def on_reconnected(self) -> None:
        self.outage.recovered()
        self.up()

    def follow_url_file(self) -> None:
        """Reconnect to the URL serve wrote last, if it changed (serve got another port)."""
        nc = self.nc
        if self.url_file is None or nc is None or nc.is_closed:
            return
        try:
            url = self.url_file.read_text(encoding="utf-8").strip()
        except OSError:  # serve stopped and removed it, or is writing it: try next time
            return
        if not url or url == self.url:
            return
        log.warning("nats: %s now names %s (was %s); reconnecting there", self.url_file, url,
                    self.url)  # fmt: skip
        self.url = url
        self.outage.what = f"nats connection to {url}"
        nc.set_server_pool([url])


class ConnectError(DagnatsError):
    """The NATS server could not be reached (or none was named); `known`: the server said
    why (a refused credential, a failed TLS handshake), so no more probing tells more."""

    def __init__(self, message: str, hint: str, *, known: bool = False) -> None:
        self.hint = hint
        self.known = known
        super().__init__(message)


def default_data_dir() -> Path:
    """`$DAGNATS_DATA_DIR`, or `~/.dagnats`."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".dagnats")


def resolve_url(url: str | None) -> str:
    """The NATS URL to use: the argument, the environment, or the local serve's URL file."""
    return resolve_url_source(url)[0]


def resolve_url_source(url: str | None) -> tuple[str, Path | None]:
    """The NATS URL to use, and the URL file it came from (None: the argument or env).

    Raises:
        ConnectError: no URL was given and no local serve wrote one.
    """
    if url:
        return url, None
    from_env = os.environ.get(URL_ENV)
    if from_env:
        return from_env, None
    url_file = default_data_dir() / URL_FILE
    with contextlib.suppress(OSError):
        found = url_file.read_text(encoding="utf-8").strip()
        if found:
            return found, url_file
    raise ConnectError(
        "no NATS server to connect to",
        f"start one with `dagnats serve`, or pass --nats-url / set {URL_ENV}",
    )


class Connection:
    """A connected NATS client with the DagNats JetStream implementations on top."""

    def __init__(
        self, nc: NatsClient, *, task_ack_wait_ms: int | None = None,
        role: Role = "engine", identity: str = "", task_secret: str = "", user: str = "",
    ) -> None:  # fmt: skip
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        if role == "approver" and not identity:  # no credential (an open external NATS)
            identity = default_approver_identity()
        self.role: Role = role
        self.identity = identity  # an approver's name: the `by` of its decisions
        self.history = JetStreamEventLog(self.js)
        # One read of the deployment's partition count, shared by commands and timers.
        self.partitions = PartitionCount(self.js)
        self.commands = JetStreamCommandQueue(
            self.js, partitions=self.partitions, kind=command_kind_tokens(role, identity)
        )
        # An engine signs the tasks it publishes and checks results against them (its
        # credential's password is the secret: runtime/task_tokens).
        tokens = TaskTokens(task_secret) if task_secret else None
        self.tasks = (
            JetStreamTaskQueue(self.js, ack_wait_ms=task_ack_wait_ms, tokens=tokens)
            if task_ack_wait_ms is not None
            else JetStreamTaskQueue(self.js, tokens=tokens)
        )
        self.tasks.directory_user = user  # a worker's entries go under it (workers_directory)
        self.timers = JetStreamTimers(self.js, partitions=self.partitions)
        self._workflows: KeyValue | None = None

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        task_ack_wait_ms: int | None = None,
        role: Role = "client",
        creds: Path | None = None,
        tls: TlsFiles | None = None,
        data_dir: Path | None = None,
    ) -> Connection:
        """Connect to `url` (see `resolve_url`) in `role`, with the credential `creds` (else
        `$DAGNATS_CREDS`, the URL's user and password, or the role's file in the data dir of
        a local serve: runtime/credentials.connect_options) and client TLS `tls` (else the
        `$DAGNATS_TLS_*` files). A credential file's own role wins over `role`.

        Raises:
            ConnectError: the server cannot be reached, or refused the credential.
            CredentialError: a credential or TLS file cannot be used.
        """
        target, url_file = resolve_url_source(url)
        local = credentials.local_data_dir(target, url_file, default_data_dir())
        chosen = credentials.first_with_credential(role, data_dir, local)
        options = credentials.connect_options(
            target, role=role, data_dir=chosen, creds=creds, tls=tls
        )
        credential = options.pop("credential", None)
        task_secret, user = "", ""
        if isinstance(credential, credentials.Credential):
            role, identity, user = credential.role, credential.identity, credential.user
            task_secret = credential.password if role == "engine" else ""
        else:
            identity = ""
        watch = ConnectionWatch(target, url_file)
        nc = await _first_connect(target, options, watch, inline=role in INLINE_READ_ROLES)
        # Once connected, ride out server restarts: reconnect without a bound on attempts.
        nc.options["max_reconnect_attempts"] = -1
        watch.nc = nc
        watch.up()
        return cls(nc, task_ack_wait_ms=task_ack_wait_ms, role=role, identity=identity,
                   task_secret=task_secret, user=user)  # fmt: skip

    async def close(self) -> None:
        """Unsubscribe the queues and flush, within `settings.connection_close_timeout_ms`,
        then close (which writes what is still pending); with the server away (reconnecting),
        just close. No drain: every publish was acknowledged by its caller already, and a pull
        subscription whose `next_msg` lost a race with its timeout never drains (its queue
        counts a message nobody took), so a drain waited out the whole timeout now and then."""
        timeout_s = settings.connection_close_timeout_ms / 1000
        if self.nc.is_connected:
            for part in (self.tasks, self.commands):
                try:
                    await asyncio.wait_for(part.close(), timeout=timeout_s)
                except (nats.errors.Error, OSError, TimeoutError) as error:
                    log.info("nats: unsubscribing at close failed: %s", error)
            try:
                await self.nc.flush(timeout=max(1, int(timeout_s)))
            except (nats.errors.Error, OSError, TimeoutError) as error:
                log.info("nats: flushing at close failed (%s); closing", error)
        if not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await asyncio.wait_for(self.nc.close(), timeout=timeout_s)

    async def workflows(self) -> KeyValue:
        """The workflow definitions bucket."""
        if self._workflows is None:
            self._workflows = await self.js.key_value(WORKFLOWS_BUCKET)
        return self._workflows

def _keep_reading_after_cancelled_flush(nc: NatsClient) -> None:
    """nats-py 2.16's `_process_pong` sets the result of the oldest flush's future, which a
    flush whose wait timed out or was cancelled left there cancelled: the `InvalidStateError`
    ended the client's read loop, and the connection read nothing more, silently, until its
    pings called it stale (an engine's commands and acks stalled meanwhile). The PONG answers
    that flush's PING all the same: it is counted, and a future already done passed over."""

    async def process_pong() -> None:
        if nc._pongs:
            future = nc._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            nc._pongs_received += 1
            nc._pings_outstanding = 0

    nc._process_pong = process_pong  # type: ignore[method-assign]


async def _first_connect(
    target: str, options: dict[str, Any], watch: ConnectionWatch, *, inline: bool = False
) -> NatsClient:
    """The first connection, bounded: a refused credential or a failed TLS handshake ends it
    at once with its own line (nats-py would go on trying), anything else within
    `first_connect_timeout_s`. `inline`: its reads parsed where they arrive
    (runtime/inline_reads).

    Raises:
        ConnectError: one readable line and a hint.
    """
    nc = NatsClient()
    if install_wire_parser(nc) and inline:  # (nats-py's semantics, less CPU: wire_parser)
        install_inline_reads(nc)
    _keep_reading_after_cancelled_flush(nc)
    settings_: dict[str, Any] = dict(
        options, connect_timeout=connect_timeout_s,
        max_reconnect_attempts=initial_connect_attempts_max, allow_reconnect=True,
        error_cb=watch.on_error, disconnected_cb=watch.on_disconnected,
        reconnected_cb=watch.on_reconnected, reconnect_time_wait=reconnect_wait_s,
    )  # fmt: skip
    servers = [part.strip() for part in target.split(",") if part.strip()]  # a cluster's URLs
    connecting = asyncio.ensure_future(nc.connect(servers, **settings_))
    verdict = asyncio.ensure_future(watch.verdict.wait())
    try:
        await asyncio.wait({connecting, verdict}, timeout=first_connect_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        verdict.cancel()
    error: BaseException | None = None
    if connecting.done() and not connecting.cancelled():
        error = connecting.exception()
        if error is None:
            return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()
    if watch.refused:
        raise ConnectError(
            f"NATS at {target} refused the credential: {watch.refused}",
            "pass the right --creds (or $DAGNATS_CREDS, or --data-dir of the serve)",
            known=True,
        )
    if watch.tls_failed:
        raise ConnectError(
            f"TLS with NATS at {target} failed: {watch.tls_failed}",
            "pass --tls-ca (or $DAGNATS_TLS_CA) with the CA that signed the server's certificate",
            known=True,
        )
    reason = str(error) if error else f"no answer within {first_connect_timeout_s:g} s"
    raise ConnectError(
        f"cannot connect to NATS at {target}: {reason or type(error).__name__}",
        "is `dagnats serve` running? check --nats-url",
    )
