"""One live watch of a run's history, shared by `Client.start` and `Client.wait`.

`start` opens the watch as it sends a new run's StartRun (the watch reads the run's history
from its first message, so it misses nothing appended before its consumer exists: the start
need not wait for the consumer), reads that first decision from it, and leaves it open for
`wait`: starting and waiting for a new run costs one consumer, not one each. The decisions
`start` read are kept (`seen`) and given to `wait` first, so `wait` folds the whole history
(a `Fold`, which a live watch may feed as it receives: client/live_watch.py).
A watch is a live read of the lean push consumer (runtime/log_read.LiveReader): no nats-py
`Msg`, header parsing or `asyncio.wait_for` per message.

`ParkedWatches` keeps the watches of the runs started and not yet waited for, a bounded
number (`parked_watches_max`): the oldest is closed when one more comes (its `wait` then opens
a watch of its own). `start` opens the watch while it asks for the workflow and whether the
run exists (`in_parallel`: one round trip's wait, not three); a `wait` that has its answer
closes its watch in the background (`ClosingWatches`: the consumer's delete is a round trip
the caller need not wait for). This module subscribes to the history stream; it writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

import nats.errors
from nats.js import JetStreamContext

from dagnats.runtime.log_read import LiveReader
from dagnats.runtime.parked import decode_message
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel.events import Decision
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal

parked_watches_max: Final = 64  # watches of started runs kept open for their `wait`
# Watches of ended waits whose consumer delete is still under way (`ClosingWatches`); one
# more waits for the oldest to finish.
closing_watches_max: Final = 64

Seen = tuple[int, Decision]
A = TypeVar("A")
B = TypeVar("B")


class Watch(Protocol):
    """A watch of one run's history (an ordered consumer here, `live_watch.LiveWatch`)."""

    run_id: str
    seen: list[Seen]
    closed: bool
    last_seq: int

    async def next(self, deadline: float) -> Seen | None: ...

    def fold_into(self, fold: Fold | None) -> None:
        """Let the watch fold decisions into `fold` as they come (None: no more)."""

    async def close(self) -> None: ...


class Fold:
    """A run's state folded from its decisions in order, until it ends at or after
    `known_seq` (an end before the history's last message at the wait's start is a reopened
    run's earlier end: it goes on)."""

    __slots__ = ("ended", "known_seq", "on_update", "state")

    def __init__(
        self, known_seq: int, on_update: Callable[[RunState, Decision], None] | None = None
    ) -> None:
        assert known_seq >= 0, known_seq
        self.state: RunState = INITIAL_STATE
        self.known_seq = known_seq
        self.on_update = on_update
        self.ended = False

    def add(self, seq: int, decision: Decision) -> bool:
        """Fold one decision; whether the run has ended."""
        assert not self.ended, f"{self.state.run_id} ended before sequence {seq}"
        state = self.state
        for event in decision.events:
            state = evolve(state, event)
        self.state = state
        if self.on_update is not None:
            self.on_update(state, decision)
        self.ended = seq >= self.known_seq and is_terminal(state)
        return self.ended


class RunWatch:
    """History messages of one run after `after_seq`, as they are appended: a live read by
    the lean push consumer (runtime/log_read.LiveReader), which makes its consumer again
    after a gap, a reconnect or a silence, from the message after the last it received."""

    def __init__(self, run_id: str, reader: LiveReader, after_seq: int = 0) -> None:
        self.run_id = run_id
        self._reader = reader
        self.seen: list[Seen] = []  # read by `start`, handed to `wait` first
        self.closed = False
        self.last_seq = after_seq  # of the last message given

    @classmethod
    async def open(cls, js: JetStreamContext, run_id: str, after_seq: int = 0) -> RunWatch:
        """A watch whose consumer exists (one round trip).

        Raises:
            nats.errors.Error, nats.js.errors.Error: the consumer was not made.
        """
        reader = LiveReader(js, HISTORY_STREAM, history_subject(run_id), after_seq)
        try:
            await reader.open()
        except BaseException:
            await reader.close()
            raise
        return cls(run_id, reader, after_seq)

    @property
    def reopened(self) -> int:
        """Consumers made again (after a gap, a reconnect, a silence or a full buffer)."""
        return self._reader.restarts + self._reader.overflows

    async def next(self, deadline: float) -> Seen | None:
        """The next decision, or None when the monotonic `deadline` passes first.

        Raises:
            RunParkedError: the message does not decode (naming the run and the sequence).
        """
        assert not self.closed, f"watch of {self.run_id} is closed"
        while True:
            item = await self._reader.next(deadline)
            if item is None:
                return None
            seq, data = item
            if seq <= self.last_seq:
                continue  # given already (never, by the reader's making: kept as a guard)
            self.last_seq = seq
            return seq, decode_message(self.run_id, seq, data)

    def fold_into(self, fold: Fold | None) -> None:
        pass  # (its messages come through `next`)

    async def close(self) -> None:
        """Unsubscribe, and delete the consumer now (awaiting the server's reply): the server
        would keep an idle ephemeral consumer until its inactivity threshold, and a stream
        holds at most 1,000 consumers (a client starting runs quickly would reach that)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(nats.errors.Error):
            await self._reader.close(confirmed=True)


async def fold_until_end(
    watch: Watch,
    deadline: float,
    on_update: Callable[[RunState, Decision], None] | None,
    known_seq: int = 0,
) -> RunState:
    """Fold the watched run's decisions (those `start` read first) until it ends at or
    after `known_seq` or the deadline passes; the state reached. Without an `on_update` of
    the caller's, the watch may fold what it receives as it receives it (a `LiveWatch`
    does, in the client's read loop: no wake of the caller per message)."""
    fold = Fold(known_seq, on_update)
    seen, watch.seen = watch.seen, []
    for seq, decision in seen:
        if fold.add(seq, decision):
            return fold.state
    if on_update is None:
        watch.fold_into(fold)
    try:
        while not fold.ended and (item := await watch.next(deadline)) is not None:
            fold.add(*item)
    finally:
        watch.fold_into(None)
    return fold.state


class ParkedWatches:
    """Open watches of started runs, waiting for their `wait` (a bounded LRU)."""

    def __init__(self, size_max: int = parked_watches_max) -> None:
        assert size_max >= 0, size_max
        self.size_max = size_max
        self._watches: OrderedDict[str, Watch] = OrderedDict()

    async def park(self, watch: Watch) -> None:
        """Keep `watch` for its run's `wait`; close the oldest beyond the bound."""
        previous = self._watches.pop(watch.run_id, None)
        if previous is not None:
            await previous.close()
        self._watches[watch.run_id] = watch
        while len(self._watches) > self.size_max:
            _, oldest = self._watches.popitem(last=False)
            await oldest.close()
        assert len(self._watches) <= self.size_max

    def take(self, run_id: str) -> Watch | None:
        """The parked watch of the run (now the caller's to close), or None."""
        return self._watches.pop(run_id, None)

    async def close(self) -> None:
        while self._watches:
            _, watch = self._watches.popitem()
            await watch.close()


class ClosingWatches:
    """Watches of ended waits, closed in the background: `wait` returns its answer without
    waiting for the round trip of its consumer's delete. A bounded number at a time
    (`closing_watches_max`); `wait()` (the client's close) lets those going end."""

    def __init__(self, size_max: int = closing_watches_max) -> None:
        assert size_max >= 1, size_max
        self.size_max = size_max
        self._closing: set[asyncio.Task[None]] = set()
        self._opening: set[asyncio.Task[None]] = set()  # closes waiting for their watch

    async def close_later(self, watch: Watch) -> None:
        """Start closing `watch`; waits only while `size_max` closes are already going."""
        while len(self._closing) >= self.size_max:
            await asyncio.wait(self._closing, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(watch.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        assert len(self._closing) <= self.size_max

    def close_once_open(self, opening: asyncio.Future[Watch]) -> None:
        """Close the watch `opening` gives once it is open (through `close_later`), for a
        caller cancelled while it opened; `wait()` waits for this too."""
        task = asyncio.ensure_future(self._close_opened(opening))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _close_opened(self, opening: asyncio.Future[Watch]) -> None:
        await asyncio.wait({opening})
        if not opening.cancelled() and opening.exception() is None:
            await self.close_later(opening.result())

    def going(self) -> int:
        return len(self._closing)

    async def wait(self) -> None:
        """Until every close started has ended (each bounded by the request timeout)."""
        while going := {t for t in self._closing | self._opening if not t.done()}:
            await asyncio.gather(*going, return_exceptions=True)


async def in_parallel(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, their round trips made at once (`first` in the caller's task, `second`
    in a task of its own, started first); when one fails, the other is cancelled and waited
    for (nothing left running), and the failure raised."""
    two = asyncio.ensure_future(second)
    try:
        return await first, await two
    except BaseException:
        two.cancel()
        await asyncio.gather(two, return_exceptions=True)
        raise


async def ready(value: A) -> A:
    """`value`, as an awaitable (a definition given to `start`: nothing to fetch)."""
    return value


async def discard(opening: asyncio.Future[Watch], closing: ClosingWatches) -> None:
    """Close a watch opened ahead (`Client.start`) that is not needed: the run existed, or
    the start failed. A watch that failed to open leaves nothing to close. The opening is
    not cancelled (a half-made consumer would stay); a caller cancelled while it opens has
    it closed once open (`ClosingWatches.close_once_open`), and its cancel raised."""
    if not opening.done():
        try:
            await asyncio.wait({opening})
        except asyncio.CancelledError:
            closing.close_once_open(opening)
            raise
    if opening.cancelled() or opening.exception() is not None:
        return
    await closing.close_later(opening.result())
