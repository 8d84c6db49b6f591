"""Bounded reads of one run's history: a lean push consumer.

A read makes an ephemeral push consumer of the run's subject from a start sequence (no acks,
flow control, idle heartbeats, in memory, one replica) delivering to the reader's inbox, and
deletes it at the end. It is what nats-py's ordered consumer does, without nats-py's per
message work: the messages of a reader's inbox reach it before nats-py parses their headers
(a `Msg`, a header dict and the ordered consumer's checks per message cost about as much as
the decode and fold of the message together). A per-connection router hands them over by
subscription id and passes every other message to nats-py unchanged.

Per message the reader reads the reply subject only (`$JS.ACK.<stream>.<consumer>.<delivered>.
<stream seq>.<consumer seq>.<ts>.<pending>`): the stream sequence, the consumer sequence (a
gap, say a message lost while the connection was down, makes the reader recreate its
consumer from the next sequence, as an ordered consumer does) and how many are pending.

Memory is bounded by flow control: the server waits for the answer to its flow-control
request, and the reader answers only while it holds at most settings.read_buffer_messages_max
messages (otherwise once its caller has folded down to that many). The server asks for flow
control rarely (about every 15k messages of 150 B), so a reader holding
settings.read_pending_messages_max drops what comes next and, once its caller has taken what
it holds, makes its consumer again from the next sequence (as nats-py's ordered consumer
resets after a slow-consumer drop).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from dagnats.runtime import settings

STATUS_AT: Final = len(b"NATS/1.0 ")  # a status is `NATS/1.0 100 ...`, headers `NATS/1.0\r\n`
STALLED_HEADER: Final = b"\r\nNats-Consumer-Stalled: "
ACK_TOKENS: Final = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>

# A handler takes a message's subject, reply, data and raw headers (None: no headers).
Handler = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None]]


class _Router:
    """Hands the messages of registered subscriptions to their handler, raw (subject, reply,
    data, headers bytes); passes every other message to the client's own processing."""

    def __init__(self, client: Client) -> None:
        self.handlers: dict[int, Handler] = {}
        self.process_next = client._process_msg

    async def process(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self.process_next(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        else:
            await handler(subject, reply, data, headers)


ROUTER_ATTRIBUTE: Final = "_dagnats_history_router"


def _router(client: Client) -> _Router:
    """The client's router, kept on the client itself (a module-level map of clients kept
    every client that ever read alive: the router holds the client's own method)."""
    router = getattr(client, ROUTER_ATTRIBUTE, None)
    if not isinstance(router, _Router):
        router = _Router(client)
        setattr(client, ROUTER_ATTRIBUTE, router)
        setattr(client, "_process_msg", router.process)  # noqa: B010 (an instance's method)
    return router


class HistoryReader:
    """The messages of `subject` with after_seq < seq <= last_seq, in order."""

    def __init__(
        self, js: JetStreamContext, stream: str, subject: str, after_seq: int, last_seq: int
    ):
        assert 0 <= after_seq < last_seq, (after_seq, last_seq)
        self.js = js
        self.client: Client = js._nc
        self.stream = stream
        self.subject = subject
        self.last_seq = last_seq
        self.next_seq = after_seq + 1  # the first sequence not received yet
        self.items: collections.deque[tuple[int, bytes]] = collections.deque()
        self.finished = False  # every message up to last_seq arrived (or the rest is gone)
        self.overflows = 0  # consumers made again because the reader was full
        self.restarts = 0  # consumers made again after a gap or a silence
        self._gap = False
        self._full = False  # the gap is one the reader made, dropping what it had no room for
        self._flow: bytes = b""  # the flow-control request to answer once there is room
        self._delivered = 0  # the consumer sequence of the last message taken
        self._consumer = ""
        self._subscription: Subscription | None = None
        self._ready: asyncio.Future[bool] | None = None

    async def open(self) -> None:
        """Subscribe an inbox and make a consumer delivering to it from next_seq."""
        inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(inbox)
        _router(self.client).handlers[self._subscription._id] = self._on_message
        self._gap = self._full = False
        self._flow = b""
        self._delivered = 0
        config = api.ConsumerConfig(
            deliver_subject=inbox, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq, filter_subject=self.subject,
            ack_policy=api.AckPolicy.NONE, max_deliver=1, flow_control=True,
            idle_heartbeat=settings.read_heartbeat_ms / 1000,
            inactive_threshold=settings.read_consumer_inactive_ms / 1000,
            mem_storage=True, num_replicas=1,
        )  # fmt: skip
        info = await self.js.add_consumer(self.stream, config)
        self._consumer = info.name

    async def messages(self, timeout_s: float) -> AsyncGenerator[tuple[int, bytes], None]:
        """Open, yield each (seq, payload) in order until the read ends, then close (callers
        wrap it in `contextlib.aclosing`, so an early stop closes the consumer at once).

        Raises:
            TimeoutError: no message within timeout_s, twice (see `wait`).
        """
        items = self.items
        try:
            await self.open()
            while True:
                while items:
                    yield items.popleft()
                    if self.wanted and self.has_room():
                        await self.request()
                if not await self.wait(timeout_s):
                    return
        finally:
            await self.close()

    async def close(self) -> None:
        """Unsubscribe and delete the consumer without waiting for the reply."""
        subscription = self._subscription
        if subscription is None:
            return
        self._subscription = None
        _router(self.client).handlers.pop(subscription._id, None)
        consumer, self._consumer = self._consumer, ""
        if self.client.is_closed:
            return
        await subscription.unsubscribe()
        if consumer:  # none when its creation failed
            await self.client.publish(f"{self.js._prefix}.CONSUMER.DELETE.{self.stream}.{consumer}")

    @property
    def wanted(self) -> bool:
        """Whether a flow-control answer waits until the caller has room."""
        return bool(self._flow)

    def has_room(self) -> bool:
        """Whether the reader holds few enough messages to let the server send more."""
        return len(self.items) <= settings.read_buffer_messages_max

    async def request(self) -> None:
        """Answer the flow-control request held back (the caller has room again)."""
        flow, self._flow = self._flow, b""
        if flow:
            await self.client.publish(flow.decode())

    async def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if headers and headers[STATUS_AT - 1 : STATUS_AT] == b" ":  # flow control, heartbeat
            await self._on_status(reply, headers)
            return
        if self.finished or self._gap:
            return  # after the end, or dropped until the consumer is made again
        tokens = reply.split(b".")
        at = 0 if len(tokens) == ACK_TOKENS else 2  # the v2 form adds domain and account
        delivered = int(tokens[at + 6])
        if delivered != self._delivered + 1:  # one went missing: start again from next_seq
            self._gap = True
            self._wake()
            return
        if len(self.items) >= settings.read_pending_messages_max:  # full: drop, start again later
            self._gap = self._full = True
            return
        self._delivered = delivered
        seq = int(tokens[at + 5])
        if seq > self.last_seq:  # (what was up to last_seq was deleted, then more came)
            self.finished = True
            self._wake()
            return
        self.items.append((seq, data))
        self.next_seq = seq + 1
        if seq >= self.last_seq or tokens[at + 8] == b"0":
            self.finished = True  # the end, or the rest was deleted meanwhile
        self._wake()

    async def _on_status(self, reply: bytes, headers: bytes) -> None:
        if not reply:  # a heartbeat, which names a flow control still unanswered (stalled)
            start = headers.find(STALLED_HEADER)
            if start < 0:
                return
            start += len(STALLED_HEADER)
            reply = headers[start : headers.index(b"\r\n", start)]
        if self.has_room():  # a flow-control request: answered once the caller has room
            await self.client.publish(reply.decode())
        else:
            self._flow = reply

    def _wake(self) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(True)

    async def wait(self, timeout_s: float) -> bool:
        """Wait until an item is there (True) or the read is over (False). After a gap, or
        no message within timeout_s, the consumer is made again from next_seq (once for a
        silence: a second one is a TimeoutError)."""
        silent = False
        while True:
            if self.items:
                return True
            if self.finished:
                return False
            if self._gap:
                await self._restart(counted=not self._full)
                continue  # messages may have come meanwhile
            if self.wanted:
                await self.request()
                continue
            if not await self._sleep(timeout_s):
                if silent:
                    raise TimeoutError()
                silent = True
                await self._restart()

    async def _restart(self, *, counted: bool = True) -> None:
        """Make the consumer again from next_seq. A full reader's restart is not counted
        against read_restarts_max: it comes after the caller took every message held."""
        if not counted:
            self.overflows += 1
        elif self.restarts >= settings.read_restarts_max:
            raise TimeoutError()
        else:
            self.restarts += 1
        await self.close()
        await self.open()

    async def _sleep(self, timeout_s: float) -> bool:
        """False when timeout_s passed with no message."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        self._ready = ready
        expiry = loop.call_later(timeout_s, _expire, ready)
        try:
            return await ready
        finally:
            expiry.cancel()
            self._ready = None


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
