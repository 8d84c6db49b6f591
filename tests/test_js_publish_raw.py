"""`publish_raw` writes the very bytes nats-py's `Client.publish` writes, and refuses what it
refuses (runtime/js_publish): compared on a client's pending buffer, with no server (the
publish path up to the socket is all that differs; tests/test_js_publish runs it against a
real nats-server)."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.client import Client

from dagnats.runtime.js_publish import header_block, publish_raw

HEADER_SETS: list[dict[str, str]] = [
    {"Nats-Msg-Id": "run-1:4:0a1b2c", "Nats-Expected-Last-Subject-Sequence": "4"},
    {"Nats-Msg-Id": "run-1:s:1", "Dagnats-Task-Token": "ab12", "traceparent": "00-ab-cd-01"},
    {"Dagnats-Dead-Reason": " a reason\r\nwith a break \n"},  # nats-py: spaces, stripped
    {"Nats-Msg-Id": "  padded\t", "Nats-Expected-Last-Subject-Sequence": "\t7 "},  # stripped
    {},
]


def buffered_client() -> Client:
    """A client never connected: a publish stays in its pending buffer (no flusher)."""
    client = Client()
    client._max_pending_size = 1 << 20
    assert client._flush_queue is None and not client.is_connected
    return client


@pytest.mark.parametrize("headers", HEADER_SETS)
async def test_a_publish_with_headers_writes_the_bytes_nats_py_writes(
    headers: dict[str, str],
) -> None:
    theirs, ours = buffered_client(), buffered_client()
    headers = {**headers, "Nats-Expected-Stream": "DAGNATS_HISTORY"}
    await theirs.publish("dagnats.history.run-1", b'{"a":1}', reply="_INBOX.x.7", headers=headers)
    await publish_raw(
        ours, "dagnats.history.run-1", "_INBOX.x.7", b'{"a":1}', header_block(headers)
    )
    assert ours._pending == theirs._pending, (ours._pending, theirs._pending)
    assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 1
    assert ours.stats["out_bytes"] == theirs.stats["out_bytes"] == 7
    assert ours._pending_data_size == theirs._pending_data_size


async def test_an_ack_is_one_pub_line_with_no_reply() -> None:
    client = buffered_client()
    await publish_raw(client, "$JS.ACK.S.C.1.2.3.4.5", "", b"+ACK")
    assert client._pending == [b"PUB $JS.ACK.S.C.1.2.3.4.5 4\r\n+ACK\r\n"]


async def test_it_refuses_what_client_publish_refuses() -> None:
    client = buffered_client()
    for subject in ("", "a b", "a\r\nPUB x 1"):
        with pytest.raises(nats.errors.BadSubjectError):
            await publish_raw(client, subject, "", b"x")
    client._max_pending_size = client._max_payload * 4  # (room to buffer it: too big a message)
    with pytest.raises(nats.errors.MaxPayloadError):
        await publish_raw(client, "a", "", b"x" * (client._max_payload + 1))
    client._max_pending_size = 0  # (no buffering while disconnected)
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        await publish_raw(client, "a", "", b"x")
    client._status = Client.CLOSED
    with pytest.raises(nats.errors.ConnectionClosedError):
        await publish_raw(client, "a", "", b"x")
    assert client._pending == [], client._pending  # nothing refused was written
