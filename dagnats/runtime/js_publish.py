"""JetStream publishes awaited through one reply subscription, for the engine's hot path.

`JetStreamContext.publish` makes every publish a core request: a new reply token from the OS
random source (`secrets.token_hex`, a system call each), an `asyncio.wait_for` (a task-level
timeout, a second future) and a JSON parse into a dataclass. The engine makes two of them per
command (the history append, the task publish), so that bookkeeping was a good part of its CPU
per step. Here one wildcard subscription on the connection's inbox prefix receives every
acknowledgement, read raw in the client's read loop (no `Msg`, queue or task per answer),
tokens are a counter, one timer bounds every wait (at the oldest deadline), and the
acknowledgement decodes with msgspec. Same wire messages, same headers, same errors
(`nats.js.errors.APIError` and its kinds, `NoStreamResponseError`, `nats.errors.TimeoutError`),
so callers behave exactly as with `js.publish`. The publish itself is written as one HPUB
command built here (`publish_raw`): nats-py's `Client.publish` checks each subject and each
header name with a regular expression and builds the header block piece by piece, about 5 us a
publish (the engine makes two or three per step); the names here are the code's own constants.
A lone publish of a loop iteration (connected, nothing pending) is written to the socket at
once, not at the turn of nats-py's flusher task (a loop iteration later, on a step's critical
path); a busy client's publishes go together at the flusher's turn (`_end_turn`). Both by
plain calls (`send_raw`: what nats-py's `_send_command` and `_flush_pending` do, as one call,
but where they would wait), so `JetStreamPublisher.publish` returns the acknowledgement's
future itself: the caller awaits the answer with no coroutine of the publish between.

A connection lost while publishes wait for their acknowledgements: what was written to the
lost socket (or stored, with its acknowledgement sent there) is never acknowledged over the
new one, so each such wait would run out its whole timeout (5 s by default: a run stalled
that long after a server restart). The publisher chains itself into the client's disconnected
and reconnected callbacks: the publishes waiting at a disconnect fail at the next reconnect
with `AckLostError` (a `nats.errors.TimeoutError`: callers treat it as the timeout it cuts
short), and the caller's resend under the same Nats-Msg-Id goes out at once (the duplicate
window drops a copy the server already stored). A publish made during the outage sits in the
client's pending buffer, goes out on the reconnect, and keeps waiting for its acknowledgement.

This module may publish and subscribe on the connection it is given, and chain the client's
disconnected/reconnected callbacks; it decodes only the server's acknowledgements. It writes
to the client's pending buffer as `Client.publish` does, or to its socket when that buffer
is empty (nats-py 2.16 internals: pyproject pins that version).
"""

from __future__ import annotations

import asyncio
import collections
import re
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.transport import TcpTransport
from nats.js import JetStreamContext

from dagnats.runtime.log_read import STATUS_AT, router
from dagnats.runtime.settings import direct_write_buffered_max

EXPECTED_STREAM_HEADER: Final = "Nats-Expected-Stream"
NO_RESPONDERS_STATUS: Final = b"503"
_SUBJECT_INVALID: Final = re.compile(r"[ \t\r\n]")  # (nats-py's publish check)
_LINE_BREAKS: Final = str.maketrans({"\r": " ", "\n": " "})  # (nats-py's, in header values)


def header_block(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block of `headers` as nats-py writes it (`Name: value` lines; a
    value's line breaks made spaces, its ends stripped: looked for in the block built, not
    value by value). The names are the code's own constants (tokens, no colon)."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    breaks = len(headers)
    if (
        lines.count("\n") != breaks or lines.count("\r") != breaks  # (a value holds one)
        or ":  " in lines or " \r" in lines or "\t" in lines  # (or space at an end)
    ):  # fmt: skip
        lines = "".join([
            f"{name}: {value.strip().translate(_LINE_BREAKS)}\r\n"
            for name, value in headers.items()
        ])  # fmt: skip
    return b"NATS/1.0\r\n" + lines.encode() + b"\r\n"


async def publish_raw(
    nc: NatsClient, subject: str, reply: str, payload: bytes, head: bytes = b""
) -> None:
    """What `nc.publish(subject, payload, reply=reply, headers=...)` does, with the header
    block `head` built already (`header_block`; b"": none): `send_raw`, awaited.

    Raises:
        nats.errors.BadSubjectError: an empty subject, or one holding a space or line break.
        nats.errors.ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError,
        MaxPayloadError: as `Client.publish` raises them.
    """
    rest = send_raw(nc, subject, reply, payload, head)
    if rest is not None:
        await rest


def send_raw(
    nc: NatsClient, subject: str, reply: str, payload: bytes, head: bytes = b""
) -> Coroutine[Any, Any, None] | None:
    """`publish_raw` as a plain call: the same checks and errors, the command written to the
    socket at once (`_write_now`), else to the client's pending buffer with the flusher woken
    as nats-py wakes it (`_buffer`). None: done; else what is left to await (nats-py's own
    path, when its pending buffer is over its bound or its flusher task is gone).

    Raises:
        as `publish_raw`.
    """
    if not subject or _SUBJECT_INVALID.search(subject) is not None:
        raise nats.errors.BadSubjectError
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    size = len(payload)
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
    ):
        raise nats.errors.OutboundBufferLimitError
    if size > nc._max_payload:
        raise nats.errors.MaxPayloadError
    to = b"%b %b" % (subject.encode(), reply.encode()) if reply else subject.encode()
    if head:
        line = b"HPUB %b %d %d\r\n" % (to, len(head), len(head) + size)
    else:
        line = b"PUB %b %d\r\n" % (to, size)
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += size
    command = b"".join((line, head, payload, b"\r\n"))
    state = nc.__dict__  # (this module's marks on the client: `_end_turn`)
    turn_writes: int = state.get(_TURN_WRITES, 0)
    if turn_writes == 0:  # (the iteration's count ends at the loop's next iteration)
        asyncio.get_running_loop().call_soon(_end_turn, nc)
    state[_TURN_WRITES] = turn_writes + 1
    if turn_writes == 0 and not state.get(_BUSY, False) and _write_now(nc, command):
        return None
    return _buffer(nc, command)


def _buffer(nc: NatsClient, command: bytes) -> Coroutine[Any, Any, None] | None:
    """What nats-py's `_send_command` and `_flush_pending` do with a publish (the command
    appended to the pending buffer; the flusher woken with a future of its queue when the
    queue is empty and the client connected), as a plain call; their own coroutines where
    they would wait (a pending buffer over its bound: nats-py flushes it and waits; a
    flusher task gone: it writes inline)."""
    size = len(command)
    if nc._max_pending_size > 0 and nc._pending_data_size + size > nc._max_pending_size:
        return _buffer_waiting(nc, command)
    nc._pending.append(command)
    nc._pending_data_size += size
    queue = nc._flush_queue
    if queue is None or not queue.empty() or not nc.is_connected:
        return None
    flusher = nc._flusher_task
    if flusher is None or flusher.done():
        return nc._flush_pending()  # (written inline, as nats-py does)
    queue.put_nowait(asyncio.get_running_loop().create_future())  # (room: it is empty)
    return None


async def _buffer_waiting(nc: NatsClient, command: bytes) -> None:
    await nc._send_command(command)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def _write_now(nc: NatsClient, command: bytes) -> bool:
    """Write `command` to the socket now (True) when the client is connected, holds nothing
    pending (what it holds goes first: its flusher's turn) and its socket's write buffer is
    small; else False, and nats-py's path takes it (its pending buffer, kept across a
    reconnect, and its flusher task, which drains a full socket buffer). Asked only for the
    first publish of a loop iteration of a client that is not busy (`_end_turn`)."""
    transport = nc._transport
    if (
        not isinstance(transport, TcpTransport)
        or nc._pending_data_size > 0
        or not nc.is_connected
    ):  # fmt: skip
        return False
    writer = transport._io_writer
    if writer is None or writer.transport.is_closing():
        return False
    if writer.transport.get_write_buffer_size() > direct_write_buffered_max:
        return False
    transport.write(command)  # type: ignore[no-untyped-call]  # (nats-py: untyped)
    return True


def _end_turn(nc: NatsClient) -> None:
    """A loop iteration in which `nc` published ended: the client is busy while its last such
    iteration made two publishes or more. A lone publish (a chain's step) is written at once,
    before the loop's next iteration, not at the flusher's turn (~7-18 us of a step's critical
    path, twice a step); a busy client's (a loaded engine's, a fan-out's) go together at the
    flusher's turn, one socket write and one read of the server's for many (written at once,
    the first of each iteration apart, bench.throughput lost ~5% and the server's CPU per
    step rose ~10%)."""
    state = nc.__dict__
    state[_BUSY] = state.pop(_TURN_WRITES, 0) > 1


# This module's marks on a client (attributes of its own: no weak reference made per publish,
# gone with the client): its publishes in this loop iteration (while the count's end is
# due), and whether it is busy (`_end_turn`).
_TURN_WRITES: Final = "_dagnats_turn_writes"
_BUSY: Final = "_dagnats_busy"


class PubAck(msgspec.Struct, frozen=True):
    """What JetStream answers to a publish (`error` set when it refused it)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


class AckLostError(nats.errors.TimeoutError):
    """The connection was lost while this publish waited: its acknowledgement cannot come."""

    def __str__(self) -> str:
        return "nats: no acknowledgement (the connection was lost while waiting for it)"


Callback = Callable[[], Awaitable[None]]


class ConnectionListener(Protocol):
    """What a client's disconnects and reconnects are told to (publishers; run watches,
    client/live_watch.py)."""

    def connection_lost(self) -> None: ...

    def connection_back(self) -> None: ...


class _ConnectionHooks:
    """The publishers of one client, told of its disconnects and reconnects (after the
    callbacks it had, which still run first)."""

    def __init__(self, nc: NatsClient) -> None:
        self.publishers: weakref.WeakSet[ConnectionListener] = weakref.WeakSet()
        self.disconnected: Callback | None = nc._disconnected_cb
        self.reconnected: Callback | None = nc._reconnected_cb
        nc._disconnected_cb = self.on_disconnected
        nc._reconnected_cb = self.on_reconnected

    async def on_disconnected(self) -> None:
        if self.disconnected is not None:
            await self.disconnected()
        for publisher in list(self.publishers):
            publisher.connection_lost()

    async def on_reconnected(self) -> None:
        for publisher in list(self.publishers):
            publisher.connection_back()
        if self.reconnected is not None:
            await self.reconnected()


_hooks: weakref.WeakKeyDictionary[NatsClient, _ConnectionHooks] = weakref.WeakKeyDictionary()


def listen(nc: NatsClient, listener: ConnectionListener) -> None:
    """Tell `listener` of the client's disconnects and reconnects (after the callbacks the
    client had, which still run first); held weakly."""
    _watch(nc, listener)


def _watch(nc: NatsClient, publisher: ConnectionListener) -> None:
    hooks = _hooks.get(nc)
    if hooks is None:
        hooks = _hooks[nc] = _ConnectionHooks(nc)
    hooks.publishers.add(publisher)


class JetStreamPublisher:
    """Publish to JetStream and await the acknowledgement (one reply subscription in all)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js  # its timeout (`js._timeout`, read at each publish) bounds each wait
        self.nc = js._nc
        self._prefix: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Lock | None = None
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        # (deadline, token) of the waits, oldest first; answered ones leave at the next timer
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._next_token = 0
        self._lost: set[str] = set()  # waiting at a disconnect: failed at the reconnect
        self.acks_lost = 0  # waits cut short at a reconnect (AckLostError), in all
        _watch(self.nc, self)

    def publish(
        self, subject: str, payload: bytes, *, stream: str, headers: dict[str, str]
    ) -> Awaitable[PubAck]:
        """Publish `payload` to `subject` (stored in `stream`); await the acknowledgement.
        A plain call that returns the acknowledgement's future itself when the publish is
        written at once (most are: no coroutine between the caller and the answer).

        Raises (when awaited; a publish refused before it is written, when called):
            nats.js.errors.APIError: JetStream refused it (err_code says why).
            nats.js.errors.NoStreamResponseError: no stream listens on `subject`.
            nats.errors.TimeoutError: no acknowledgement within the context's timeout
                (`AckLostError`: the connection was lost while waiting; sooner).
            nats.errors.BadSubjectError, ConnectionClosedError, ...: as `publish_raw`.
        """
        prefix = self._prefix
        if prefix is None:
            return self._publish_first(subject, payload, stream, headers)
        self._next_token += 1
        token = str(self._next_token)
        loop = self._loop
        assert loop is not None  # (set with the prefix)
        future: asyncio.Future[PubAck] = loop.create_future()
        timeout_s = self.js._timeout
        assert timeout_s > 0, timeout_s
        self._bound(token, loop.time() + timeout_s, loop)
        self._waiting[token] = future
        headers[EXPECTED_STREAM_HEADER] = stream
        try:
            rest = send_raw(self.nc, subject, prefix + token, payload, header_block(headers))
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return future if rest is None else self._written(rest, token, future)

    async def _publish_first(
        self, subject: str, payload: bytes, stream: str, headers: dict[str, str]
    ) -> PubAck:
        """The first publish: the reply subscription made first (`_start`)."""
        await self._start()
        return await self.publish(subject, payload, stream=stream, headers=headers)

    async def _written(
        self, rest: Coroutine[Any, Any, None], token: str, future: asyncio.Future[PubAck]
    ) -> PubAck:
        """A publish whose writing must be awaited (`send_raw`'s rest), then its answer."""
        try:
            await rest
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return await future

    def _bound(self, token: str, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the wait of `token` at `deadline` unless answered. The context's timeout is
        one for all, so deadlines come in order: one timer, at the oldest, serves them all (a
        timer per publish cost a heap push and a cancel each); one out of order (the timeout
        was lowered) gets a timer of its own."""
        deadlines = self._deadlines
        if deadlines and deadline < deadlines[-1][0]:
            loop.call_at(deadline, self._expire, token)
            return
        deadlines.append((deadline, token))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_due)

    async def _start(self) -> str:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._prefix is None:
                prefix = f"{self.nc._inbox_prefix.decode()}.{self.nc._nuid.next().decode()}."
                replies = await self.nc.subscribe(prefix + "*")
                # Read raw in the client's read loop (runtime/log_read router): no `Msg`, no
                # queue and no task between an acknowledgement and the publish waiting for it.
                router(self.nc).handlers[replies._id] = self._on_reply
                self._loop = asyncio.get_running_loop()  # (the client's, which it stays on)
                self._prefix = prefix
        return self._prefix

    async def _on_reply(
        self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # (any client may publish on the prefix: a token not in UTF-8 is no publish's)
        token = subject.rpartition(b".")[2].decode(errors="replace")
        future = self._waiting.pop(token, None)
        if future is None or future.done():
            return  # timed out meanwhile, or its caller is gone
        if self._lost:
            self._lost.discard(token)
        if headers is not None and headers[STATUS_AT : STATUS_AT + 3] == NO_RESPONDERS_STATUS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = _decode_ack(data)
        except msgspec.DecodeError as error:
            future.set_exception(nats.js.errors.APIError(description=f"bad PubAck: {error}"))
            return
        if ack.error is None:
            future.set_result(ack)
            return
        # An odd `error` (no code, a field APIError does not take) raises KeyError or
        # TypeError: the publish's to raise, as `js.publish` would, never the read loop's.
        try:
            nats.js.errors.APIError.from_error(dict(ack.error))  # raises its kind
        except Exception as refused:
            future.set_exception(refused)

    def _expire(self, token: str) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(nats.errors.TimeoutError())

    def _expire_due(self) -> None:
        """Fail the waits past their deadline (oldest first), drop the answered ones and
        those whose caller is gone, and set the timer at the oldest left."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        waiting = self._waiting
        while deadlines:
            deadline, token = deadlines[0]
            future = waiting.get(token)
            if future is not None:
                if not future.done():
                    if deadline > now:
                        break
                    future.set_exception(nats.errors.TimeoutError())
                del waiting[token]
            deadlines.popleft()
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._expire_due)

    def connection_lost(self) -> None:
        """The client lost its connection: what waits now is failed at the reconnect."""
        self._lost.update(self._waiting)

    def connection_back(self) -> None:
        """The client reconnected (its pending buffer already flushed): fail each wait of a
        publish made before the disconnect, so its caller sends it again now."""
        lost, self._lost = self._lost, set()
        for token in lost:
            waiting = self._waiting.pop(token, None)
            if waiting is not None and not waiting.done():
                waiting.set_exception(AckLostError())
                self.acks_lost += 1

    def pending(self) -> int:
        """Publishes waiting for their acknowledgement (not those whose caller stopped
        waiting, which leave `_waiting` at their deadline)."""
        return sum(not future.done() for future in self._waiting.values())
