"""The engine's per-command path made cheaper keeps its answers: effects bounded first come
first served by plain calls (the worker's `HandlerSlots`, which the engine counts its effects
with), a header read alone from a raw block as the whole block's parse reads it
(`header_of`), a task token the same HMAC as before, and a publish written by a plain call
(`send_raw`) the very bytes `publish_raw` writes, with nats-py's flusher woken once for what
one loop iteration buffers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from dagnats.runtime.js_publish import header_block, publish_raw, send_raw
from dagnats.runtime.task_polls import header_lines, header_of
from dagnats.runtime.task_tokens import TaskTokens
from dagnats.worker_slots import HandlerSlots as EffectSlots

WAIT_S = 10.0


async def test_slots_bound_the_effects_and_hand_freed_ones_to_the_oldest_wait() -> None:
    slots = EffectSlots(2)
    assert slots.take_now() and slots.take_now() and not slots.take_now()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.take()
        order.append(name)

    first, second = asyncio.create_task(wait("first")), asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert order == [] and slots.free == 0
    slots.give()
    await asyncio.wait_for(first, WAIT_S)
    assert order == ["first"] and not second.done()
    assert not slots.take_now(), "a wait comes before a plain take"
    slots.give()
    await asyncio.wait_for(second, WAIT_S)
    slots.give()
    slots.give()
    assert slots.free == 2 and slots.take_now()


async def test_a_cancelled_wait_leaves_its_slot_to_the_next_one() -> None:
    slots = EffectSlots(1)
    assert slots.take_now()
    cancelled = asyncio.create_task(slots.take())
    waiting = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # (handed to the first wait, cancelled before it resumes)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(waiting, WAIT_S)
    assert slots.free == 0
    slots.give()
    assert slots.free == 1


async def test_a_wait_cancelled_before_its_turn_is_skipped() -> None:
    slots = EffectSlots(1)
    assert slots.take_now()
    gone = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.give()
    assert slots.free == 1 and slots.take_now()


header_names = st.sampled_from(
    ["Dagnats-Task-Token", "Nats-Scheduler", "Nats-Msg-Id", " Dagnats-Task-Token ", "Bad Name",
     "X-Dagnats-Task-Token", "Dagnats-Task-Token-2", "traceparent", ""]
)  # fmt: skip
header_values = st.text(alphabet="ab:- \t\u00e9Dagnats-Task-Token", max_size=24)
header_blocks = st.lists(
    st.tuples(header_names, st.sampled_from([": ", ":", " : ", ""]), header_values), max_size=5
)


@given(header_blocks, st.booleans())
def test_a_header_read_alone_is_what_the_whole_block_gives(
    lines: list[tuple[str, str, str]], ended: bool
) -> None:
    text = "".join(f"\r\n{name}{colon}{value}" for name, colon, value in lines)
    raw = (text + ("\r\n\r\n" if ended else "")).encode()
    for name in ("Dagnats-Task-Token", "Nats-Scheduler"):
        assert header_of(raw, name) == header_lines(raw).get(name), (raw, name)


def test_a_token_is_the_hmac_sha256_of_the_attempt_key_under_the_derived_key() -> None:
    """Workers hold tokens an engine signed: a new engine must sign them alike."""
    key = hashlib.sha256(b"dagnats task tokens v1\x00" + b"a secret").digest()
    tokens = TaskTokens("a secret")
    for msg_id in ("run-1:a:1~0000beef", "run-2:step-b:7"):
        attempt_key = msg_id.partition("~")[0]
        expected = hmac.new(key, attempt_key.encode(), hashlib.sha256).hexdigest()[:32]
        assert tokens.sign(msg_id) == expected
        assert TaskTokens("a secret").sign(attempt_key) == expected


def buffered_client() -> Client:
    """A client never connected: a publish stays in its pending buffer (no flusher)."""
    client = Client()
    client._max_pending_size = 1 << 20
    return client


async def test_send_raw_buffers_the_bytes_publish_raw_writes() -> None:
    theirs, ours = buffered_client(), buffered_client()
    head = header_block({"Nats-Msg-Id": "r:1:ab", "Nats-Expected-Stream": "S"})
    await publish_raw(theirs, "dagnats.history.r", "_INBOX.x.1", b"{}", head)
    assert send_raw(ours, "dagnats.history.r", "_INBOX.x.1", b"{}", head) is None
    assert ours._pending == theirs._pending and ours.stats == theirs.stats


async def test_send_raw_wakes_a_connected_clients_flusher_once_per_empty_queue() -> None:
    client = buffered_client()
    client._flush_queue = asyncio.Queue(maxsize=8)
    client._status = Client.CONNECTED
    flusher = asyncio.create_task(asyncio.Event().wait())  # (a live flusher: never done)
    client._flusher_task = flusher
    client.__dict__["_dagnats_busy"] = True  # (a busy client: its publishes are buffered)
    for index in range(3):
        assert send_raw(client, "s", "", b"%d" % index) is None
    assert client._pending == [b"PUB s 1\r\n0\r\n", b"PUB s 1\r\n1\r\n", b"PUB s 1\r\n2\r\n"]
    assert client._flush_queue.qsize() == 1, "one wake for what waits in the buffer"
    flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flusher
    rest = send_raw(client, "s", "", b"x")  # (the flusher's queue holds one: no new wake)
    assert rest is None and client._flush_queue.qsize() == 1
    client._flush_queue.get_nowait()
    rest = send_raw(client, "s", "", b"y")  # a flusher gone: nats-py's inline flush, awaited
    assert rest is not None
    rest.close()
