"""The engine's fetches of its commands through a standing pull (runtime/task_polls).

`CommandPull.fetch` keeps a `StandingPull` of the engine's consumer asked for `credit_max`
commands (one request stays on the server, asked again when half its credit is used, before a
wait would outlast it, and at once after a reconnect: runtime/pull_credit), waits for the
first command, then takes what came (and, for at most `standing_pull_more_wait_ms`, what the
last one's pending count says is on its way). A busy engine sends a pull request per ~128
commands, an idle one a request every few seconds, where a long poll per fetch cost a request
per command in a chain. The commands are read raw in the client's read loop
(`RawTaskMessage`: no nats-py `Msg`, headers parsed when read).

Handed over as it comes: with a `dispatch` (the engine's, while it has no batch in flight), what
the pull brings is handed to it in the client's read loop once nothing more is on its way (a
chain's command: at once), so its handling starts in the next loop iteration; a fetch then
returns [] and the engine looks at its limit before it takes more. A fetch waiting for more of
a burst (`_take`) holds what it took: nothing is handed over meanwhile (a run's commands stay
in order).

What came and no fetch took yet waits here (`held`): the engine sends it progress acks
beside the commands it handles (command_pump.py `keep_in_progress`), so a command that came
while the engine's window was full does not run out its ack wait and come again. At close,
the pull's inbox is unsubscribed first (the server drops the requests) and what was held or
on its way is given back with a nak, for another engine at once.

Statuses: a 408 ends a request (task_polls); a 409 (a conflict: the consumer deleted or moved
to another leader, the server shutting down) forgets the requests and is asked again once in a
waiting fetch (a second ends it with what came); any other status raises `APIError` from a
fetch that took nothing (nats-py's fetch does the same), else from the next one.

This module publishes pull requests and naks what it gives back; it decodes no payload.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sized
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.task_polls import StandingPull, give_back, pull_expires_ms
from dagnats.runtime.wakeup import Wakeup

CONFLICT_STATUS = 409
log = logging.getLogger("dagnats.engine")


class Dispatch(Protocol):
    """Where what the pull brings is handed over as it comes (the engine's: `WhenIdle`)."""

    def ready(self) -> bool:
        """Whether a batch handed over now would be taken (False: at a limit)."""
        ...

    def __call__(self, messages: list[TaskMessage]) -> None:
        """Take a batch (asked only when `ready`)."""
        ...


class CommandPull:
    """Fetches of `subscription`'s consumer through a standing pull of up to `credit_max`
    messages."""

    def __init__(
        self,
        subscription: JetStreamContext.PullSubscription,
        *,
        credit_max: int,
        expires_ms: int = pull_expires_ms,
    ) -> None:
        assert 1 <= credit_max <= settings.fetch_batch_max, credit_max
        self._wakeup = Wakeup()
        self.pull = StandingPull(
            subscription._nc, subscription._nms, credit_max, self._changed, expires_ms
        )
        self._held: deque[TaskMessage] = deque()
        self._error: Exception | None = None
        self.dispatch: Dispatch | None = None  # (the engine's, handed what came at once)
        self.dispatched = 0  # batches handed to `dispatch`, in all
        self._taking = False  # a fetch holds messages it took and has not returned yet

    @property
    def requests(self) -> int:
        """Pull requests sent, in all."""
        return self.pull.requests

    def held(self) -> list[TaskMessage]:
        """What came and no fetch took yet."""
        self._collect()
        return list(self._held)

    async def fetch(self, batch: int, timeout_ms: int) -> list[TaskMessage]:
        """Up to `batch` messages, waiting at most timeout_ms for the first; [] if none came.

        Raises:
            nats.js.errors.APIError: the server answered with an error status (not a 408 or
                409) before any message came.
            nats.errors.ConnectionClosedError: the connection is closed.
        """
        assert 1 <= batch <= settings.fetch_batch_max, batch
        assert 0 < timeout_ms <= settings.fetch_timeout_ms_max, timeout_ms
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        conflicts = 0
        dispatched = self.dispatched
        while True:
            self._collect()
            if self.dispatched != dispatched and self._error is None:
                return []  # (some handed to `dispatch` meanwhile: the caller's limit first)
            error, self._error = self._error, None
            if error is not None:
                conflict = getattr(error, "code", None) == CONFLICT_STATUS
                if self._held or (conflict and conflicts > 0):
                    self._error = None if conflict else error  # (raised by the next fetch)
                    break
                if not conflict:
                    raise error
                conflicts += 1  # (asked again once: the wait goes on under a new request)
            if self.pull.client.is_closed:
                raise nats.errors.ConnectionClosedError
            now = loop.time()
            await self._ask(now, deadline)
            if self._held or now >= deadline:
                break
            await self._wait(min(deadline, now + settings.fetch_closed_check_ms / 1000))
        if self.dispatched != dispatched:
            return []  # (as above: handed over during the ask, the caller's limit first)
        return await self._take(batch, deadline)

    async def _ask(self, now: float, deadline: float) -> None:
        # (a wait longer than half a request's life is covered by asking again at its 408)
        cover_ms = min(int((deadline - now) * 1000), self.pull.credit.expires_ms // 2)
        count = self.pull.wanted(now, max(cover_ms, 0) + settings.fetch_expiry_margin_ms_min)
        if count > 0:
            await self.pull.ask(count)

    async def _take(self, batch: int, deadline: float) -> list[TaskMessage]:
        """Up to `batch` of what is held; after it, what the last one's pending count says is
        on its way (while the credit covers it), waited for at most
        standing_pull_more_wait_ms."""
        self._taking = True  # (no `dispatch` meanwhile: what is taken goes first, in order)
        try:
            return await self._take_more(batch, deadline)
        finally:
            self._taking = False

    async def _take_more(self, batch: int, deadline: float) -> list[TaskMessage]:
        held = self._held
        taken: list[TaskMessage] = []
        loop = asyncio.get_running_loop()
        more_until = min(deadline, loop.time() + settings.standing_pull_more_wait_ms / 1000)
        while len(taken) < batch:
            if held:
                taken.append(held.popleft())
                continue
            if not taken or self.pull.credit.pending <= 0 or loop.time() >= more_until:
                break
            if getattr(taken[-1], "num_pending", 0) <= 0:
                break
            try:
                await self._wait(more_until)
            except BaseException:  # (cancelled: what was taken stays held, in order)
                held.extendleft(reversed(taken))
                raise
            self._collect()
        return taken

    def _changed(self) -> None:
        """The pull changed (in the client's read loop): hand what came to `dispatch` now
        when nothing more is on its way (the last one's pending count, the credit: as `_take`
        waits) and no fetch is taking, so a command is handled in the loop iteration after
        its message came (its group's task), not after a fetch's wake and then its task's
        start. Then the waiting fetch is woken (it returns [], its caller looking at its
        limit before it takes more); at the limit (`dispatch.ready()` False), a fetch takes
        what came."""
        dispatch = self.dispatch
        if dispatch is not None and not self._taking and dispatch.ready():
            self._collect()
            held = self._held
            if held and self._error is None and self._complete(held[-1]):
                count = min(len(held), settings.command_batch_max)
                batch = [held.popleft() for _ in range(count)]
                try:
                    dispatch(batch)
                except Exception as error:  # (raised here, it would end the read loop)
                    log.exception("commands not handed over; the next fetch raises")
                    held.extendleft(reversed(batch))
                    self._error = error
                else:
                    self.dispatched += 1
        self._wakeup.wake()

    def _complete(self, last: TaskMessage) -> bool:
        """Whether nothing more is on its way after `last` (`_take` would not wait)."""
        return (
            len(self._held) >= settings.command_batch_max
            or self.pull.credit.pending <= 0
            or getattr(last, "num_pending", 0) <= 0
        )

    def _collect(self) -> None:
        arrived, error = self.pull.take()
        self._held.extend(arrived)
        if error is not None:
            self._error = error

    async def _wait(self, until: float) -> None:
        """Until the pull changes (a message, a status, a reconnect) or `until` (loop time)."""
        if not self.pull.arrived and self.pull.error is None:
            await self._wakeup.wait(until)

    async def close(self) -> int:
        """Stop asking (the server drops the requests) and give back, with a nak, what came
        and no fetch took; how many."""
        self.dispatch = None
        self._collect()
        held = [*self._held, *await self.pull.close()]
        self._held.clear()
        return await give_back(held)


class WhenIdle:
    """The engine's `Dispatch`: a batch handed over is scheduled at once (its future kept in
    `in_flight` until done) while no batch is in flight (a chain's command), until `stop`. A
    busy engine's commands go the fetch's way, batched as they come while it works (handed
    over one by one, a loaded engine's batches were smaller and more: bench.throughput lost
    5-10%)."""

    def __init__(
        self, in_flight: set[asyncio.Future[Any]], stop: asyncio.Event,
        schedule: Callable[[list[TaskMessage]], asyncio.Future[Any]], window: Sized = (),
    ) -> None:  # fmt: skip
        self.in_flight = in_flight
        self.stop = stop
        self.schedule = schedule
        # The commands in hand (the engine's window): a batch whose gather ended early (a
        # run's group raised) leaves its other runs' commands there with nothing in flight.
        self.window = window

    def ready(self) -> bool:
        return not self.in_flight and not self.window and not self.stop.is_set()

    def __call__(self, messages: list[TaskMessage]) -> None:
        assert messages and self.ready(), len(messages)
        batch = self.schedule(messages)
        self.in_flight.add(batch)
        batch.add_done_callback(self.in_flight.discard)


__all__ = ["CommandPull", "Dispatch", "WhenIdle"]
