"""A publish answered with an acknowledgement whose `error` nats-py cannot turn into an
`APIError` (no `code`, or a field its constructor does not take) fails that publish, as
`js.publish` would fail it, and leaves the connection reading: the answer is read in the
client's read loop (runtime/js_publish `_on_reply`), where an exception would end nats-py's
read loop (it logs and stops, with no reconnect) and leave the publish waiting forever (its
wait already taken out of those its timer fails). Against a real nats-server: a core
subscriber answering the publish stands in for a JetStream that answers oddly.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats
import nats.aio.client
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.runtime.js_publish import JetStreamPublisher
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from tests.nats_fixtures import unique

ACK_TIMEOUT_S = 1.0  # the publisher's own bound on a wait (the context's timeout)
WAIT_S = 10.0  # the test's bound: well past ACK_TIMEOUT_S, so a hang shows as such


@pytest.mark.parametrize(
    "error",
    [{"description": "no code"}, {"code": 400, "err_code": 1, "unknown_field": "x"}],
    ids=["no-code", "unknown-field"],
)
async def test_an_odd_error_answer_fails_the_publish_and_the_client_keeps_reading(
    js: JetStreamContext, error: dict[str, object]
) -> None:
    nc = js._nc
    publisher = JetStreamPublisher(nc.jetstream(timeout=ACK_TIMEOUT_S))
    subject = unique("odd-ack")

    async def answer(msg: Msg) -> None:
        await msg.respond(msgspec.json.encode({"error": error}))

    responder = await nc.subscribe(subject, cb=answer)
    try:
        waited = publisher.publish(subject, b"x", stream="S", headers={})
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(waited, WAIT_S)
        assert not isinstance(failed.value, TimeoutError), (
            f"the publish hung past its own {ACK_TIMEOUT_S}s bound: {failed.value!r}"
        )
        # The connection still reads: a real append is acknowledged.
        run_subject = history_subject(unique("run"))
        ack = await asyncio.wait_for(
            publisher.publish(run_subject, b"m", stream=HISTORY_STREAM, headers={}), WAIT_S
        )
        assert ack.stream == HISTORY_STREAM and ack.seq > 0
        assert publisher.pending() == 0
    finally:
        await responder.unsubscribe()


async def test_an_answer_to_a_subject_not_in_utf8_leaves_the_client_reading(
    js: JetStreamContext,
) -> None:
    """A message on the publisher's reply prefix whose last token is not UTF-8 (no publish's:
    any client may publish there) is passed over, not raised into the read loop."""
    nc = js._nc
    publisher = JetStreamPublisher(nc.jetstream(timeout=ACK_TIMEOUT_S))
    first = history_subject(unique("run"))
    started = publisher.publish(first, b"m", stream=HISTORY_STREAM, headers={})
    await asyncio.wait_for(started, WAIT_S)  # (the reply prefix exists from the first publish)
    prefix = publisher._prefix
    assert prefix is not None
    other = await nats_connect_like(nc)
    try:
        await other._send_command(b"PUB " + prefix.encode() + b"\xff\xfe 1\r\nx\r\n")
        await asyncio.wait_for(other.flush(), WAIT_S)
        run_subject = history_subject(unique("run"))
        ack = await asyncio.wait_for(
            publisher.publish(run_subject, b"m", stream=HISTORY_STREAM, headers={}), WAIT_S
        )
        assert ack.stream == HISTORY_STREAM and ack.seq > 0
    finally:
        await other.close()


async def nats_connect_like(nc: nats.aio.client.Client) -> nats.aio.client.Client:
    """A second plain connection to the server `nc` is connected to."""
    url = nc.connected_url
    assert url is not None
    return await nats.connect(f"nats://{url.hostname}:{url.port}")
