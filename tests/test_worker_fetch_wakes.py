"""What wakes the worker's fetch loop (dagnats/worker_fetch.py): a job that ends wakes it only
when it waits with every slot taken; with a free slot every task type has a long poll out, so
a finished job changes nothing it could do (before, every job woke it for a sweep that found
nothing, two tasks and a timer per wait). A poll that comes back and stop still wake it.

A queue of this file stands in for the task queue: these are rules of the loop itself, not
of NATS (tests/test_latency_paths.py runs the loop against a real server)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage
from dagnats.worker_fetch import FetchLoop, fetch_timeout_ms
from tests.nats_fixtures import wait_for

WAIT_MS = 10_000


class HeldPolls:
    """`fetch` that answers a sweep's short pull with nothing and holds each long poll until
    the test ends it."""

    def __init__(self) -> None:
        self.sweeps = 0
        self.polls: list[asyncio.Future[Sequence[TaskMessage]]] = []

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        raise AssertionError("the fetch loop publishes nothing")

    async def fetch(self, task_type: str, *, batch: int, timeout_ms: int) -> Sequence[TaskMessage]:
        if timeout_ms < fetch_timeout_ms:
            self.sweeps += 1
            return []
        poll: asyncio.Future[Sequence[TaskMessage]] = asyncio.get_running_loop().create_future()
        self.polls.append(poll)
        return await poll


async def looping(
    free: list[int],
) -> tuple[FetchLoop, HeldPolls, asyncio.Event, asyncio.Task[None]]:
    queue = HeldPolls()
    stop = asyncio.Event()
    loop = FetchLoop(
        ["a", "b"], queue, stop, dispatch=lambda _messages: None, free_slots=lambda: free[0],
        wake=asyncio.Event(), outage=OutageLog(logging.getLogger("test"), "fetching"),
        batch_max=4,
    )  # fmt: skip
    return loop, queue, stop, asyncio.create_task(loop.run())


async def test_a_job_that_ends_with_every_type_polled_does_not_wake_the_loop() -> None:
    loop, queue, stop, running = await looping([2])
    try:
        await wait_for(lambda: len(queue.polls) == 2, timeout_ms=WAIT_MS, what="two long polls")
        assert not loop.slots_full
        loop.job_ended()
        assert not loop.wake.is_set(), "a free slot: the ended job woke the loop for nothing"
        sweeps = queue.sweeps
        queue.polls[0].set_result([])  # a poll that comes back wakes it
        await wait_for(lambda: len(queue.polls) == 3, timeout_ms=WAIT_MS, what="a new poll")
        assert queue.sweeps == sweeps, "its type was just checked: no short pull for it"
    finally:
        stop.set()
        await asyncio.wait_for(running, WAIT_MS / 1000)  # stop wakes it
        for poll in queue.polls:
            if not poll.done():
                poll.set_result([])
        await loop.end()


async def test_a_job_that_ends_while_every_slot_is_taken_wakes_the_loop() -> None:
    free = [0]
    loop, queue, stop, running = await looping(free)
    try:
        await wait_for(lambda: loop.slots_full, timeout_ms=WAIT_MS, what="the loop waiting")
        assert queue.polls == [] and queue.sweeps == 0, "no slot: nothing fetched"
        free[0] = 1
        loop.job_ended()
        assert loop.wake.is_set()
        await wait_for(lambda: queue.sweeps >= 1, timeout_ms=WAIT_MS, what="a sweep")
        await wait_for(lambda: len(queue.polls) == 2, timeout_ms=WAIT_MS, what="two polls")
    finally:
        stop.set()
        await asyncio.wait_for(running, WAIT_MS / 1000)
        for poll in queue.polls:
            if not poll.done():
                poll.set_result([])
        await loop.end()
