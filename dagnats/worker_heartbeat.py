"""Heartbeats of held task deliveries: each attempt a worker holds is heartbeated
(`in_progress` on each of its deliveries: a delivery that comes back while it runs rides
along) every interval from when it was taken until its result is acknowledged, so its task
stays with this worker. The HTTP bridge heartbeats the deliveries of a batch of results being
sent with one of these too (dagnats/api/bridge_send.py).

One timer for all the beats of a `Heartbeats` (a worker's: every attempt beats at the same
interval, so their due times come in the order they were set), not a timer per attempt: an
attempt's `Beat` is an entry in a queue, and stopping it (most attempts end long before their
first beat) marks it stopped, with no timer to cancel. When a beat is due, a task sends it;
the next beat is timed from when that send ends, as a loop of sleeps would. Stopped entries
leave the queue at its head, or all at once when they outnumber the live ones
(`stopped_kept_max`). This module sends heartbeats only; it decides nothing about the attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from dagnats.runtime.protocols import TaskMessage

stopped_kept_max: Final = 64  # stopped entries kept in the queue beyond the live ones


class Heartbeats:
    """The beats of many attempts at one interval, on one timer (at the oldest due)."""

    __slots__ = ("_handle", "_interval_s", "_live", "_queue", "interval_ms", "log", "loop")

    def __init__(self, interval_ms: int, log: logging.Logger) -> None:
        assert interval_ms > 0, interval_ms
        self.interval_ms = interval_ms
        self.loop = asyncio.get_running_loop()  # its timer's (a worker served again in a new
        # loop makes new heartbeats: a timer of a loop that is gone would never fire)
        self._interval_s = interval_ms / 1000
        self.log = log
        self._queue: collections.deque[tuple[float, Beat]] = collections.deque()
        self._handle: asyncio.TimerHandle | None = None
        self._live = 0  # beats started and not stopped

    def start(self, deliveries: Callable[[], Sequence[TaskMessage]]) -> Beat:
        """Heartbeat what `deliveries()` gives at each beat until the beat is stopped."""
        return Beat(self, deliveries)

    def live(self) -> int:
        return self._live

    def queued(self) -> int:
        """Entries in the queue (live and stopped)."""
        return len(self._queue)

    def close(self) -> None:
        """Forget every entry and cancel the timer (the heartbeats of one beat: nothing of
        it stays held by the loop once it is stopped)."""
        self._queue.clear()
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _schedule(self, beat: Beat) -> None:
        loop = self.loop
        due = loop.time() + self._interval_s  # (>= every due queued: the queue stays in order)
        queue = self._queue
        while queue and queue[0][1].stopped:
            queue.popleft()
        queue.append((due, beat))
        if len(queue) > self._live + stopped_kept_max:
            self._queue = collections.deque(entry for entry in queue if not entry[1].stopped)
        if self._handle is None:
            self._handle = loop.call_at(self._queue[0][0], self._fire)

    def _fire(self) -> None:
        """Send the beats that are due; the timer again at the oldest left."""
        self._handle = None
        loop = self.loop
        now = loop.time()
        queue = self._queue
        while queue and (queue[0][1].stopped or queue[0][0] <= now):
            _, beat = queue.popleft()
            if not beat.stopped:
                beat.sending = loop.create_task(beat.send())
        if queue:
            self._handle = loop.call_at(queue[0][0], self._fire)


class Beat:
    """One attempt's heartbeat (`Heartbeats.start`), until `stop` (or `cancel`)."""

    __slots__ = ("_beats", "_deliveries", "_failing", "sending", "stopped")

    def __init__(
        self, beats: Heartbeats, deliveries: Callable[[], Sequence[TaskMessage]]
    ) -> None:
        assert deliveries(), "an attempt has at least the delivery that runs it"
        self._beats = beats
        self._deliveries = deliveries  # read at each beat: deliveries that ride along join
        self._failing = False
        self.stopped = False
        self.sending: asyncio.Task[None] | None = None
        beats._live += 1
        beats._schedule(self)

    async def send(self) -> None:
        """One beat, then the next one timed (unless stopped meanwhile)."""
        for message in self._deliveries():
            try:
                await message.in_progress()
            except Exception as error:
                if not self._failing:  # once per task: the connection logs the outage
                    self._beats.log.warning("heartbeat failed: %s", error)
                self._failing = True
        self.sending = None
        if not self.stopped:
            self._beats._schedule(self)

    async def stop(self) -> None:
        """No more beats; a beat being sent is cancelled and waited for (none is sent after
        the attempt's acks). Returns at once when no beat is being sent (most tasks)."""
        sending = self.cancel()
        if sending is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sending

    def cancel(self) -> asyncio.Task[None] | None:
        """No more beats, without waiting: the beat being sent (cancelled), if any."""
        if not self.stopped:
            self.stopped = True
            self._beats._live -= 1
        sending, self.sending = self.sending, None
        if sending is None or sending.done():
            return None
        sending.cancel()
        return sending


class Heartbeat(Beat):
    """A beat on a timer of its own (the bridge's batch of results being sent)."""

    __slots__ = ()

    def __init__(
        self, deliveries: Callable[[], Sequence[TaskMessage]], interval_ms: int,
        log: logging.Logger,
    ) -> None:  # fmt: skip
        super().__init__(Heartbeats(interval_ms, log), deliveries)

    def cancel(self) -> asyncio.Task[None] | None:
        """`Beat.cancel`, and the timer cancelled: a timer left to its due time would hold
        the batch (its deliveries) an interval longer."""
        sending = super().cancel()
        self._beats.close()
        return sending
