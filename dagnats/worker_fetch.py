"""The worker's fetch loop: one loop over all its task types, sharing the slots fairly.

Fetching: one loop over all the worker's task types, each with its own durable pull consumer
shared with the other workers of that type (a single consumer with several filter subjects
would be per worker set of types, and a work-queue stream refuses overlapping consumers). The
loop takes, round-robin from a rotating start, what waits on each type with a no-wait pull
(`fetch_ready`: one round trip) bounded by the free slots; when a sweep finds nothing, it
long-polls every type at once (batch 1, `fetch_timeout_ms`) and wakes on the first message,
a finished job (only when the slots were full: with a free slot every type is polled) or
stop, waiting on one event (no task per wait). A poll is never cancelled (a message it brings
would wait unseen until its ack wait); one that comes back while the slots are full brings at
most one message, which waits for a slot heartbeated: a worker holds at most one task beyond
its slots per task type. Before, each type had its own loop that took a slot and then
long-polled: with more types than slots, idle polls held the slots while work of another type
waited (bench/task_types.py: 40 steps alternating 19 types through 4 slots took 13.1 s, 0.24 s
with this loop).

This module fetches and hands messages over (`dispatch`); it runs no handler and sends
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final, Protocol, runtime_checkable

from dagnats.runtime import settings
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage, TaskQueue
from dagnats.worker_safety import render_error

fetch_timeout_ms: Final = 250  # short, so a pull lost with a restarted server is soon made again
fetch_backoff_ms: Final = 500  # after a failed fetch, before the next one
idle_wait_ms: Final = fetch_timeout_ms * 4  # longest wait for a wake-up before looking again


@runtime_checkable
class ReadyTaskQueue(Protocol):
    """A task queue that can take what is waiting without waiting (`fetch_ready`)."""

    async def fetch_ready(self, task_type: str, *, batch: int) -> Sequence[TaskMessage]: ...


@runtime_checkable
class PollingTaskQueue(Protocol):
    """A task queue whose long polls are futures (`poll`: no task per poll)."""

    async def poll(
        self, task_type: str, *, timeout_ms: int, on_end: Callable[[], None] | None = None
    ) -> asyncio.Future[Sequence[TaskMessage]]: ...


class FetchLoop:
    """Fetch tasks of `names` until `stop`, handing each batch to `dispatch`; `free_slots`
    says how many more jobs may start; `wake` is what the loop waits on (set as a poll ends,
    by `job_ended` when every slot was taken, and at stop)."""

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
        self.ready = tasks if isinstance(tasks, ReadyTaskQueue) else None
        self.pollable = tasks if isinstance(tasks, PollingTaskQueue) else None
        self.stop = stop
        self.dispatch = dispatch
        self.free_slots = free_slots
        self.wake = wake
        self.outage = outage
        self.batch_max = batch_max
        self.polls: dict[str, asyncio.Future[Sequence[TaskMessage]]] = {}
        self.slots_full = False  # the loop waits with every slot taken (`job_ended` wakes it)

    async def run(self) -> None:
        """Take what is waiting, round-robin, bounded by the free slots; when nothing is,
        long-poll every type and wait for the first message, a finished job (when the slots
        were full) or stop."""
        names, turn = self.names, 0
        stopping = asyncio.create_task(self._wake_at_stop())
        try:
            while not self.stop.is_set():
                self.wake.clear()
                free, taken = await self._sweep(names, turn)
                turn = (turn + 1) % len(names)
                if taken or self.stop.is_set():
                    continue
                if free > 0:  # nothing waiting anywhere: one long poll per idle type
                    await self._poll_idle(names)
                # With a free slot every type is polled: a job that ends changes nothing, so
                # it wakes the loop only when the slots were full (`job_ended`).
                self.slots_full = free <= 0
                try:
                    await wait_set(self.wake, idle_wait_ms)
                finally:
                    self.slots_full = False
        finally:
            stopping.cancel()

    async def _sweep(self, names: list[str], turn: int) -> tuple[int, int]:
        """Dispatch what the long polls brought, then take what waits on each type not just
        checked, from `turn` on: (free slots at the start, messages taken)."""
        just_polled = self._take_polled()
        free = self.free_slots()
        taken = 0
        for offset in range(len(names)):
            if free - taken <= 0 or self.stop.is_set():
                break
            name = names[(turn + offset) % len(names)]
            if name in self.polls or name in just_polled:
                continue
            messages = await self._fetch(name, min(free - taken, self.batch_max))
            taken += len(messages)
            self.dispatch(messages)
        return free, taken

    async def _poll_idle(self, names: list[str]) -> None:
        for name in names:
            if name in self.polls:
                continue
            poll: asyncio.Future[Sequence[TaskMessage]]
            if self.pollable is None:
                poll = asyncio.create_task(
                    self.tasks.fetch(name, batch=1, timeout_ms=fetch_timeout_ms)
                )
                poll.add_done_callback(self._poll_done)
            else:
                try:  # (it wakes the loop as it ends: no done callback to schedule)
                    poll = await self.pollable.poll(
                        name, timeout_ms=fetch_timeout_ms, on_end=self.wake.set
                    )
                except Exception as error:  # (the sweep after it backs off)
                    poll = asyncio.get_running_loop().create_future()
                    poll.set_exception(error)
                    self.wake.set()
            self.polls[name] = poll

    def _poll_done(self, _poll: object) -> None:
        self.wake.set()

    def job_ended(self) -> None:
        """A job ended (its slot is free): look again if the loop waits for a slot."""
        if self.slots_full:
            self.wake.set()

    async def _wake_at_stop(self) -> None:
        await self.stop.wait()
        self.wake.set()

    async def end(self) -> None:
        """Let the long polls end (bounded by their own timeout: cancelling one would leave
        a message it brings unseen until its ack wait), and give back what they brought (a
        nak: another worker takes it at once; a draining worker takes nothing new)."""
        if self.polls:
            await asyncio.wait(self.polls.values(), timeout=2 * fetch_timeout_ms / 1000)
        dispatch, brought = self.dispatch, list[TaskMessage]()
        self.dispatch = brought.extend
        try:
            self._take_polled()
        finally:
            self.dispatch = dispatch
        for message in brought:
            try:
                await message.nak()
            except Exception as error:  # it comes back after its ack wait
                self.outage.failed(f"giving a task back: {render_error(error)}")
        for poll in self.polls.values():
            poll.cancel()

    async def _fetch(self, name: str, batch: int) -> Sequence[TaskMessage]:
        """What waits on `name`, at most `batch`, without waiting; [] after a failure."""
        try:
            if self.ready is not None:
                messages = await self.ready.fetch_ready(name, batch=batch)
            else:
                messages = await self.tasks.fetch(name, batch=batch, timeout_ms=1)
        except Exception as error:
            if not self.stop.is_set():
                self.outage.failed(f"{name}: {render_error(error)}")
                await first_of(self.stop, None, fetch_backoff_ms)
            return []
        self.outage.recovered()
        assert len(messages) <= batch, (len(messages), batch)
        return messages

    def _take_polled(self) -> set[str]:
        """Dispatch what each finished long poll brought; the task types whose poll came
        back empty, or with a message after which nothing waited (its `num_pending`: a
        no-wait pull would find nothing, it costs a round trip and a pull on the server at
        every step of a chain), just checked: the next sweep skips them. A poll that came back while
        the slots were full brings at most one message: it waits for a slot, heartbeated,
        so a worker holds at most one extra task per task type."""
        empty: set[str] = set()
        for name, poll in list(self.polls.items()):
            if not poll.done():
                continue
            del self.polls[name]
            if poll.cancelled():
                continue
            error = poll.exception()
            if error is not None:
                self.outage.failed(f"{name}: {render_error(error)}")
                continue
            self.outage.recovered()
            messages = poll.result()
            if not messages or getattr(messages[-1], "num_pending", None) == 0:
                empty.add(name)  # nothing more waited when it came: no no-wait pull now
            self.dispatch(messages)
        return empty


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


async def first_of(event: asyncio.Event, other: asyncio.Event | None, timeout_ms: int) -> None:
    """Wait until `event` (or `other`) is set, at most timeout_ms."""
    waits = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
