"""A worker's handler slots: at most `count` attempts run their handlers at once.

`asyncio.Semaphore` did the same, but `async with` on it is three coroutines and, in 3.11, a
generator over the waiters to tell whether it is free (`locked`), for each task: most of a
no-op task's slot cost. Here a free slot is taken by a plain call (`take_now`); only a task
that finds none waits (`take`), in the order they came; a slot given back goes to the
oldest waiter, or is counted free. A waiter cancelled after it was handed a slot gives it on.

The engine bounds its effects in flight (`effects_in_flight_max`) with the same class.
This module counts slots; it does no I/O.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class HandlerSlots:
    """`count` slots, taken by `take_now` (free one) or `take` (wait for one), given back by
    `give`."""

    __slots__ = ("_waiters", "count", "free")

    def __init__(self, count: int) -> None:
        assert count >= 1, count
        self.count = count
        self.free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        """Take a free slot (True), unless none is free or tasks wait for one (False)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting for one (after those that waited before) if none is free.

        Raises:
            asyncio.CancelledError: cancelled while waiting (holding no slot).
        """
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot, then cancelled before it ran: give it on
            else:
                self._forget(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the oldest waiter, else counted free."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        assert self.free < self.count, (self.free, self.count)
        self.free += 1

    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
