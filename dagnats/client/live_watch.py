"""Watching a run's history as it is stored, through a core subscription (no consumer).

The history stream republishes each message it stores on `dagnats.stored.<run_id>`
(runtime/resources.py `history_republish`), with headers naming the message's stream
sequence (`Nats-Sequence`) and the run's message before it (`Nats-Last-Sequence`, 0 for its
first). A `LiveWatch` is one core subscription to its run's subject: opening and closing it
asks nats-server nothing (an ordered consumer per watch cost nats-server about 0.7 ms of CPU
to make and delete, more than all the other messages of a 1-step run), and a message reaches
it as soon as it is stored. Only stored messages are republished: a publish the stream
refused (an engine's append that lost to another's) never reaches a watch.

What a core subscription can miss, the watch reads from the stream (`JetStreamEventLog.read`,
after the last sequence it gave, at most `live_read_messages_max` messages a read):
- before a message whose `Nats-Last-Sequence` is not the last sequence given: a gap
  (messages stored before the subscription existed, or dropped on the way);
- what the run holds already, at once, when it opens with `stored=True` (a `wait` for a run
  this client did not start; `start` opens its watch before it sends the StartRun);
- after a reconnect (what was published while the connection was down never comes: the
  watch is woken by the reconnect, `js_publish.listen`), and after `live_check_s` without a
  message, then twice as long each time up to
  `live_check_s_max` (a message lost with nothing after it, its run's end say, is found).
A message at or before the last sequence given is skipped (a read already gave it). No read
is made while the connection is down (its return wakes the watch); a read that fails (the
server went away meanwhile) or runs past the caller's deadline keeps what it read, and the
watch reads again after the next silence or reconnect: a wait across an outage goes on.

A `wait` without an `on_update` of its caller's lets the watch fold for it (`fold_into`, a
client/watches.Fold): each message received in order (its `Nats-Last-Sequence` the last
sequence given) while nothing is held or being read is decoded and folded in the read loop,
and the waiter is woken once, at the run's end, not once per message (a future, a timer and
a task switch each). Anything else (a gap, messages held before the fold began, a read under
way) goes through `next` as before; what does not decode or fold is raised by `next`, never
in the read loop.

`open_watch` gives a `LiveWatch` when the history stream republishes as expected (asked
once per connection), else a `RunWatch` (an ordered consumer, client/watches.py), so a
deployment whose history stream has no `republish` yet works as before. This module
subscribes and reads; it writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dagnats.client.watches import Fold, RunWatch, Seen, Watch
from dagnats.runtime.js_publish import listen
from dagnats.runtime.log import HistoryReadError, JetStreamEventLog
from dagnats.runtime.log_read import header_int, router
from dagnats.runtime.parked import decode_message
from dagnats.runtime.resources import HISTORY_STREAM, republishes, stored_subject
from dagnats.runtime.wakeup import Wakeup

live_check_s: Final = 0.5  # silence before the watch reads the stream once (then doubled)
live_check_s_max: Final = 4.0  # the longest silence between two reads of a quiet run
live_read_messages_max: Final = 1_024  # messages one read of the stream holds (memory bound)
live_read_s_min: Final = 0.1  # the shortest time a read is given (a deadline nearly passed)
live_pending_messages_max: Final = 65_536  # a watch holds at most (then drops: a read)
live_pending_bytes_max: Final = 64 * 1024 * 1024
SEQUENCE_AT: Final = b"\r\nNats-Sequence: "  # in a republished message's raw headers
LAST_SEQUENCE_AT: Final = b"\r\nNats-Last-Sequence: "
# (its stream sequence, the run's message before it, its data); sequence 0: none usable
Incoming = tuple[int, int, bytes]
NO_SEQUENCES: Final = (0, -1)

log = logging.getLogger("dagnats.client")
# Whether each connection's history stream republishes (asked once per connection).
_republishing: weakref.WeakKeyDictionary[NatsClient, bool] = weakref.WeakKeyDictionary()


async def open_watch(
    js: JetStreamContext, run_id: str, after_seq: int = 0, *, stored: bool = True
) -> Watch:
    """A watch of the run's history messages after `after_seq`: live (a core subscription)
    where the history stream republishes, else an ordered consumer. `stored=False`: the
    caller knows the run holds nothing after `after_seq` yet (the first read waits for
    `live_check_s` of silence)."""
    if await republishing(js):
        return await LiveWatch.open(js, run_id, after_seq, stored=stored)
    return await RunWatch.open(js, run_id, after_seq)


async def republishing(js: JetStreamContext) -> bool:
    """Whether the history stream republishes its messages as `LiveWatch` expects (one
    stream info per connection; a failed one is asked again next time)."""
    known = _republishing.get(js._nc)
    if known is None:
        try:
            info = await js.stream_info(HISTORY_STREAM)
        except (nats.errors.Error, nats.js.errors.Error):
            return False
        known = _republishing[js._nc] = republishes(info.config)
    return known


class LiveWatch:
    """History messages of one run after `last_seq`, as they are stored (module docstring)."""

    def __init__(
        self, run_id: str, js: JetStreamContext, subscription: Subscription, after_seq: int,
        stored: bool,
    ) -> None:  # fmt: skip
        assert after_seq >= 0, after_seq
        self.run_id = run_id
        self.seen: list[Seen] = []  # read by `start`, handed to `wait` first
        self.closed = False
        self.last_seq = after_seq  # of the last message given
        self.reads = 0  # reads of the stream that found messages (gaps, checks)
        self._js = js
        self._subscription = subscription
        self._history: JetStreamEventLog | None = None
        self._read: deque[Seen] = deque()  # read from the stream, not given yet
        self._check_s = live_check_s
        self._check_at = time.monotonic() + live_check_s  # (a silence this long: a read)
        self._read_now = stored  # a read is due as soon as the connection is up
        self._reconnects = self._reconnect_count()
        # Received, not given yet (read raw in the client's read loop, runtime/log_read
        # router: no `Msg` and no header dict per message), at most live_pending_*_max.
        self._incoming: deque[Incoming] = deque()
        self._incoming_bytes = 0
        # A `wait`'s fold, fed in the read loop with each message received in order while
        # nothing is held or being read (the caller is woken at the run's end, not per
        # message); what it could not fold (a decode error, a broken invariant) `next` raises.
        self._fold: Fold | None = None
        self._failure: Exception | None = None
        self._reading = False  # a read of the stream is under way (`_read_stored`)
        self._wakeup = Wakeup()
        router(js._nc).handlers[subscription._id] = self._on_message
        listen(js._nc, self)

    @classmethod
    async def open(
        cls, js: JetStreamContext, run_id: str, after_seq: int = 0, *, stored: bool = True
    ) -> LiveWatch:
        subscription = await js._nc.subscribe(stored_subject(run_id))
        return cls(run_id, js, subscription, after_seq, stored)

    def _reconnect_count(self) -> int:
        return int(self._js._nc.stats["reconnects"])

    def connection_lost(self) -> None:
        pass  # (what is missed meanwhile is read once the connection is back)

    def connection_back(self) -> None:
        """Wake a `next` waiting for a message: it reads what was stored meanwhile (as after
        a gap)."""
        if not self.closed:
            self._read_now = True
            self._wakeup.wake()

    def fold_into(self, fold: Fold | None) -> None:
        """Fold each message received in order into `fold` in the read loop (module
        docstring), waking `next` at the run's end; None: hold them for `next` again."""
        self._fold = fold

    async def _on_message(
        self, _subject: bytes, _reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """A republished message (in the read loop): folded at once when a `wait` folds and
        it is the next one, else held for `next`; one beyond the bound is dropped, and the
        stream is read instead."""
        seq, last_seq = _sequences(headers)
        fold = self._fold
        if (
            fold is not None
            and not (self._incoming or self._read or self._reading)
            and seq > self.last_seq == last_seq
            and not fold.ended
            and self._failure is None
        ):
            self._fold_received(fold, seq, data)
            return
        if (
            len(self._incoming) >= live_pending_messages_max
            or self._incoming_bytes + len(data) > live_pending_bytes_max
        ):
            self._read_now = True
        else:
            self._incoming.append((seq, last_seq, data))
            self._incoming_bytes += len(data)
        self._wakeup.wake()

    def _fold_received(self, fold: Fold, seq: int, data: bytes) -> None:
        """Fold the next message in the read loop; wake `next` once the run ended (or the
        fold failed: `next` raises the error, never the read loop)."""
        try:
            ended = fold.add(seq, decode_message(self.run_id, seq, data))
        except Exception as error:  # (raised to the caller by `next`, not in the read loop)
            self._failure = error
            self._wakeup.wake()
            return
        self._give_seq(seq)
        if ended:
            self._wakeup.wake()

    async def next(self, deadline: float) -> Seen | None:
        """The next decision, or None when the monotonic `deadline` passes first.

        Raises:
            RunParkedError: the message does not decode (naming the run and the sequence).
        """
        assert not self.closed, f"watch of {self.run_id} is closed"
        while True:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._fold is not None and self._fold.ended:
                return None  # (folded in the read loop: the caller's fold has its end)
            if self._read:
                return self._give(self._read.popleft())
            now = time.monotonic()
            if now >= deadline:
                return None
            connected = self._js._nc.is_connected
            if connected and self._read_due(now):
                await self._read_stored(now, deadline)
                continue
            # (while the connection is down, no read: its return wakes the watch)
            until = min(deadline, self._check_at) if connected else deadline
            incoming = await self._receive(until - now)
            if incoming is None:
                continue  # (the time is up, or a read is due)
            seq, last_seq, data = incoming
            if seq and seq <= self.last_seq:
                continue  # given already, by a read of the stream
            if not seq or last_seq != self.last_seq:
                self._read_now = True  # the gap, and this message with it, from the stream
                continue
            return self._give((seq, decode_message(self.run_id, seq, data)))

    def _read_due(self, now: float) -> bool:
        """Whether to read the stream now: a gap, more than one read held, a reconnect, or
        a silence of `_check_s`."""
        reconnected = self._reconnect_count() != self._reconnects
        return self._read_now or reconnected or now >= self._check_at

    def _give(self, item: Seen) -> Seen:
        self._give_seq(item[0])
        return item

    def _give_seq(self, seq: int) -> None:
        assert seq > self.last_seq, (seq, self.last_seq)
        self.last_seq = seq
        self._check_s = live_check_s
        self._check_at = time.monotonic() + live_check_s

    async def _receive(self, timeout_s: float) -> Incoming | None:
        """The next message received within `timeout_s` (None: none came, or a wake: a
        reconnect or a drop made a read due)."""
        incoming = self._incoming
        if not incoming and timeout_s > 0:
            await self._wakeup.wait(asyncio.get_running_loop().time() + timeout_s)
        if not incoming or (self._fold is not None and self._fold.ended):
            return None  # (or the fold ended in the read loop meanwhile: `next` says so)
        item = incoming.popleft()
        self._incoming_bytes -= len(item[2])
        return item

    async def _read_stored(self, now: float, deadline: float) -> None:
        """Read what the run's history holds after the last sequence given (at most
        `live_read_messages_max`: another read is due at once when there is more), within
        the caller's `deadline`. A read that fails keeps what it read; the next is due after
        the next silence, or at a reconnect."""
        reconnects = self._reconnect_count()
        if self._history is None:
            self._history = JetStreamEventLog(self._js)
        held = len(self._read)
        self._check_s = min(self._check_s * 2, live_check_s_max)
        self._check_at = now + self._check_s
        self._read_now = False
        self._reading = True  # (meanwhile, messages received are held, not folded)
        try:
            async with asyncio.timeout(max(live_read_s_min, deadline - now)):
                await self._read_into(self._history)
        except (nats.errors.Error, nats.js.errors.Error, HistoryReadError, TimeoutError) as error:
            log.debug("run %s: watch could not read the history (%s)", self.run_id, error)
            return
        finally:
            self._reading = False
        self._reconnects = reconnects
        self._read_now = len(self._read) >= live_read_messages_max
        if len(self._read) > held:
            self.reads += 1

    async def _read_into(self, history: JetStreamEventLog) -> None:
        read = history.read(self.run_id, after_seq=self.last_seq)
        async with contextlib.aclosing(read) as messages:
            async for seq, data in messages:
                self._read.append((seq, decode_message(self.run_id, seq, data)))
                if len(self._read) >= live_read_messages_max:
                    break

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._fold = None
        self._incoming.clear()
        self._incoming_bytes = 0
        router(self._js._nc).handlers.pop(self._subscription._id, None)
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.unsubscribe()


def _sequences(headers: bytes | None) -> tuple[int, int]:
    """(its stream sequence, the run's message before it) from a republished message's raw
    headers; NO_SEQUENCES when they are missing or not numbers (read from the stream
    instead). A missing `Nats-Last-Sequence` is 0 (the run's first message)."""
    if headers is None:
        return NO_SEQUENCES
    seq = header_int(headers, SEQUENCE_AT)
    if seq is None or seq <= 0:
        return NO_SEQUENCES
    if headers.find(LAST_SEQUENCE_AT) < 0:
        return seq, 0
    last_seq = header_int(headers, LAST_SEQUENCE_AT)
    return NO_SEQUENCES if last_seq is None else (seq, last_seq)
