"""A JetStream publish waiting for its acknowledgement when the connection is lost fails at
the reconnect (dagnats/runtime/js_publish.py `AckLostError`), so its caller sends it again at
once; a publish made during the outage keeps waiting. Against a real nats-server: a core
subscriber that never answers stands in for an acknowledgement lost with a server, and the
client's own disconnected/reconnected callbacks (the ones nats-py calls) are driven here; the
real kill-and-restart is tests/test_reconnect_resend.py."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from dagnats.runtime.js_publish import AckLostError, JetStreamPublisher
from dagnats.runtime.nats_server import EmbeddedNats
from tests.nats_fixtures import unique

SETTLE_TURNS = 5  # loop turns for a failed wait's task to finish (it takes one)


async def lose(nc: NatsClient) -> None:
    """What nats-py calls when the connection is lost."""
    assert nc._disconnected_cb is not None, "the publisher chained itself in"
    await nc._disconnected_cb()


async def regain(nc: NatsClient) -> None:
    """What nats-py calls once reconnected (its pending buffer flushed)."""
    assert nc._reconnected_cb is not None, "the publisher chained itself in"
    await nc._reconnected_cb()


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


async def test_a_wait_at_the_disconnect_fails_at_the_reconnect_after_the_old_callbacks(
    nats_server: EmbeddedNats,
) -> None:
    seen: list[str] = []

    async def disconnected() -> None:
        seen.append("disconnected")

    async def reconnected() -> None:
        seen.append("reconnected")

    nc = await nats.connect(
        nats_server.url, disconnected_cb=disconnected, reconnected_cb=reconnected
    )
    try:
        subject = unique("silent")
        await nc.subscribe(subject)  # interest, so no 503: an acknowledgement never comes
        js = nc.jetstream(timeout=120.0)
        publisher = JetStreamPublisher(js)
        before = asyncio.ensure_future(publisher.publish(subject, b"a", stream="S", headers={}))
        await settle()
        assert publisher.pending() == 1
        await lose(nc)
        during = asyncio.ensure_future(publisher.publish(subject, b"b", stream="S", headers={}))
        await settle()
        assert not before.done(), "a lost acknowledgement is known only at the reconnect"
        await regain(nc)
        await settle()
        assert seen == ["disconnected", "reconnected"], "the client's own callbacks still run"
        with pytest.raises(AckLostError) as lost:
            await before
        assert isinstance(lost.value, nats.errors.TimeoutError), "callers treat it as one"
        assert "connection was lost" in str(lost.value)
        assert publisher.acks_lost == 1
        assert not during.done(), "a publish made in the outage keeps waiting for its ack"
        during.cancel()
        with pytest.raises(asyncio.CancelledError):
            await during
        assert publisher.pending() == 0
    finally:
        await nc.close()


async def test_every_publisher_of_a_client_is_told_and_a_second_outage_cuts_again(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        subject = unique("silent")
        await nc.subscribe(subject)
        js = nc.jetstream(timeout=120.0)
        publishers = [JetStreamPublisher(js), JetStreamPublisher(js)]
        for round_ in range(2):
            waits = [
                asyncio.ensure_future(p.publish(subject, b"x", stream="S", headers={}))
                for p in publishers
            ]
            await settle()
            await lose(nc)
            await regain(nc)
            for wait in waits:
                with pytest.raises(AckLostError):
                    await wait
            assert [p.acks_lost for p in publishers] == [round_ + 1] * 2
    finally:
        await nc.close()
