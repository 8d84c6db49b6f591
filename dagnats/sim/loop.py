"""A deterministic asyncio event loop for the simulator: no I/O, no wall clock.

It runs asyncio's own Tasks and Futures (so `gather`, `Semaphore`, `create_task` in the engine
and the worker behave as usual) but has no selector: ready callbacks run in FIFO order, and
timers (`asyncio.sleep` in a handler) live on the loop's own clock, which jumps to the next
timer when nothing is ready. So a simulated seed never waits on the real world, and the same
seed runs the same callbacks in the same order every time.

`run_until_complete` raises `SimulationStalledError` when the awaited coroutine is not done,
nothing is ready and no timer is armed: something awaited an event no simulated component
will ever set (the sim's guarantee that nothing real is awaited).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from kernel.errors import DagnatsError

T = TypeVar("T")
CALLBACKS_PER_RUN_MAX: Final = 100_000_000  # a runaway loop is a bug; stop it loudly
# A timer further out than this on the loop clock is never reached: only something that waits
# forever (the simulated worker's heartbeat task) arms one, so reaching for it is a stall.
DRAIN_ROUNDS_MAX: Final = 16  # rounds of cancelling what a stalled simulation left behind
TIMER_HORIZON_S: Final = 365 * 24 * 3600.0


class _Handle(asyncio.Handle):
    """A ready callback: `asyncio.Handle` without the debug-mode stack capture (this loop is
    never in debug mode), as cheap to make as it can be: the simulator makes millions."""

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
    ) -> None:
        self._context = context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


class SimulationStalledError(DagnatsError):
    """The simulation awaited something that nothing simulated will ever complete."""


class SimLoop(asyncio.AbstractEventLoop):
    """The minimal event loop asyncio's Tasks and Futures need, run in virtual time."""

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._order = itertools.count()
        self._now = 0.0
        self._closed = False
        self._running = False
        self._exception_handler: (
            Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None
        ) = None

    # -- what Tasks and Futures call ---------------------------------------------------

    def time(self) -> float:
        return self._now

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def idle(self) -> bool:
        """Whether no callback is ready to run now (the running one aside)."""
        return not self._ready

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
        self._timers.clear()

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = _Handle(
            callback, args, self, context if context is not None else contextvars.copy_context()
        )
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._now + max(0.0, delay), callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._order), handle))
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # cancelled timers are skipped when they come due

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def set_exception_handler(
        self, handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None
    ) -> None:
        self._exception_handler = handler

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is not None:
            self._exception_handler(self, context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if exception is not None and not isinstance(exception, Exception):
            raise exception  # a BaseException escaping a callback is not to be swallowed

    # -- running ----------------------------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        """Run `future` (a coroutine or future) to its end and return its result.

        Raises:
            SimulationStalledError: it waits on something no simulated component completes.
        """
        assert not self._closed and not self._running, "the loop is closed or running"
        task = asyncio.ensure_future(future, loop=self)
        self._running = True
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            for _ in range(CALLBACKS_PER_RUN_MAX):
                if task.done():
                    break
                if not self._ready and not self._fire_timer():
                    self._abandon()
                    raise SimulationStalledError(
                        "the simulation awaited something nothing simulated will complete "
                        "(real I/O or an event no component sets)"
                    )
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
            else:
                raise SimulationStalledError("the simulation ran too many callbacks")
        finally:
            asyncio.events._set_running_loop(previous)
            self._running = False
        return task.result()

    def drop_timers(self) -> int:
        """Cancel and forget every timer left, and set the clock back to 0: what a finished
        simulation leaves on the loop belongs to its dead world (its workers' heartbeat timers,
        never due), and held by the loop it would keep that world alive, and able to fire, into
        the next one; and the clock it moved would be where the next run's handlers start (a
        handler timing itself with `loop.time()`, or two sleeps that tie, would then depend on
        the runs before it: float sums of another base round otherwise).

        Returns:
            How many timers were still live.
        """
        assert not self._running, "timers are dropped between runs"
        live = 0
        for _, _, handle in self._timers:
            if not handle.cancelled():
                live += 1
                handle.cancel()
        self._timers.clear()
        self._now = 0.0
        return live

    def _abandon(self) -> None:
        """Cancel every unfinished task and let the cancellations run their course, so no
        coroutine is left suspended (and later closed mid-`finally`)."""
        for _ in range(DRAIN_ROUNDS_MAX):
            pending = asyncio.all_tasks(self)  # (asyncio keeps every task it made, weakly)
            if not pending:
                return
            for task in pending:
                task.cancel()
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()

    def _fire_timer(self) -> bool:
        """Jump the loop clock to the next live timer and make it ready; False if none."""
        while self._timers:
            when, _, handle = self._timers[0]
            if handle.cancelled():
                heapq.heappop(self._timers)
                continue
            if when > self._now + TIMER_HORIZON_S:
                return False
            heapq.heappop(self._timers)
            self._now = max(self._now, when)
            self._ready.append(handle)
            return True
        return False
