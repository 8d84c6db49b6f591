"""History reads by a lean push consumer: bounded reads, and live ones (a run's watch).

A read makes an ephemeral push consumer of the run's subject from a start sequence (no acks,
flow control, idle heartbeats, in memory, one replica) delivering to the reader's inbox, and
deletes it at the end. It is what nats-py's ordered consumer does, without nats-py's per
message work: the messages of a reader's inbox reach it before nats-py parses their headers
(a `Msg`, a header dict and the ordered consumer's checks per message cost about as much as
the decode and fold of the message together). A per-connection router hands them over by
subscription id and passes every other message to nats-py unchanged. The consumer's create
and delete requests are answered to the same inbox (a msgspec-encoded body, no nats-py
request machinery or `ConsumerInfo` parsing).

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

`HistoryReader` reads up to a known last sequence and ends. `LiveReader` has no last
sequence: it gives each message as it is appended until its caller's deadline, and makes its
consumer again from the next sequence after a gap, a reconnect of its connection (the server
may have restarted without the consumer) or a silence longer than `live_silence_ms` (not
even the idle heartbeat came). Neither writes to the stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dagnats.runtime import settings

STATUS_AT: Final = len(b"NATS/1.0 ")  # a status is `NATS/1.0 100 ...`, headers `NATS/1.0\r\n`
STALLED_HEADER: Final = b"\r\nNats-Consumer-Stalled: "
ACK_TOKENS: Final = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>
NS_PER_MS: Final = 1_000_000  # the API's durations are in nanoseconds
LIVE_LAST_SEQ: Final = 2**64 - 1  # a live read's last sequence: the largest a stream has
# How often a live read that waits looks whether its connection reconnected meanwhile (the
# server restarted, and the consumer may be gone with it: nats-py noticed that only ~20 s
# later) or its consumer fell silent.
live_poll_ms: Final = 500
# A live read that heard nothing, not even its consumer's idle heartbeat, for this long makes
# its consumer again (it is gone: say its server left a cluster).
live_silence_ms: Final = 3 * settings.read_heartbeat_ms
live_delete_timeout_s: Final = 5.0  # a live read's closing delete of its consumer


class _Answer(msgspec.Struct):
    """What the reader reads of a JetStream API answer (consumer create, delete)."""

    name: str = ""  # the consumer's
    error: dict[str, Any] | None = None  # {code, err_code, description}


_ANSWER: Final = msgspec.json.Decoder(_Answer)

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


def router(client: Client) -> _Router:
    """The client's router, kept on the client itself (a module-level map of clients kept
    every client that ever read alive: the router holds the client's own method)."""
    router = getattr(client, ROUTER_ATTRIBUTE, None)
    if not isinstance(router, _Router):
        router = _Router(client)
        setattr(client, ROUTER_ATTRIBUTE, router)
        setattr(client, "_process_msg", router.process)  # noqa: B010 (an instance's method)
    return router


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """What a raw header block holds after `name` (the header's name with its leading CRLF
    and trailing colon and space, e.g. b"\\r\\nNats-Sequence: "), up to the line's end; None
    when the header is missing."""
    at = headers.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = headers.find(b"\r\n", start)
    return headers[start : end if end >= 0 else len(headers)]


def header_int(headers: bytes, name: bytes) -> int | None:
    """The number a raw header block holds after `name` (`header_value`), None when the
    header is missing or not a number."""
    value = header_value(headers, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class PushReader:
    """The messages of `subject` with after_seq < seq <= last_seq as they come, held in
    `items`; the consumer behind them and its flow control (see the module's docstring)."""

    def __init__(
        self, js: JetStreamContext, stream: str, subject: str, after_seq: int, last_seq: int
    ):
        assert 0 <= after_seq < last_seq <= LIVE_LAST_SEQ, (after_seq, last_seq)
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
        self.heard = False  # a message or a heartbeat came (a live read clears it)
        self._gap = False
        self._full = False  # the gap is one the reader made, dropping what it had no room for
        self._flow: bytes = b""  # the flow-control request to answer once there is room
        self._delivered = 0  # the consumer sequence of the last message taken
        self._consumer = ""
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._ready: asyncio.Future[bool] | None = None
        self._answer: asyncio.Future[bytes] | None = None  # to the API request under way

    async def open(self) -> None:
        """Subscribe an inbox and make a consumer delivering to it from next_seq.

        Raises:
            nats.js.errors.APIError: the server refused the consumer.
            nats.errors.TimeoutError, nats.errors.NoRespondersError: no answer.
        """
        inbox = self._inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(inbox)
        router(self.client).handlers[self._subscription._id] = self._on_inbox
        self._gap = self._full = False
        self._flow = b""
        self._delivered = 0
        config = {
            "deliver_subject": inbox, "deliver_policy": "by_start_sequence",
            "opt_start_seq": self.next_seq, "filter_subject": self.subject,
            "ack_policy": "none", "max_deliver": 1, "flow_control": True,
            "idle_heartbeat": settings.read_heartbeat_ms * NS_PER_MS,
            "inactive_threshold": settings.read_consumer_inactive_ms * NS_PER_MS,
            "mem_storage": True, "num_replicas": 1,
        }  # fmt: skip
        body = msgspec.json.encode({"stream_name": self.stream, "config": config})
        subject = f"{self.js._prefix}.CONSUMER.CREATE.{self.stream}"
        created = _ANSWER.decode(await self._api(subject, body, self.js._timeout))
        if created.error is not None:
            nats.js.errors.APIError.from_error(created.error)  # (raises)
        assert created.name, f"consumer create on {self.stream} answered without a name"
        self._consumer = created.name

    async def close(self, *, confirmed: bool = False) -> None:
        """Delete the consumer and unsubscribe; with `confirmed`, wait for the server's
        answer to the delete (within live_delete_timeout_s), else not."""
        subscription = self._subscription
        if subscription is None:
            return
        self._subscription = None
        consumer, self._consumer = self._consumer, ""
        try:
            if consumer and not self.client.is_closed:  # (none when its creation failed)
                subject = f"{self.js._prefix}.CONSUMER.DELETE.{self.stream}.{consumer}"
                if confirmed:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        await self._api(subject, b"", live_delete_timeout_s)
                else:
                    await self.client.publish(subject)
        finally:
            router(self.client).handlers.pop(subscription._id, None)
            if not self.client.is_closed:
                await subscription.unsubscribe()

    async def _api(self, subject: str, body: bytes, timeout_s: float) -> bytes:
        """A JetStream API request answered to the reader's own inbox (`_on_inbox`; not
        through nats-py's request machinery); the answer's body.

        Raises:
            nats.errors.TimeoutError: no answer within timeout_s.
            nats.errors.NoRespondersError: no JetStream to answer.
        """
        assert self._answer is None, "one API request at a time"
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        self._answer = answer
        expiry = loop.call_later(timeout_s, expire_answer, answer)
        try:
            await self.client.publish(subject, body, reply=self._inbox)
            return await answer
        finally:
            expiry.cancel()
            self._answer = None

    async def _on_inbox(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """A message to the reader's inbox: a delivery or a status, or the answer to its API
        request (no reply subject, no headers), or the 503 status saying no one is there."""
        if reply or headers:
            if headers and headers[STATUS_AT : STATUS_AT + 3] == b"503":
                self._answered(None)  # JetStream is not there
                return
            await self._on_message(subject, reply, data, headers)
        else:
            self._answered(data)

    def _answered(self, data: bytes | None) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return  # (late: its request gave up)
        if data is None:
            answer.set_exception(nats.errors.NoRespondersError())
        else:
            answer.set_result(data)

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
        self.heard = True
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
        if seq >= self.last_seq or (tokens[at + 8] == b"0" and self.last_seq != LIVE_LAST_SEQ):
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


class HistoryReader(PushReader):
    """The messages of `subject` with after_seq < seq <= last_seq, in order."""

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
                if not await self._rest_is_held():
                    self.finished = True  # (what was left was purged meanwhile)
                    return False
                if silent:
                    raise TimeoutError()
                silent = True
                await self._restart()

    async def _rest_is_held(self) -> bool:
        """Whether the stream still holds a message of the subject in next_seq..last_seq (one
        request, after a silence): a range purged or deleted after the read began hears only
        heartbeats, and would end in a stall error instead of with what was there."""
        try:
            return await holds_any(self.js, self.stream, self.subject, self.next_seq, self.last_seq)
        except nats.errors.Error:  # (no answer: the silence is the server's, restart as before)
            return True

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


class LiveReader(PushReader):
    """The messages of `subject` after after_seq, in order, as they are appended (no end).
    A message given is never given again, whatever consumers were made meanwhile."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str, after_seq: int) -> None:
        super().__init__(js, stream, subject, after_seq, LIVE_LAST_SEQ)
        self._reconnects = self._reconnect_count()
        self._quiet_since = time.monotonic()  # when `heard` was last found false
        self._timer: asyncio.TimerHandle | None = None  # the next poll, kept across waits

    def _reconnect_count(self) -> int:
        return int(self.client.stats["reconnects"])

    async def next(self, deadline: float) -> tuple[int, bytes] | None:
        """The next (seq, payload), or None once the monotonic `deadline` has passed."""
        items = self.items
        while True:
            if items:
                item = items.popleft()
                if self._flow and self.has_room():
                    await self.request()
                return item
            if self._gap and await self._reopen(deadline):
                continue  # messages may have come meanwhile
            now = time.monotonic()
            if now >= deadline:
                return None
            if self._stale(now):
                continue  # made again at once
            await self._wait(min(deadline, now + live_poll_ms / 1000))

    async def _wait(self, until: float) -> None:
        """Until a message wakes the reader or a poll is due, at `until` or sooner: the
        poll's timer is kept across waits while it is not due later (a timer per poll
        interval, not one per message; an early poll only looks sooner)."""
        loop = asyncio.get_running_loop()  # (its time is time.monotonic)
        timer = self._timer
        if timer is None or timer.when() > until:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(until, self._poll_due)
        ready: asyncio.Future[bool] = loop.create_future()
        self._ready = ready
        try:
            await ready
        finally:
            self._ready = None

    def _poll_due(self) -> None:
        self._timer = None
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(False)

    async def close(self, *, confirmed: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().close(confirmed=confirmed)

    def _stale(self, now: float) -> bool:
        """Whether the consumer is to be made again now (marked by `_gap`): the connection
        reconnected since the last look (the server may have restarted without it), or not
        even a heartbeat came for live_silence_ms. False while one already waits to be made
        again (after a failed try, the next comes after a wait)."""
        if self.heard:
            self.heard = False
            self._quiet_since = now
        if self._gap or (
            self._reconnect_count() == self._reconnects
            and now - self._quiet_since < live_silence_ms / 1000
        ):
            return False
        self._gap = True
        return True

    async def _reopen(self, deadline: float) -> bool:
        """Make the consumer again from next_seq within `deadline`; False when the server
        did not answer (tried again at the next poll: `_gap` stays set)."""
        full = self._full
        self._reconnects = self._reconnect_count()  # (one more meanwhile: made again again)
        await self.close()
        try:
            await asyncio.wait_for(self.open(), max(0.1, deadline - time.monotonic()))
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self.close()
            self._gap, self._full = True, full  # (open cleared them)
            return False
        if full:
            self.overflows += 1
        else:
            self.restarts += 1
        self._quiet_since = time.monotonic()
        return True


async def holds_any(
    js: JetStreamContext, stream: str, subject: str, first_seq: int, last_seq: int
) -> bool:
    """Whether `stream` holds a message of `subject` (wildcards allowed) with first_seq <= seq
    <= last_seq (one request).

    Raises:
        nats.errors.Error: no answer (a missing message is an answer: False).
    """
    try:
        found = await js.get_msg(stream, first_seq, subject, next=True)
    except nats.js.errors.NotFoundError:
        return False
    return found.seq is not None and found.seq <= last_seq


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def expire_answer(answer: asyncio.Future[Any]) -> None:
    """Fail an answer still awaited with nats' TimeoutError (a request's timer)."""
    if not answer.done():
        answer.set_exception(nats.errors.TimeoutError())
