"""One NATS connection and the JetStream parts built on it (log, queues, timers, KV).

The URL comes from the caller, else `$DAGNATS_NATS_URL`, else the file `nats.url` that a local
`dagnats serve` writes into its data dir (`$DAGNATS_DATA_DIR`, default `~/.dagnats`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.resources import HISTORY_STREAM, WORKFLOWS_BUCKET, history_subject
from dagnats.runtime.timers import JetStreamTimers
from kernel.errors import DagnatsError

URL_ENV = "DAGNATS_NATS_URL"
DATA_DIR_ENV = "DAGNATS_DATA_DIR"
URL_FILE = "nats.url"
connect_timeout_s = 5.0
initial_connect_attempts_max = 1
reconnect_wait_s = 0.1  # between reconnect attempts: a restarted server is back in ~0.2 s
log = logging.getLogger("dagnats.connection")


async def _log_error(error: Exception) -> None:
    log.warning("nats: %s", error or type(error).__name__)


async def _log_disconnected() -> None:
    log.info("nats: disconnected")


async def _log_reconnected() -> None:
    log.info("nats: reconnected")


class ConnectError(DagnatsError):
    """The NATS server could not be reached (or none was named)."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


def default_data_dir() -> Path:
    """`$DAGNATS_DATA_DIR`, or `~/.dagnats`."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".dagnats")


def resolve_url(url: str | None) -> str:
    """The NATS URL to use: the argument, the environment, or the local serve's URL file."""
    if url:
        return url
    from_env = os.environ.get(URL_ENV)
    if from_env:
        return from_env
    url_file = default_data_dir() / URL_FILE
    if url_file.exists():
        return url_file.read_text().strip()
    raise ConnectError(
        "no NATS server to connect to",
        f"start one with `dagnats serve`, or pass --nats-url / set {URL_ENV}",
    )


class Connection:
    """A connected NATS client with the DagNats JetStream implementations on top."""

    def __init__(self, nc: NatsClient, *, task_ack_wait_ms: int | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.history = JetStreamEventLog(self.js)
        self.commands = JetStreamCommandQueue(self.js)
        self.tasks = (
            JetStreamTaskQueue(self.js, ack_wait_ms=task_ack_wait_ms)
            if task_ack_wait_ms is not None
            else JetStreamTaskQueue(self.js)
        )
        self.timers = JetStreamTimers(self.js)
        self._workflows: KeyValue | None = None

    @classmethod
    async def open(
        cls, url: str | None = None, *, task_ack_wait_ms: int | None = None
    ) -> Connection:
        """Connect to `url` (see `resolve_url`).

        Raises:
            ConnectError: the server cannot be reached.
        """
        target = resolve_url(url)
        try:
            nc = await nats.connect(
                target,
                connect_timeout=connect_timeout_s,
                max_reconnect_attempts=initial_connect_attempts_max,
                allow_reconnect=True,
                error_cb=_log_error,
                disconnected_cb=_log_disconnected,
                reconnected_cb=_log_reconnected,
                reconnect_time_wait=reconnect_wait_s,
            )
        except (OSError, nats.errors.Error, TimeoutError) as error:
            raise ConnectError(
                f"cannot connect to NATS at {target}: {error or type(error).__name__}",
                "is `dagnats serve` running? check --nats-url",
            ) from None
        # Once connected, ride out server restarts: reconnect without a bound on attempts.
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, task_ack_wait_ms=task_ack_wait_ms)

    async def close(self) -> None:
        await self.tasks.close()
        await self.commands.close()
        if not self.nc.is_closed:
            await self.nc.drain()

    async def workflows(self) -> KeyValue:
        """The workflow definitions bucket."""
        if self._workflows is None:
            self._workflows = await self.js.key_value(WORKFLOWS_BUCKET)
        return self._workflows

    async def watch_history(
        self, run_id: str, *, after_seq: int, deadline: float
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """History messages of one run with seq > after_seq, live, until the monotonic
        `deadline` passes."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
        )
        subscription = await self.js.subscribe(
            history_subject(run_id), stream=HISTORY_STREAM, ordered_consumer=True, config=config
        )
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    message = await subscription.next_msg(timeout=remaining)
                except (nats.errors.TimeoutError, TimeoutError):
                    return
                yield message.metadata.sequence.stream, message.data
        finally:
            await subscription.unsubscribe()
