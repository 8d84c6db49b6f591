"""Fixtures and helpers for tests against a real nats-server (never a mock).

A session-wide `EmbeddedNats` child on a free loopback port with a temporary store, a
connected client per test, and `wait_for`: every wait in the tests polls a condition with a
deadline and fails with a message saying what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from dagnats.client import Client as DagnatsClient
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources

POLL_INTERVAL_S = 0.005


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_ms: int, what: str
) -> None:
    """Poll `predicate` until it is true; fail the test after timeout_ms saying `what`."""
    assert timeout_ms > 0
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def wait_for_sync(predicate: Callable[[], bool], *, timeout_ms: int, what: str) -> None:
    """`wait_for` for synchronous code."""
    assert timeout_ms > 0
    deadline = time.monotonic() + timeout_ms / 1000
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def unique(prefix: str) -> str:
    """A fresh id for one test (tests share the session's server and streams)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def connect(url: str) -> Client:
    """A client that fails fast instead of reconnecting for minutes."""
    return await nats.connect(
        url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False
    )


class RestartableServer:
    """A server of one test's own, restarted on the same port and store (`restart`), and a
    client that reconnects to it (`nc`, every DagNats resource in place)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.server = EmbeddedNats(store)
        self.port = 0
        self._nc: Client | None = None

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "start it first"
        return self._nc

    async def start(self) -> Client:
        await self.server.start()
        self.port = int(self.server.url.rsplit(":", 1)[1])
        self._nc = await nats.connect(
            self.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )
        await ensure_resources(self._nc.jetstream())
        return self._nc

    async def restart(self) -> None:
        """Stop the server, start it again on its port and store, and wait for the client."""
        await self.server.stop()
        self.server = EmbeddedNats(self.store, port=self.port)
        await self.server.start()
        await wait_for(lambda: self.nc.is_connected, timeout_ms=20_000, what="the reconnect")

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        await self.server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One embedded nats-server for the whole session, on a free port, temporary store."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    """A data dir for a test that runs its own server."""
    return tmp_path / "data"


@pytest_asyncio.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client connected to the session's server."""
    client = await connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def js(nc: Client) -> JetStreamContext:
    """The JetStream context of `nc`, with every DagNats stream and bucket in place."""
    context = nc.jetstream()
    await ensure_resources(context)
    return context


@pytest_asyncio.fixture
async def private_server(server_dir: Path) -> AsyncIterator[EmbeddedNats]:
    """A server of this test's own (for tests that restart it or need empty streams)."""
    server = EmbeddedNats(server_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def private_js(private_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """JetStream with every DagNats resource on this test's own server."""
    client = await connect(private_server.url)
    try:
        context = client.jetstream()
        await ensure_resources(context)
        yield context
    finally:
        await client.close()


@pytest_asyncio.fixture
async def private_client(private_server: EmbeddedNats) -> AsyncIterator[DagnatsClient]:
    """The public Client on this test's own server, every resource in place."""
    the_client = await DagnatsClient.connect(private_server.url)
    try:
        await ensure_resources(the_client.connection.js)
        yield the_client
    finally:
        await the_client.close()


@pytest_asyncio.fixture
async def connection(private_server: EmbeddedNats) -> AsyncIterator[Connection]:
    """A `Connection` (log, queues, timers) to this test's own server, every resource in
    place."""
    client = await connect(private_server.url)
    await ensure_resources(client.jetstream())
    opened = Connection(client)
    try:
        yield opened
    finally:
        await opened.close()
