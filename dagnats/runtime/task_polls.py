"""A worker's standing pulls of a task type's durable consumer, their answers read raw.

A standing pull is a few pull requests that stay on the server (`pull_expires_ms`), each for
several messages, answered to an inbox of its own; its credit (what the live requests may
still bring) is kept by runtime/pull_credit.py. A request per task is a message to send, to
parse and to queue on the server for every task; a request for several stands for all of
them. How much to ask for and when is the fetch loop's (dagnats/worker_fetch.py); this module
sends the requests and reads what they bring.

The inbox's messages reach the pull in the client's read loop, before nats-py builds a `Msg`
(the per-connection router of runtime/log_read.py): no task, no queue between the read loop
and the pull, no header dict unless one is read (`RawTaskMessage.headers`), no JSON encoder
per request. A message is kept in `arrived` (at most `arrived_max`: more are given back at
once with a nak, a bound never reached while the credit is kept) and the fetch loop is woken
(`on_change`); a 408 ends the oldest live request whose expiry passed, with the credit its
`Nats-Pending-Messages` says it had left; any other status but a heartbeat forgets
every request (`PullCredit.reset`) and is kept as the pull's `error`. A disconnect stops the
asking; the reconnect forgets every request (one lost with a restarted server would never be
answered) and wakes the loop, which asks again at once. What a worker took is settled as
nats-py's `Msg` would (`+ACK`, `-NAK`, `+WPI`, `+TERM` published to its reply subject:
fire-and-forget, as before).

Closing a pull unsubscribes its inbox first, so the server drops its requests (nats-server
delivers to a request only while its reply subject has interest), then reads what was already
on its way until a flush comes back (at most `close_flush_s`): the caller gives that back.

This module publishes pull requests and settles the messages they bring, on the connection it
is given; it decodes no payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from dagnats.runtime import settings
from dagnats.runtime.js_publish import listen, publish_raw, send_raw
from dagnats.runtime.log_read import STATUS_AT, header_int, router
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.pull_credit import PullCredit
from dagnats.runtime.task_tokens import TASK_TOKEN_HEADER

MSG_ID_HEADER: Final = "Nats-Msg-Id"
SCHEDULER_HEADER: Final = "Nats-Scheduler"  # set by the server on a message a schedule fired
HEADER_LINE_BYTES: Final = len(b"NATS/1.0")
STATUS_HEARTBEAT: Final = b"100"
STATUS_EXPIRED: Final = b"408"  # the oldest live request ended with what it brought
PENDING_MESSAGES_AT: Final = b"\r\nNats-Pending-Messages: "  # (a 408: what it had left)
pull_expires_ms: Final = 5_000  # a pull request's life on the server
close_flush_s: Final = 1  # at close, the longest wait for what is on its way
arrived_max: Final = settings.fetch_batch_max  # messages not yet taken; more are given back

_SPACE: Final = re.compile(r"\s")  # (str.isspace's characters, as nats-py checks a name)
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


def header_lines(raw: bytes) -> dict[str, str]:
    """The headers of a header block (`Name: Value` lines), read as nats-py's
    `Client._parse_header_lines` reads them (a line without a colon, a name that is not
    ASCII or holds a space is skipped; values decoded with replacement), without its
    generator per name."""
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _SPACE.search(key) is not None:
            continue
        headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def header_of(raw: bytes, name: str) -> str | None:
    """The value `header_lines(raw)` gives `name`, found without parsing every line when the
    name is nowhere in the block (None) or in one line only, as that line's name (its value
    up to the line's end); else by `header_lines` itself."""
    wanted = name.encode()
    count = raw.count(wanted)
    if count == 0:
        return None
    start = raw.find(b"\n" + wanted + b":") + 1
    if count > 1 or start == 0 or raw[start - 2 : start] != b"\r\n":
        return header_lines(raw).get(name)  # (a name padded or repeated, a value naming it)
    start += len(wanted) + 1
    end = raw.find(b"\r\n", start)
    return raw[start : end if end >= 0 else len(raw)].strip().decode("utf-8", "replace")


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
        """The subject (bytes not UTF-8, which nats-server lets any client publish, replaced:
        such a command is refused as malformed, never an error where it is read)."""
        return self._subject.decode(errors="replace")

    @property
    def headers(self) -> dict[str, str] | None:
        """The message's headers (a task's `traceparent`: dagnats.observe.tracing)."""
        raw = self._raw_headers
        if raw is None:
            return None
        if self._headers is None:
            self._headers = header_lines(raw[HEADER_LINE_BYTES:])
        return self._headers

    @property
    def msg_id(self) -> str | None:
        headers = self.headers
        return None if headers is None else headers.get(MSG_ID_HEADER)

    @property
    def scheduler(self) -> str | None:
        """The schedule's subject when a message schedule fired this message (a command), else
        None."""
        return self._header(SCHEDULER_HEADER)

    @property
    def task_token(self) -> str | None:
        """The engine's token of this task (runtime/task_tokens)."""
        return self._header(TASK_TOKEN_HEADER)

    def _header(self, name: str) -> str | None:
        """The header `name`, read alone (`header_of`) while the block is not parsed yet."""
        raw = self._raw_headers
        if raw is None:
            return None
        if self._headers is None:
            return header_of(raw[HEADER_LINE_BYTES:], name)
        return self._headers.get(name)

    async def ack(self) -> None:
        """Done (fire-and-forget: a lost ack means one redelivery, which the worker absorbs).

        Raises:
            nats.errors.MsgAlreadyAckdError: it was settled before (as nats-py's `Msg`)."""
        self._settle()
        rest = send_raw(self._client, self._reply, "", b"+ACK")  # (a plain call, mostly)
        if rest is not None:
            await rest

    async def nak(self, delay_ms: int = 0) -> None:
        """Deliver again after delay_ms."""
        assert 0 <= delay_ms <= settings.nak_delay_ms_max, delay_ms
        self._settle()
        payload = b"-NAK"
        if delay_ms:
            payload += b" " + json.dumps({"delay": delay_ms * 1_000_000}).encode()
        await publish_raw(self._client, self._reply, "", payload)

    async def in_progress(self) -> None:
        """Still working: restart the ack wait (the heartbeat)."""
        await publish_raw(self._client, self._reply, "", b"+WPI")

    async def term(self) -> None:
        """Never deliver again."""
        self._settle()
        await publish_raw(self._client, self._reply, "", b"+TERM")

    def _settle(self) -> None:
        if self._settled:
            raise nats.errors.MsgAlreadyAckdError(self)
        self._settled = True


async def give_back(messages: Sequence[TaskMessage]) -> int:
    """Nak each (another puller takes it at once); one whose nak fails comes back after its
    ack wait. How many."""
    for message in messages:
        with contextlib.suppress(nats.errors.Error):
            await message.nak()
    return len(messages)


class StandingPull:
    """The standing pull of one durable pull consumer (its `$JS.API.CONSUMER.MSG.NEXT`
    subject): requests for `credit_max` messages at most, answered to this object's inbox;
    what they bring waits in `arrived` for the fetch loop, woken by `on_change`."""

    def __init__(
        self, client: Client, next_subject: str, credit_max: int, on_change: Callable[[], None],
        expires_ms: int = pull_expires_ms,
    ) -> None:  # fmt: skip
        self.client = client
        self.next_subject = next_subject
        self.credit = PullCredit(credit_max, expires_ms)
        self.on_change = on_change
        self.arrived: list[TaskMessage] = []
        self.error: Exception | None = None  # an error status or a message that is no task
        self.closed = False
        self.requests = 0  # pull requests sent, in all
        self.inbox = ""
        self._inbox: Subscription | None = None
        self._connected = True
        listen(client, self)

    def wanted(self, now: float, cover_ms: int) -> int:
        """How many messages to ask for now (`PullCredit.wanted`); 0 while disconnected."""
        if self.closed or not self._connected:
            return 0
        return self.credit.wanted(now, cover_ms)

    async def ask(self, count: int) -> None:
        """Send a pull request for `count` messages, standing `pull_expires_ms` at most.

        Raises:
            nats.errors.ConnectionClosedError: the connection is closed.
        """
        assert not self.closed, "a closed pull asks for nothing"
        assert 1 <= count <= self.credit.credit_max, count
        if self._inbox is None:
            await self._open()
        self.credit.asked(count, asyncio.get_running_loop().time())
        request = b'{"batch":%d,"expires":%d}' % (count, self.credit.expires_ms * 1_000_000)
        try:
            await self.client.publish(self.next_subject, request, reply=self.inbox)
        except BaseException:
            self.credit.reset()  # (sent or not: the next ask tells)
            raise
        self.requests += 1

    def take(self) -> tuple[list[TaskMessage], Exception | None]:
        """What came since the last take, and the error that came with it (if any)."""
        arrived, self.arrived = self.arrived, []
        error, self.error = self.error, None
        return arrived, error

    async def close(self) -> list[TaskMessage]:
        """Ask nothing more: unsubscribe the inbox (the server drops the requests), read what
        was on its way until a flush comes back (within `close_flush_s`), and return what
        came and was not taken (the caller gives it back)."""
        self.closed = True
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            try:
                if not self.client.is_closed:
                    await inbox.unsubscribe()
                if self.client.is_connected:
                    await self.client.flush(close_flush_s)
            except (nats.errors.Error, TimeoutError):
                pass  # (what comes later comes back after its ack wait)
            finally:
                router(self.client).handlers.pop(inbox._id, None)
        self.credit.reset()
        arrived, self.arrived = self.arrived, []
        return arrived

    def connection_lost(self) -> None:
        """The connection is lost: ask nothing until it is back."""
        self._connected = False

    def connection_back(self) -> None:
        """Reconnected: forget every request (the server may have lost them) and wake the
        loop, which asks again."""
        if self.closed:
            return
        self._connected = True
        self.credit.reset()
        self.on_change()

    async def _open(self) -> None:
        inbox = self.client.new_inbox()
        subscription = await self.client.subscribe(inbox)
        router(self.client).handlers[subscription._id] = self._on_message
        self.inbox, self._inbox = inbox, subscription

    async def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if headers is not None and headers[STATUS_AT - 1 : STATUS_AT] == b" ":
            self._on_status(headers)
            return
        self.credit.delivered()
        try:
            message = RawTaskMessage(self.client, subject, reply, data, headers)
        except nats.errors.NotJSMessageError as error:
            self.error = error
            self.on_change()
            return
        if len(self.arrived) >= arrived_max:  # (a bound, never reached while credit is kept)
            await message.nak()
            return
        self.arrived.append(message)
        self.on_change()

    def _on_status(self, headers: bytes) -> None:
        code = headers[STATUS_AT : STATUS_AT + 3]
        if code == STATUS_HEARTBEAT:
            return
        if code == STATUS_EXPIRED:
            left = header_int(headers, PENDING_MESSAGES_AT)
            self.credit.expired(left, asyncio.get_running_loop().time())
        else:  # refused or cut short (409 leadership change, 503 no JetStream, ...)
            self.credit.reset()
            line = headers[STATUS_AT:].split(b"\r\n", 1)[0].decode(errors="replace")
            status = int(code) if code.isdigit() else None
            self.error = nats.js.errors.APIError(code=status, description=line)
        self.on_change()
