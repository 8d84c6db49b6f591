"""Closing a connection never waits on a subscription that cannot drain: nats-py's `next_msg`
can lose a race with its own timeout and take a message from the queue without marking it
done, and a drain of that subscription then waited out the whole close timeout (serve's stop
took 5 s now and then)."""

from __future__ import annotations

import asyncio

import pytest

from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from tests.nats_fixtures import unique, wait_for


async def test_close_does_not_wait_on_a_subscription_that_never_drains(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "connection_close_timeout_ms", 120_000)
    connection = await Connection.open(nats_server.url)
    subject = unique("stuck")
    subscription = await connection.nc.subscribe(subject)  # no callback: next_msg reads it
    await connection.nc.publish(subject, b"x")
    await connection.nc.flush()
    queue = subscription._pending_queue
    await wait_for(lambda: queue.qsize() == 1, timeout_ms=10_000, what="the message to arrive")
    queue.get_nowait()  # taken, never marked done: what a next_msg that lost its race leaves
    await asyncio.wait_for(connection.close(), timeout=20)
    assert connection.nc.is_closed
