"""Heartbeats of held task deliveries: each attempt a worker holds is heartbeated
(`in_progress` on each of its deliveries: a delivery that comes back while it runs rides
along) every interval from when it was taken until its result is acknowledged, so its task
stays with this worker. The HTTP bridge heartbeats the deliveries of a batch of results being
sent with one of these too (dagnats/api/bridge_send.py).

One timer per attempt on the event loop (`loop.call_at`), not a task and a sleep per attempt
(made and cancelled for every task, most of which end long before their first beat). When a
beat is due, a task sends it; the next beat is timed from when that send ends, as a loop of
sleeps would. This module sends heartbeats only; it decides nothing about the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from dagnats.runtime.protocols import TaskMessage


class Heartbeat:
    """Heartbeats what `deliveries()` gives at each beat, every `interval_ms`, until `stop`
    (or `cancel`)."""

    __slots__ = ("_deliveries", "_failing", "_handle", "_interval_s", "_log", "_sending")

    def __init__(
        self, deliveries: Callable[[], Sequence[TaskMessage]], interval_ms: int,
        log: logging.Logger,
    ) -> None:  # fmt: skip
        assert interval_ms > 0, interval_ms
        assert deliveries(), "an attempt has at least the delivery that runs it"
        self._deliveries = deliveries  # read at each beat: deliveries that ride along join
        self._interval_s = interval_ms / 1000
        self._log = log
        self._failing = False
        self._sending: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = loop.call_at(
            loop.time() + self._interval_s, self._due
        )

    def _due(self) -> None:
        self._handle = None
        self._sending = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        for message in self._deliveries():
            try:
                await message.in_progress()
            except Exception as error:
                if not self._failing:  # once per task: the connection logs the outage
                    self._log.warning("heartbeat failed: %s", error)
                self._failing = True
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self._interval_s, self._due)

    async def stop(self) -> None:
        """No more beats; a beat being sent is cancelled and waited for (none is sent after
        the attempt's acks). Returns at once when no beat is being sent (most tasks)."""
        sending = self.cancel()
        if sending is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            self._cancel_timer()  # (a send that ended just before its cancellation)

    def cancel(self) -> asyncio.Task[None] | None:
        """No more beats, without waiting: the beat being sent (cancelled), if any."""
        self._cancel_timer()
        sending, self._sending = self._sending, None
        if sending is None or sending.done():
            return None
        sending.cancel()
        return sending

    def _cancel_timer(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
