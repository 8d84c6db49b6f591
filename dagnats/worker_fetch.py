"""The worker's fetch loop: a standing pull per task type, its credit following the free slots.

Each task type has its own durable pull consumer, shared with the other workers of that type
(a single consumer with several filter subjects would be per worker set of types, and a
work-queue stream refuses overlapping consumers), and here a standing pull on it
(runtime/task_polls.py): pull requests for several tasks each that stay on the server, so a
chain's tasks come one after the other with a request standing for many of them (before, a
long poll for one task was sent again after each task: a request per task).

Credit. A type's credit is at most `credit_max = max(1, min(slots, batch_max) // types)` (the
slots free when the loop starts), so all types together never ask for more than the larger
of the slots and the types. Credit is asked only while a slot is free; a type asks for what
`PullCredit.wanted` says (its whole credit when half of it or less stands, its requests
renewed before they expire, `renew_cover_ms`), cut to the free slots that the credit already
standing (of every type) does not cover; a type with none standing gets one whatever the
others hold, so every type is asked for whenever a slot is free (no type starves with more
types than slots: bench/task_types.py). A request ends with its last message or at its
expiry (a 408), after which the type is asked again: a type whose credit covers every free
slot is not asked beside it (a task published in that round trip waits for it).

The bound on held tasks. Whatever comes is handed over at once (`dispatch`); a task beyond
the slots waits for one, heartbeated. Asking never lets the credit standing exceed the free
slots, except by one for a type that had none, asked with a slot free: so at most the other
types' credit comes beyond the slots, and a worker holds at most `held_max(slots, types,
batch_max)` = (types - 1) x credit_max tasks it has not started: none with one task type,
one per other type when it has at least as many types as slots (as before), fewer than
min(slots, batch_max) in between (8 with 16 slots and two types). (A reconnect to a server
that kept the requests of before, a connection drop without a restart, may bring their
credit beside the new requests until they expire.)

Waking. What a pull brings is handed over in its callback (`_changed`, in the client's read
loop), without a look. The loop waits on one event, set when a pull may want credit (half of
it or less standing after what it brought, a 408, an error, a reconnect), at stop, and by
`job_ended` only when the last look left credit unasked for want of a slot: a chain's task
costs no look, a look comes once per half credit. A look asks only the types that may want
credit (`to_ask`: those whose pull brought something, was cut short or failed), and every
type once per `idle_wait_ms` (renewals, requests that ended without their 408), so a look
costs little with many types. A failed request or an error status keeps that type from asking for
`fetch_backoff_ms`. At stop the pulls are closed (their inboxes first: the server drops
their requests) and what they brought that was not handed over is given back with a nak: a
draining worker takes nothing new.

A task queue without standing pulls (only `fetch`) is read the same way, one fetch of the
credit at a time per type (`FetchedPull`).

This module fetches and hands messages over (`dispatch`); it runs no handler and sends
nothing but pull requests and the naks of what it gives back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final, Protocol, runtime_checkable

from dagnats.runtime import settings
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage, TaskQueue
from dagnats.runtime.pull_credit import PullCredit
from dagnats.worker_safety import render_error

fetch_backoff_ms: Final = 500  # after a failed request or an error status, before asking again
idle_wait_ms: Final = 1_000  # longest wait before looking again
renew_cover_ms: Final = idle_wait_ms + 500  # a request ending within this is renewed
fetched_timeout_ms: Final = 250  # one fetch of a queue without standing pulls


def credit_of(slots: int, types: int, batch_max: int) -> int:
    """A task type's credit: its share of the slots (at most batch_max), one at least."""
    assert slots >= 0 and types >= 1 and batch_max >= 1, (slots, types, batch_max)
    return max(1, min(slots, batch_max) // types)


def held_max(slots: int, types: int, batch_max: int) -> int:
    """The most tasks a worker holds that have not started (see the module docstring)."""
    return (types - 1) * credit_of(slots, types, batch_max)


class Pull(Protocol):
    """One task type's standing pull, as the loop drives it (runtime/task_polls.StandingPull,
    `FetchedPull`)."""

    @property
    def credit(self) -> PullCredit: ...

    def wanted(self, now: float, cover_ms: int) -> int: ...

    async def ask(self, count: int) -> None: ...

    def take(self) -> tuple[list[TaskMessage], Exception | None]: ...

    async def close(self) -> list[TaskMessage]: ...


@runtime_checkable
class PullingTaskQueue(Protocol):
    """A task queue with standing pulls (runtime/queue.py `JetStreamTaskQueue`)."""

    async def standing_pull(
        self, task_type: str, *, credit_max: int, on_change: Callable[[], None]
    ) -> Pull: ...


class FetchedPull:
    """`Pull` over a queue with only `fetch`: one fetch of the credit asked at a time."""

    def __init__(
        self, tasks: TaskQueue, name: str, credit_max: int, on_change: Callable[[], None]
    ) -> None:
        self.tasks = tasks
        self.name = name
        self.credit = PullCredit(credit_max, fetched_timeout_ms)
        self.on_change = on_change
        self.arrived: list[TaskMessage] = []
        self.error: Exception | None = None
        self._fetch: asyncio.Task[Sequence[TaskMessage]] | None = None

    def wanted(self, now: float, cover_ms: int) -> int:
        return 0 if self._fetch is not None else self.credit.wanted(now, cover_ms)

    async def ask(self, count: int) -> None:
        assert self._fetch is None, "one fetch at a time"
        self.credit.asked(count, asyncio.get_running_loop().time())
        self._fetch = asyncio.create_task(
            self.tasks.fetch(self.name, batch=count, timeout_ms=fetched_timeout_ms)
        )
        self._fetch.add_done_callback(self._fetched)

    def _fetched(self, fetch: asyncio.Task[Sequence[TaskMessage]]) -> None:
        self._fetch = None
        self.credit.reset()
        if fetch.cancelled():
            return
        error = fetch.exception()
        if isinstance(error, Exception):
            self.error = error
        elif error is None:
            self.arrived.extend(fetch.result())
        self.on_change()

    def take(self) -> tuple[list[TaskMessage], Exception | None]:
        arrived, self.arrived = self.arrived, []
        error, self.error = self.error, None
        return arrived, error

    async def close(self) -> list[TaskMessage]:
        """Let the fetch end (cancelling it would lose what it brings), then what came."""
        fetch = self._fetch
        if fetch is not None:
            await asyncio.wait({fetch}, timeout=2 * fetched_timeout_ms / 1000)
            fetch.cancel()
        arrived, self.arrived = self.arrived, []
        return arrived


class FetchLoop:
    """Fetch tasks of `names` until `stop`, handing each batch to `dispatch`; `free_slots`
    says how many more jobs may start; `wake` is what the loop waits on (set as a pull brings
    something, by `job_ended` when a slot was wanted, and at stop)."""

    def __init__(
        self,
        names: list[str],
        tasks: TaskQueue,
        stop: asyncio.Event,
        *,
        dispatch: Callable[[Sequence[TaskMessage]], None],
        free_slots: Callable[[], int],
        wake: asyncio.Event,
        outage: OutageLog,
        batch_max: int,
    ) -> None:
        assert 1 <= len(names) <= settings.task_types_per_queue_max, len(names)
        assert 1 <= batch_max <= settings.fetch_batch_max, batch_max
        self.names = names
        self.tasks = tasks
        self.stop = stop
        self.dispatch = dispatch
        self.free_slots = free_slots
        self.wake = wake
        self.outage = outage
        self.batch_max = batch_max
        self.credit_max = 1  # a type's credit (`credit_of`, set as the loop starts)
        self.pulls: dict[str, Pull] = {}
        self.to_ask: set[str] = set(names)  # types that may want credit at the next look
        self.full_look_at = 0.0  # loop time of the next look at every type
        self.retry_at: dict[str, float] = {}  # loop time before which a type asks nothing
        self.short = False  # the last look left credit unasked for want of a slot

    async def run(self) -> None:
        """Hand over what the pulls brought and ask for credit where slots are free, then
        wait for the next change (at most idle_wait_ms), until stop."""
        names, turn = self.names, 0
        self.credit_max = credit_of(max(0, self.free_slots()), len(names), self.batch_max)
        stopping = asyncio.create_task(self._wake_at_stop())
        try:
            while not self.stop.is_set():
                self.wake.clear()
                await self._ask(turn)
                turn = (turn + 1) % len(names)
                await wait_set(self.wake, self._look_again_ms())
        finally:
            stopping.cancel()

    async def _ask(self, turn: int) -> None:
        """Ask the types that may want credit (`to_ask`), from `turn` on, for what they want,
        cut to the free slots the credit standing does not cover (one for a type with none
        standing). A type leaves `to_ask` once it has what it wants, and comes back when its
        pull brings something (or at the next full look, every idle_wait_ms: renewals)."""
        names, to_ask = self.names, self.to_ask
        free = self.free_slots()
        self.short = free <= 0
        if free <= 0:
            return  # (what stands still comes; `job_ended` wakes the loop)
        now = asyncio.get_running_loop().time()
        if now >= self.full_look_at:
            to_ask.update(names)
            self.full_look_at = now + idle_wait_ms / 1000
        room: int | None = None  # (summed once a type wants some)
        for offset in range(len(names)):
            name = names[(turn + offset) % len(names)]
            if name not in to_ask or self.retry_at.get(name, 0.0) > now:
                continue
            if self.stop.is_set():
                return
            pull = self.pulls.get(name) or await self._open(name)
            if pull is None:
                continue
            wanted = pull.wanted(now, renew_cover_ms)  # (first: it forgets requests gone)
            pending = pull.credit.pending
            wanted = min(wanted, self.credit_max - pending)
            if wanted <= 0:
                to_ask.discard(name)
                continue
            if room is None:
                room = free - sum(pull.credit.pending for pull in self.pulls.values())
            count = min(wanted, room if pending else max(room, 1))
            if count < wanted:
                self.short = True  # (it stays to ask: a job that ends wakes the loop)
            else:
                to_ask.discard(name)
            if count > 0 and await self._asked(name, pull, count):
                room -= count

    async def _asked(self, name: str, pull: Pull, count: int) -> bool:
        """Ask `pull` for `count`; False when the request failed (a backoff noted)."""
        try:
            await pull.ask(count)
        except Exception as error:
            self.to_ask.add(name)
            self._failed(name, error)
            return False
        return True

    async def _open(self, name: str) -> Pull | None:
        """The type's pull, made (None: it could not be, a backoff noted)."""
        on_change = partial(self._changed, name)
        pull: Pull
        try:
            if isinstance(self.tasks, PullingTaskQueue):
                pull = await self.tasks.standing_pull(
                    name, credit_max=self.credit_max, on_change=on_change
                )
            else:
                pull = FetchedPull(self.tasks, name, self.credit_max, on_change)
        except Exception as error:
            self._failed(name, error)
            return None
        self.pulls[name] = pull
        return pull

    def _changed(self, name: str) -> None:
        """The type's pull brought something (messages, a status, an error, a reconnect):
        hand its messages over now, and wake the loop only when the pull may want credit
        (half of it or less standing: `PullCredit.wanted`) or failed. A task per message no
        longer costs a look (the loop's wake, its timer and future); renewals of requests
        that would expire are the full look's, every idle_wait_ms. Once stopping, what came
        stays in the pull: `end` gives it back.

        The wake is set one loop iteration later (`call_soon`), after the jobs it handed
        over took their first step: a job's first write (a no-op handler's result) goes out
        before the look, not behind it (a look cost ~60 us of the critical path in one task
        of 16 when it ran between a job's publish and the client's flush)."""
        self.to_ask.add(name)
        pull = self.pulls.get(name)
        if pull is None or self.stop.is_set():
            self.wake.set()
            return
        messages, error = pull.take()
        if error is None:
            self.outage.recovered()
        else:
            self._failed(name, error)
        if messages:
            self.dispatch(messages)
        if error is not None or pull.credit.pending <= self.credit_max // 2:
            asyncio.get_running_loop().call_soon(self.wake.set)

    def _failed(self, name: str, error: BaseException) -> None:
        if self.stop.is_set():
            return
        self.outage.failed(f"{name}: {render_error(error)}")
        self.retry_at[name] = asyncio.get_running_loop().time() + fetch_backoff_ms / 1000

    def _look_again_ms(self) -> int:
        """Until the next full look, or less to the first type whose backoff ends; with no
        slot free, idle_wait_ms (a job that ends wakes the loop: `job_ended`)."""
        if self.short:
            return idle_wait_ms
        now = asyncio.get_running_loop().time()
        until = self.full_look_at
        if self.retry_at:
            until = min(until, *self.retry_at.values())
            self.retry_at = {name: at for name, at in self.retry_at.items() if at > now}
        return max(1, min(idle_wait_ms, int((until - now) * 1000) + 1))

    def job_ended(self) -> None:
        """A job ended (its slot is free): look again if the last look wanted a slot."""
        if self.short:
            self.wake.set()

    async def _wake_at_stop(self) -> None:
        await self.stop.wait()
        self.wake.set()

    async def end(self) -> None:
        """Close the pulls (the server drops their requests; what was on its way still comes)
        and give back what they brought that was not handed over (a nak: another worker takes
        it at once; a draining worker takes nothing new)."""
        brought: list[TaskMessage] = []
        pulls = list(self.pulls.values())
        self.pulls.clear()
        for pull in pulls:
            brought += pull.take()[0]
            brought += await pull.close()
        for message in brought:
            try:
                await message.nak()
            except Exception as error:  # it comes back after its ack wait
                self.outage.failed(f"giving a task back: {render_error(error)}")


async def wait_set(event: asyncio.Event, timeout_ms: int) -> None:
    """Wait until `event` is set, at most timeout_ms (then it is set: look again). One future
    and one timer: no task, no cancellation."""
    if event.is_set():
        return
    loop = asyncio.get_running_loop()
    timer = loop.call_at(loop.time() + timeout_ms / 1000, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()

