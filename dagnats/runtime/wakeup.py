"""One waiter at a time, woken by whoever has news for it or at a deadline: a future and a
timer, no task and no `asyncio.Event` (whose `wait` is a task-level timeout when bounded).

Used by the readers that are fed in the client's read loop (runtime/standing_pull,
client/live_watch): the read loop calls `wake`, the reader `wait`s.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """`wait(until)` returns when `wake()` is called or at loop time `until`."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, until: float) -> None:
        """Until `wake` or `until` (loop time), whichever comes first."""
        assert self._waiter is None or self._waiter.done(), "one waiter at a time"
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(until, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["Wakeup"]
