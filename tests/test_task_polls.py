"""A worker's standing pull read raw (runtime/task_polls.py, `JetStreamTaskQueue.standing_pull`),
against a real nats-server: one request brings several tasks published one after the other,
with their delivery fields and headers, and is counted on the wire once; what it brought is
settled as nats-py's `Msg` would be (an ack removes it, a nak brings it back as a second
delivery, a settled message refuses a second settlement, heartbeats do not settle); a 408
ends the oldest request and wakes the loop; an error status forgets the requests and is kept
as the pull's error; a reconnect forgets them and wakes the loop; a closed pull's requests
are dropped by the server (a task published after goes to another worker, delivered once)
and what it brought and nobody took is returned (given back with a nak by the queue's close);
two pulls of one type on one queue each have their own inbox and credit.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.runtime import task_polls
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamTaskQueue
from dagnats.runtime.task_polls import RawTaskMessage, StandingPull
from tests.nats_fixtures import connect, unique, wait_for

WAIT_MS = 20_000
CREDIT = 4


def task_type() -> str:
    return unique("tests.pull").replace("-", "_")


class Wakes:
    """Counts `on_change` calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def taken(pull: StandingPull, count: int) -> list[RawTaskMessage]:
    """The next `count` messages the pull brings, each a RawTaskMessage."""
    messages: list[RawTaskMessage] = []

    def arrived() -> bool:
        for message in pull.take()[0]:
            assert isinstance(message, RawTaskMessage), message
            messages.append(message)
        return len(messages) >= count

    await wait_for(arrived, timeout_ms=WAIT_MS, what=f"{count} message(s)")
    assert len(messages) == count, messages
    return messages


class Requests:
    """Pull requests on the wire, seen from a second connection."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[bytes] = []

    async def _on(self, message: Msg) -> None:
        self.seen.append(message.data)

    @classmethod
    async def spy(cls, url: str) -> Requests:
        requests = cls(await connect(url))
        await requests.client.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=requests._on)
        await requests.client.flush()
        return requests


async def test_one_request_brings_tasks_published_one_after_the_other(
    js: JetStreamContext, nats_server: EmbeddedNats
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    spy = await Requests.spy(nats_server.url)
    wakes = Wakes()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=wakes)
        assert pull.wanted(0.0, 1_000) == CREDIT
        await pull.ask(CREDIT)
        assert pull.credit.pending == CREDIT and pull.requests == 1
        for index in range(CREDIT - 1):
            await queue.publish(kind, b'{"n":%d}' % index, f"{kind}:s:{index}")
            [message] = await taken(pull, 1)
            assert message.data == b'{"n":%d}' % index
            assert message.subject.endswith(kind)
            assert message.num_delivered == 1 and message.num_pending == 0
            assert message.stream_seq > 0 and message.stored_ms > 0
            assert message.msg_id == f"{kind}:s:{index}"
            assert message.headers is not None
            assert message.headers["Nats-Msg-Id"] == message.msg_id
            assert message.task_token is None, "this queue signs nothing"
            await message.ack()
            with pytest.raises(nats.errors.MsgAlreadyAckdError):
                await message.ack()
        assert wakes.count == CREDIT - 1, "woken once per message"
        assert pull.credit.pending == 1
        await js._nc.flush()
        await spy.client.flush()
        assert len(spy.seen) == 1, spy.seen  # one request for the three tasks
        assert b'"batch":4' in spy.seen[0] and b"no_wait" not in spy.seen[0]
    finally:
        await queue.close()
        await spy.client.close()


async def test_a_nak_brings_the_task_back_and_a_heartbeat_does_not_settle_it(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=Wakes())
        await pull.ask(CREDIT)
        await queue.publish(kind, b"again", f"{kind}:s:1")
        [first] = await taken(pull, 1)
        await first.in_progress()
        await first.in_progress()
        await first.nak()
        with pytest.raises(nats.errors.MsgAlreadyAckdError):
            await first.term()
        [second] = await taken(pull, 1)  # (the same request brings it again)
        assert second.data == b"again" and second.num_delivered == 2
        assert second.stream_seq == first.stream_seq
        await second.term()
        assert pull.credit.pending == CREDIT - 2
    finally:
        await queue.close()


async def test_a_request_that_expires_ends_with_a_408_that_wakes_the_loop(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_polls, "pull_expires_ms", 200)
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    wakes = Wakes()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=wakes)
        await pull.ask(2)
        await pull.ask(1)
        assert pull.credit.pending == 3
        await wait_for(lambda: wakes.count == 2, timeout_ms=WAIT_MS, what="two 408s")
        assert pull.credit.pending == 0 and pull.take() == ([], None), "no error: an end"
        await pull.ask(1)
        await queue.publish(kind, b"x", f"{kind}:s:1")
        [message] = await taken(pull, 1)
        await message.ack()
    finally:
        await queue.close()


async def test_an_error_status_forgets_the_requests_and_is_the_pulls_error(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    wakes = Wakes()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=wakes)
        await pull.ask(CREDIT)
        heartbeat = b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"
        await pull._on_message(pull.inbox.encode(), b"", b"", heartbeat)
        assert wakes.count == 0 and pull.credit.pending == CREDIT, "a heartbeat is nothing"
        # What the server answers a request it refuses (say a bad request): the pull's error.
        refused = b"NATS/1.0 400 Bad Request\r\n\r\n"
        await pull._on_message(pull.inbox.encode(), b"", b"", refused)
        assert wakes.count == 1 and pull.credit.pending == 0
        messages, error = pull.take()
        assert messages == [] and isinstance(error, nats.js.errors.APIError)
        assert error.code == 400
        assert pull.take() == ([], None), "taken once"
    finally:
        await queue.close()


async def test_a_reconnect_forgets_the_requests_and_a_disconnect_stops_the_asking(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    wakes = Wakes()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=wakes)
        await pull.ask(CREDIT)
        pull.connection_lost()
        assert pull.wanted(0.0, 1_000) == 0, "nothing asked while disconnected"
        pull.connection_back()
        assert wakes.count == 1 and pull.credit.pending == 0
        assert pull.wanted(0.0, 1_000) == CREDIT
    finally:
        await queue.close()


async def test_a_closed_pulls_requests_are_dropped_and_what_it_brought_is_given_back(
    js: JetStreamContext,
) -> None:
    long_ack_wait_ms = 3 * WAIT_MS  # a task comes back within WAIT_MS only if given back
    queue = JetStreamTaskQueue(js, ack_wait_ms=long_ack_wait_ms)
    other = JetStreamTaskQueue(js, ack_wait_ms=long_ack_wait_ms)
    kind = task_type()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=Wakes())
        await pull.ask(CREDIT)
        await queue.publish(kind, b"kept", f"{kind}:s:1")
        await wait_for(lambda: len(pull.arrived) == 1, timeout_ms=WAIT_MS, what="the task")
        await queue.close()  # nobody took it: a nak, delivered again at once
        assert pull.closed and queue._pulls == []
        assert pull.inbox and pull._inbox is None
        await queue.publish(kind, b"after", f"{kind}:s:2")
        taker = await other.standing_pull(kind, credit_max=CREDIT, on_change=Wakes())
        await taker.ask(CREDIT)
        messages = sorted(await taken(taker, 2), key=lambda message: message.stream_seq)
        assert [message.data for message in messages] == [b"kept", b"after"]
        assert [message.num_delivered for message in messages] == [2, 1], (
            "the closed pull's request took nothing more"
        )
        for message in messages:
            await message.ack()
        assert pull.arrived == [] and await pull.close() == []
    finally:
        await other.close()


async def test_a_pull_asks_nothing_once_closed_and_two_pulls_share_a_type(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    try:
        pull = await queue.standing_pull(kind, credit_max=CREDIT, on_change=Wakes())
        assert await pull.close() == []
        assert pull.wanted(0.0, 1_000) == 0
        with pytest.raises(AssertionError, match="closed"):
            await pull.ask(1)
        first = await queue.standing_pull(kind, credit_max=1, on_change=Wakes())
        second = await queue.standing_pull(kind, credit_max=1, on_change=Wakes())
        assert queue._pulls == [first, second], "the closed one is forgotten"
        await first.ask(1)
        await second.ask(1)
        for index in range(2):
            await queue.publish(kind, b"%d" % index, f"{kind}:s:{index}")
        [one] = await taken(first, 1)
        [other] = await taken(second, 1)
        assert {one.data, other.data} == {b"0", b"1"}, "each its own inbox and credit"
        for message in (one, other):
            await message.ack()
    finally:
        await queue.close()

