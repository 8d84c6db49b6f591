"""A worker's long polls of a task type's durable consumer, their answers read raw.

A poll is one pull request (batch 1, expiring `settings.fetch_expiry_margin_share` before its
wait ends) answered to an inbox of its own, and a future: the message it brings, or [] when
the request expired (the server's 408) or the wait ended. The inbox's messages reach the poll
in the client's read loop, before nats-py builds a `Msg` (the per-connection router of
runtime/log_read.py): no task per poll, no queue between the read loop and the poll, no
header dict unless one is read (`RawTaskMessage.headers`), no JSON encoder per request. What
a worker took this way is settled as nats-py's `Msg` would (`+ACK`, `-NAK`, `+WPI`, `+TERM`
published to its reply subject: fire-and-forget, as before).

A poll ended before its message came (its timer ran out first, or an early status ended it)
keeps that message for the next poll, which takes it without a request, at most
`left_over_max` (more are given back at once with a nak). A status of an earlier request that
comes before this one could have expired is not this poll's end and is passed over, as
runtime/queue.py `_pull` does.

This module publishes pull requests and settles the messages they bring, on the connection it
is given; it decodes no payload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from dagnats.runtime import settings
from dagnats.runtime.log_read import STATUS_AT, _router
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.task_tokens import TASK_TOKEN_HEADER

MSG_ID_HEADER: Final = "Nats-Msg-Id"
HEADER_LINE_BYTES: Final = len(b"NATS/1.0")
STATUS_HEARTBEAT: Final = b"100"
STATUS_ENDS: Final = frozenset((b"404", b"408", b"409"))  # no messages, expired, conflict
left_over_max: Final = 16  # messages kept for the next poll; more are given back at once

_REPLY_V1_TOKENS: Final = 9
_REPLY_V2_TOKENS_MIN: Final = 11


def reply_fields(reply: str) -> tuple[int, int, int, int] | None:
    """(times delivered, stream sequence, messages pending after it, stored time in ms of
    the server's clock) of a JetStream delivery, from its reply subject; None when the reply
    is not a JetStream ack subject. The layouts are nats-py's (`Msg.Metadata._from_reply`):
    v1 `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`,
    v2 `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.
    <consumer seq>.<ns>.<pending>[.<token>]`."""
    tokens = reply.split(".") if reply else []
    if len(tokens) < _REPLY_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    if len(tokens) == _REPLY_V1_TOKENS:
        first = 4
    elif len(tokens) >= _REPLY_V2_TOKENS_MIN:
        first = 6
    else:
        return None
    try:
        delivered, stream_seq, _, stored_ns, pending = map(int, tokens[first : first + 5])
    except ValueError:
        return None
    return delivered, stream_seq, pending, stored_ns // 1_000_000


def delivery_fields(reply: str) -> tuple[int, int, int, int]:
    """`reply_fields` of a task's delivery, checked: (times delivered, stream sequence,
    pending, stored ms).

    Raises:
        nats.errors.NotJSMessageError: the reply is not a JetStream ack subject (as nats-py's
            `Msg.metadata` would).
    """
    fields = reply_fields(reply)
    if fields is None:
        raise nats.errors.NotJSMessageError
    assert fields[0] >= 1, fields  # delivered at least once
    assert fields[3] >= 0, fields  # stored at a time
    return fields


class RawTaskMessage:
    """`protocols.QueueMessage` over the raw parts of a delivered JetStream message: its
    header block is parsed only when read (most tasks read it once, for their trace and
    task token), its delivery fields once from the reply subject."""

    __slots__ = (
        "_client", "_headers", "_raw_headers", "_reply", "_settled", "_subject", "data",
        "num_delivered", "num_pending", "stored_ms", "stream_seq",
    )  # fmt: skip

    def __init__(
        self, client: Client, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """Raises: nats.errors.NotJSMessageError: the reply is no JetStream ack subject."""
        self._client = client
        self._subject = subject
        self._reply = reply.decode()
        self.data = data
        self._raw_headers = headers
        self._headers: dict[str, str] | None = None
        self._settled = False
        fields = delivery_fields(self._reply)
        self.num_delivered, self.stream_seq, self.num_pending, self.stored_ms = fields

    @property
    def subject(self) -> str:
        return self._subject.decode()

    @property
    def headers(self) -> dict[str, str] | None:
        """The message's headers (a task's `traceparent`: dagnats.observe.tracing)."""
        raw = self._raw_headers
        if raw is None:
            return None
        if self._headers is None:
            self._headers = Client._parse_header_lines(raw[HEADER_LINE_BYTES:])
        return self._headers

    @property
    def msg_id(self) -> str | None:
        headers = self.headers
        return None if headers is None else headers.get(MSG_ID_HEADER)

    @property
    def task_token(self) -> str | None:
        """The engine's token of this task (runtime/task_tokens)."""
        headers = self.headers
        return None if headers is None else headers.get(TASK_TOKEN_HEADER)

    async def ack(self) -> None:
        """Done (fire-and-forget: a lost ack means one redelivery, which the worker absorbs).

        Raises:
            nats.errors.MsgAlreadyAckdError: it was settled before (as nats-py's `Msg`)."""
        self._settle()
        await self._client.publish(self._reply, b"+ACK")

    async def nak(self, delay_ms: int = 0) -> None:
        """Deliver again after delay_ms."""
        assert 0 <= delay_ms <= settings.nak_delay_ms_max, delay_ms
        self._settle()
        payload = b"-NAK"
        if delay_ms:
            payload += b" " + json.dumps({"delay": delay_ms * 1_000_000}).encode()
        await self._client.publish(self._reply, payload)

    async def in_progress(self) -> None:
        """Still working: restart the ack wait (the heartbeat)."""
        await self._client.publish(self._reply, b"+WPI")

    async def term(self) -> None:
        """Never deliver again."""
        self._settle()
        await self._client.publish(self._reply, b"+TERM")

    def _settle(self) -> None:
        if self._settled:
            raise nats.errors.MsgAlreadyAckdError(self)
        self._settled = True


class TaskPolls:
    """Long polls of one durable pull consumer (its `$JS.API.CONSUMER.MSG.NEXT` subject), one
    at a time, each answered to this object's inbox."""

    def __init__(self, client: Client, next_subject: str) -> None:
        self.client = client
        self.next_subject = next_subject
        self.inbox = ""
        self._inbox: Subscription | None = None
        self._future: asyncio.Future[Sequence[TaskMessage]] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._on_end: Callable[[], None] | None = None
        self._ends_from = 0.0  # loop time from which a 408/409/404 is this poll's end
        self.left: list[TaskMessage] = []  # came after their poll ended

    async def poll(
        self, timeout_ms: int, on_end: Callable[[], None] | None = None
    ) -> asyncio.Future[Sequence[TaskMessage]]:
        """Send a pull request for one message; the future of its answer (within timeout_ms).
        `on_end` is called as the future ends (in the read loop, no callback scheduled after
        it: the fetch loop wakes one loop iteration sooner), unless it is cancelled.

        Raises:
            nats.errors.ConnectionClosedError: the connection is closed.
        """
        assert 0 < timeout_ms <= settings.fetch_timeout_ms_max, timeout_ms
        assert self._future is None or self._future.done(), "one poll at a time"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence[TaskMessage]] = loop.create_future()
        if self.left:
            future.set_result([self.left.pop(0)])
            if on_end is not None:
                on_end()
            return future
        if self._inbox is None:
            await self._open()
        timeout_s = timeout_ms / 1000
        margin_s = min(timeout_s / 2, max(
            timeout_s * settings.fetch_expiry_margin_share,
            settings.fetch_expiry_margin_ms_min / 1000,
        ))  # fmt: skip
        expires_ns = int((timeout_s - margin_s) * 1_000_000_000)
        now = loop.time()
        self._future, self._on_end = future, on_end
        self._ends_from = now + timeout_s - margin_s
        self._expiry = loop.call_at(now + timeout_s, self._expire, future)
        try:
            await self.client.publish(
                self.next_subject, b'{"batch":1,"expires":%d}' % expires_ns, reply=self.inbox
            )
        except BaseException:
            self._on_end = None
            self._end()
            future.cancel()
            raise
        return future

    async def _open(self) -> None:
        self.inbox = self.client.new_inbox()
        self._inbox = await self.client.subscribe(self.inbox)
        _router(self.client).handlers[self._inbox._id] = self._on_message

    async def close(self) -> None:
        """Unsubscribe the inbox (a poll waiting ends with [] at its time) and give back what
        came after its poll ended (a nak: another worker takes it at once)."""
        inbox, self._inbox = self._inbox, None
        if inbox is None:
            return
        _router(self.client).handlers.pop(inbox._id, None)
        if self.client.is_closed:
            return
        await inbox.unsubscribe()
        left, self.left = self.left, []
        for message in left:
            await message.nak()

    async def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if headers is not None and headers[STATUS_AT - 1 : STATUS_AT] == b" ":
            self._on_status(headers)
            return
        waiting = self._future is not None and not self._future.done()
        try:
            message = RawTaskMessage(self.client, subject, reply, data, headers)
        except nats.errors.NotJSMessageError as error:
            if waiting:
                self._finish(error)
            return
        if waiting:
            self._finish([message])
        elif len(self.left) < left_over_max:
            self.left.append(message)
        else:  # (a bound, never reached in practice: one message per request at most)
            await message.nak()

    def _on_status(self, headers: bytes) -> None:
        code = headers[STATUS_AT : STATUS_AT + 3]
        future = self._future
        if code == STATUS_HEARTBEAT or future is None or future.done():
            return
        if code in STATUS_ENDS:
            if asyncio.get_running_loop().time() < self._ends_from:
                return  # an earlier request's end, answered late: the wait goes on
            self._finish([])
            return
        line = headers[STATUS_AT:].split(b"\r\n", 1)[0].decode(errors="replace")
        status = int(code) if code.isdigit() else None
        self._finish(nats.js.errors.APIError(code=status, description=line))

    def _expire(self, future: asyncio.Future[Sequence[TaskMessage]]) -> None:
        if future is self._future and not future.done():
            self._expiry = None
            self._finish([])

    def _finish(self, outcome: list[TaskMessage] | Exception) -> None:
        """End the waiting poll with `outcome`, then tell `on_end`."""
        future, on_end = self._future, self._on_end
        assert future is not None and not future.done()
        self._on_end = None
        self._end()
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        if on_end is not None:
            on_end()

    def _end(self) -> None:
        expiry, self._expiry = self._expiry, None
        if expiry is not None:
            expiry.cancel()
