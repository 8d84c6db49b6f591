"""A worker's long polls read raw (runtime/task_polls.py, `JetStreamTaskQueue.poll`), against
a real nats-server: a poll brings a task published while it waits, with its delivery fields
and headers; a poll that nothing answers ends empty within its time; what it brought is
settled as nats-py's `Msg` would be (an ack removes it, a nak brings it back as a second
delivery, a settled message refuses a second settlement, heartbeats do not settle); a
message that comes after its poll ended is kept for the next poll (given back with a nak
when the queue closes first), never lost; an error
status fails the poll; one poll at a time per task type; `on_end` is called once, as the
poll ends, however it ends.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from dagnats.runtime.queue import JetStreamTaskQueue
from dagnats.runtime.task_polls import RawTaskMessage, TaskPolls
from tests.nats_fixtures import unique, wait_for

WAIT_MS = 20_000
SHORT_MS = 200  # a poll nothing answers


def task_type() -> str:
    return unique("tests.poll").replace("-", "_")


async def polled(queue: JetStreamTaskQueue, kind: str) -> list[RawTaskMessage]:
    """What one poll of WAIT_MS brought, each a RawTaskMessage."""
    poll = await queue.poll(kind, timeout_ms=WAIT_MS)
    messages = await asyncio.wait_for(poll, WAIT_MS / 1000 + 5)
    assert all(isinstance(message, RawTaskMessage) for message in messages), messages
    return [message for message in messages if isinstance(message, RawTaskMessage)]


async def test_a_poll_brings_a_task_published_while_it_waits(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        ended: list[bool] = []
        poll = await queue.poll(kind, timeout_ms=WAIT_MS, on_end=lambda: ended.append(poll.done()))
        assert not poll.done() and ended == []
        await queue.publish(kind, b'{"n":1}', f"{kind}:s:1")
        [message] = await asyncio.wait_for(poll, WAIT_MS / 1000 + 5)
        assert ended == [True], "told once, as it ended"
        assert isinstance(message, RawTaskMessage)
        assert message.data == b'{"n":1}'
        assert message.subject.endswith(kind)
        assert message.num_delivered == 1 and message.num_pending == 0
        assert message.stream_seq > 0 and message.stored_ms > 0
        assert message.msg_id == f"{kind}:s:1"
        assert message.headers is not None and message.headers["Nats-Msg-Id"] == message.msg_id
        assert message.task_token is None, "this queue signs nothing"
        await message.ack()
        with pytest.raises(nats.errors.MsgAlreadyAckdError):
            await message.ack()
        nothing = await queue.poll(kind, timeout_ms=SHORT_MS)
        assert await asyncio.wait_for(nothing, WAIT_MS / 1000) == [], "the ack removed it"
    finally:
        await queue.close()


async def test_a_poll_nothing_answers_ends_empty_and_another_may_follow(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        ended: list[int] = []
        for index in range(3):  # (each ends by the server's 408 or, at the latest, its timer)
            poll = await queue.poll(kind, timeout_ms=SHORT_MS, on_end=lambda: ended.append(1))
            assert await asyncio.wait_for(poll, WAIT_MS / 1000) == []
            assert len(ended) == index + 1
        await queue.publish(kind, b"x", f"{kind}:s:1")
        [message] = await polled(queue, kind)
        assert message.data == b"x"
        await message.ack()
    finally:
        await queue.close()


async def test_a_nak_brings_the_task_back_and_a_heartbeat_does_not_settle_it(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        await queue.publish(kind, b"again", f"{kind}:s:1")
        [first] = await polled(queue, kind)
        await first.in_progress()
        await first.in_progress()
        await first.nak()
        with pytest.raises(nats.errors.MsgAlreadyAckdError):
            await first.term()
        [second] = await polled(queue, kind)
        assert second.data == b"again" and second.num_delivered == 2
        assert second.stream_seq == first.stream_seq
        await second.term()
    finally:
        await queue.close()


async def test_a_task_that_comes_after_its_poll_ended_is_kept_for_the_next_poll(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        poll = await queue.poll(kind, timeout_ms=WAIT_MS)
        polls = queue._polls[kind]
        polls._expire(poll)  # its timer ran out first (a loaded loop); the request is still out
        assert poll.done() and poll.result() == []
        await queue.publish(kind, b"late", f"{kind}:s:1")
        await wait_for(lambda: len(polls.left) == 1, timeout_ms=WAIT_MS, what="the late task")
        nats_client = js._nc
        requests_before = nats_client.stats["out_msgs"]
        ended: list[int] = []
        taken = await queue.poll(kind, timeout_ms=WAIT_MS, on_end=lambda: ended.append(1))
        assert taken.done() and ended == [1], "ended at once"
        [message] = taken.result()
        assert nats_client.stats["out_msgs"] == requests_before, "taken without a request"
        assert message.data == b"late" and polls.left == []
        await message.ack()
    finally:
        await queue.close()


async def test_an_error_status_fails_the_poll_and_one_poll_runs_at_a_time(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        ended: list[int] = []
        poll = await queue.poll(kind, timeout_ms=WAIT_MS, on_end=lambda: ended.append(1))
        polls = queue._polls[kind]
        with pytest.raises(AssertionError, match="one poll at a time"):
            await queue.poll(kind, timeout_ms=WAIT_MS)
        # What the server answers a request it refuses (say a bad request): the poll's error.
        await polls._on_message(polls.inbox.encode(), b"", b"", b"NATS/1.0 400 Bad Request\r\n\r\n")
        with pytest.raises(nats.js.errors.APIError) as refused:
            poll.result()
        assert refused.value.code == 400 and ended == [1]
    finally:
        await queue.close()


async def test_a_closed_inbox_leaves_the_router_and_the_poll_ends_at_its_time(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    poll = await queue.poll(kind, timeout_ms=SHORT_MS)
    polls: TaskPolls = queue._polls[kind]
    await queue.close()
    assert await asyncio.wait_for(poll, WAIT_MS / 1000) == []
    assert polls.inbox and queue._polls == {}


async def test_a_task_kept_for_a_next_poll_that_never_comes_is_given_back_at_close(
    js: JetStreamContext,
) -> None:
    long_ack_wait_ms = 3 * WAIT_MS  # it comes back within WAIT_MS only if given back
    queue = JetStreamTaskQueue(js, ack_wait_ms=long_ack_wait_ms)
    kind = task_type()
    poll = await queue.poll(kind, timeout_ms=WAIT_MS)
    polls = queue._polls[kind]
    polls._expire(poll)
    await queue.publish(kind, b"kept", f"{kind}:s:1")
    await wait_for(lambda: len(polls.left) == 1, timeout_ms=WAIT_MS, what="the late task")
    await queue.close()  # a nak: delivered again at once, not after the ack wait
    other = JetStreamTaskQueue(js, ack_wait_ms=long_ack_wait_ms)
    try:
        [message] = await polled(other, kind)
        assert message.data == b"kept" and message.num_delivered == 2
        await message.ack()
    finally:
        await other.close()
