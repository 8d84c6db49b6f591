"""The rules of the worker's fetch loop (dagnats/worker_fetch.py), with standing pulls of this
file standing in for the task queue's (these are rules of the loop, not of NATS:
tests/test_worker_fetch_nats.py runs the loop against a real server).

- A type's credit is its share of the slots; a chain's tasks of one type are asked for in
  chunks (a request when half of the credit came), not one request per task.
- What a pull brings is handed over in its callback; the loop is woken only when the pull
  may want credit (half of it or less standing), so a chain's task costs no look.
- A job that ends wakes the loop only when its last look left credit unasked for want of a
  slot; a pull that brings something and stop still wake it.
- Whatever happens (tasks brought, jobs ended, requests expired, in any order), a worker
  never holds more than `held_max` tasks it has not started, the credit standing never
  covers more than that beyond the free slots, and whenever a slot is free every task type
  has credit standing (none starves): a hypothesis property over the loop's own `_ask`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.pull_credit import PullCredit
from dagnats.worker_fetch import FetchLoop, credit_of, held_max, idle_wait_ms
from tests.nats_fixtures import wait_for

WAIT_MS = 10_000
EXPIRES_MS = 600_000  # nothing expires unless a test says so


class FakePull:
    """A standing pull whose server side is the test: `bring` a message, `expire` a request."""

    def __init__(self, credit_max: int, on_change: Callable[[], None]) -> None:
        self.credit = PullCredit(credit_max, EXPIRES_MS)
        self.on_change = on_change
        self.asks: list[int] = []
        self.arrived: list[TaskMessage] = []
        self.closed = False

    def wanted(self, now: float, cover_ms: int) -> int:
        return 0 if self.closed else self.credit.wanted(now, cover_ms)

    async def ask(self, count: int) -> None:
        assert not self.closed
        self.credit.asked(count, asyncio.get_running_loop().time())
        self.asks.append(count)

    def take(self) -> tuple[list[TaskMessage], Exception | None]:
        arrived, self.arrived = self.arrived, []
        return arrived, None

    async def close(self) -> list[TaskMessage]:
        self.closed = True
        arrived, self.arrived = self.arrived, []
        return arrived

    def bring(self, message: TaskMessage) -> None:
        assert self.credit.pending > 0, "the server brings only what was asked for"
        self.credit.delivered()
        self.arrived.append(message)
        self.on_change()

    def expire(self) -> None:
        self.credit.reset()  # (every request of the fake ends: what it had is gone)
        self.on_change()


class FakeQueue:
    """A task queue with standing pulls (`FakePull`), never fetched."""

    def __init__(self) -> None:
        self.pulls: dict[str, FakePull] = {}

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        raise AssertionError("the fetch loop publishes nothing")

    async def fetch(self, task_type: str, *, batch: int, timeout_ms: int) -> Sequence[TaskMessage]:
        raise AssertionError("a queue with standing pulls is not fetched")

    async def standing_pull(
        self, task_type: str, *, credit_max: int, on_change: Callable[[], None]
    ) -> FakePull:
        pull = self.pulls[task_type] = FakePull(credit_max, on_change)
        return pull


class Jobs:
    """The worker's side: the jobs dispatched (a job holds a slot until it ends)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: list[TaskMessage] = []
        self.taken = 0

    def dispatch(self, messages: Sequence[TaskMessage]) -> None:
        self.running.extend(messages)
        self.taken += len(messages)

    def free(self) -> int:
        return self.slots - len(self.running)


def counted_looks(loop: FetchLoop) -> list[int]:
    """Count the loop's looks (its `_ask` calls) from now on, in the list's one item."""
    looks = [0]
    ask = loop._ask

    async def counted(turn: int) -> None:
        looks[0] += 1
        await ask(turn)

    loop._ask = counted  # type: ignore[method-assign]
    return looks


def fetch_loop(names: list[str], jobs: Jobs, batch_max: int = 64) -> tuple[FetchLoop, FakeQueue]:
    queue = FakeQueue()
    loop = FetchLoop(
        names, queue, asyncio.Event(), dispatch=jobs.dispatch, free_slots=jobs.free,
        wake=asyncio.Event(), outage=OutageLog(logging.getLogger("test"), "fetching"),
        batch_max=batch_max,
    )  # fmt: skip
    return loop, queue


async def looked(loop: FetchLoop) -> None:
    """Until a look the last callback woke (one loop iteration after it) has run."""
    await asyncio.sleep(0)
    await wait_for(lambda: not loop.wake.is_set(), timeout_ms=WAIT_MS, what="a look")


async def stopped(loop: FetchLoop, running: asyncio.Task[None]) -> None:
    loop.stop.set()
    await asyncio.wait_for(running, WAIT_MS / 1000)  # stop wakes it
    await loop.end()


def test_a_types_credit_is_its_share_of_the_slots_and_held_max_follows() -> None:
    assert credit_of(16, 1, 64) == 16 and held_max(16, 1, 64) == 0
    assert credit_of(16, 1, 8) == 8, "bounded by the batch"
    assert credit_of(16, 2, 64) == 8 and held_max(16, 2, 64) == 8
    assert credit_of(4, 19, 64) == 1 and held_max(4, 19, 64) == 18, "one per other type"
    assert credit_of(0, 3, 64) == 1


async def test_a_chain_of_one_type_is_asked_for_in_chunks() -> None:
    jobs = Jobs(slots=16)
    loop, queue = fetch_loop(["a"], jobs)
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: "a" in queue.pulls, timeout_ms=WAIT_MS, what="the pull")
        pull = queue.pulls["a"]
        await wait_for(lambda: pull.asks == [16], timeout_ms=WAIT_MS, what="the first ask")
        for _ in range(12):  # a chain: one task at a time, each ends before the next
            pull.bring(object())  # type: ignore[arg-type]
            assert len(jobs.running) == 1, "handed over at once"
            await looked(loop)
            jobs.running.clear()
            loop.job_ended()
            await looked(loop)
        assert pull.asks[0] == 16 and len(pull.asks) == 2, pull.asks  # a chunk when half came
        assert 1 < pull.asks[1] <= 8
        assert pull.credit.pending == 16 - 12 + pull.asks[1]
    finally:
        await stopped(loop, running)


async def test_a_task_is_handed_over_at_once_and_wakes_the_loop_only_for_credit() -> None:
    jobs = Jobs(slots=16)
    loop, queue = fetch_loop(["a"], jobs)
    looks = counted_looks(loop)
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: "a" in queue.pulls, timeout_ms=WAIT_MS, what="the pull")
        pull = queue.pulls["a"]
        await wait_for(lambda: pull.asks == [16], timeout_ms=WAIT_MS, what="the first ask")
        await wait_for(lambda: not loop.wake.is_set(), timeout_ms=WAIT_MS, what="a wait")
        looks_before = looks[0]
        for brought in range(1, 8):  # more than half of the credit still stands
            pull.bring(object())  # type: ignore[arg-type]
            assert jobs.taken == brought, "handed over in the pull's callback"
            await asyncio.sleep(0)  # (a wake is set one loop iteration after the callback)
            assert not loop.wake.is_set(), f"task {brought} woke the loop for nothing"
            jobs.running.clear()
            loop.job_ended()
        await asyncio.sleep(0)  # (a look the tasks woke would start now)
        assert looks[0] == looks_before, (looks, looks_before)
        # (the eighth: half of the credit left, the loop is woken to ask)
        pull.bring(object())  # type: ignore[arg-type]
        assert jobs.taken == 8 and not loop.wake.is_set(), "woken after the jobs' first step"
        await asyncio.sleep(0)
        assert loop.wake.is_set()
        await wait_for(lambda: len(pull.asks) == 2, timeout_ms=WAIT_MS, what="the renewal")
        assert looks[0] == looks_before + 1, (looks, looks_before)
    finally:
        await stopped(loop, running)


async def test_a_jobs_first_write_goes_out_before_the_look_its_task_woke() -> None:
    """A publish is written on the client's flusher's next turn (nats-py: one loop iteration
    after the publish). The look a task's arrival wakes (half of the credit came) runs after
    that write, not between the job's publish and it (its pull request goes out next)."""
    order: list[str] = []
    running_loop = asyncio.get_running_loop()

    async def job() -> None:
        order.append("published")
        running_loop.call_soon(order.append, "written")  # (the flusher's turn)

    jobs: list[asyncio.Task[None]] = []

    def dispatch(messages: Sequence[TaskMessage]) -> None:
        for _ in messages:
            jobs.append(running_loop.create_task(job()))  # (as Python 3.11 starts a job)

    queue = FakeQueue()
    loop = FetchLoop(
        ["a"], queue, asyncio.Event(), dispatch=dispatch, free_slots=lambda: 2,
        wake=asyncio.Event(), outage=OutageLog(logging.getLogger("test"), "fetching"),
        batch_max=64,
    )  # fmt: skip
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: "a" in queue.pulls, timeout_ms=WAIT_MS, what="the pull")
        pull = queue.pulls["a"]
        await wait_for(lambda: pull.asks == [2], timeout_ms=WAIT_MS, what="the first ask")
        await looked(loop)
        ask = pull.ask

        async def logged(count: int) -> None:
            order.append("asked")
            await ask(count)

        pull.ask = logged  # type: ignore[method-assign]
        pull.bring(object())  # type: ignore[arg-type]  # (half of the credit came: a look)
        await wait_for(lambda: len(pull.asks) == 2, timeout_ms=WAIT_MS, what="the look")
        await wait_for(lambda: "written" in order, timeout_ms=WAIT_MS, what="the write")
        assert order == ["published", "written", "asked"], order
    finally:
        await stopped(loop, running)


async def test_a_job_that_ends_wakes_the_loop_only_when_a_slot_was_wanted() -> None:
    jobs = Jobs(slots=2)
    loop, queue = fetch_loop(["a", "b"], jobs)
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: len(queue.pulls) == 2, timeout_ms=WAIT_MS, what="two pulls")
        a, b = queue.pulls["a"], queue.pulls["b"]
        await wait_for(lambda: a.asks == [1] and b.asks == [1], timeout_ms=WAIT_MS,
                       what="one each")  # fmt: skip
        assert not loop.short
        loop.job_ended()
        assert not loop.wake.is_set(), "each type has its credit: the job woke it for nothing"
        a.bring(object())  # type: ignore[arg-type]
        b.bring(object())  # type: ignore[arg-type]
        await wait_for(lambda: jobs.taken == 2, timeout_ms=WAIT_MS, what="both tasks")
        await wait_for(lambda: loop.short, timeout_ms=WAIT_MS, what="the loop waiting")
        assert a.asks == [1] and b.asks == [1], "no slot: nothing asked"
        jobs.running.pop()
        loop.job_ended()
        assert loop.wake.is_set()
        await wait_for(lambda: len(a.asks) + len(b.asks) == 4, timeout_ms=WAIT_MS,
                       what="one more each (a type with none gets one)")  # fmt: skip
    finally:
        await stopped(loop, running)


async def test_a_worker_with_every_slot_taken_waits_instead_of_looking_again() -> None:
    """With no slot free nothing can be asked: the loop waits for a job's end (or
    idle_wait_ms), it does not look again every millisecond."""
    jobs = Jobs(slots=1)
    loop, queue = fetch_loop(["a"], jobs)
    looks = counted_looks(loop)
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: "a" in queue.pulls, timeout_ms=WAIT_MS, what="the pull")
        queue.pulls["a"].bring(object())  # type: ignore[arg-type]
        await wait_for(lambda: loop.short, timeout_ms=WAIT_MS, what="the slot taken")
        loop.full_look_at = 0.0  # (the look at every type is due: no slot, so no look)
        assert loop._look_again_ms() == idle_wait_ms
        before = looks[0]
        jobs.running.clear()
        loop.job_ended()
        await wait_for(lambda: looks[0] > before, timeout_ms=WAIT_MS, what="a look at the end")
    finally:
        await stopped(loop, running)


async def test_at_stop_what_came_and_was_not_handed_over_is_given_back() -> None:
    jobs = Jobs(slots=2)
    loop, queue = fetch_loop(["a"], jobs)
    running = asyncio.create_task(loop.run())
    naks: list[int] = []

    class Task:
        async def nak(self, delay_ms: int = 0) -> None:
            naks.append(delay_ms)

    await wait_for(lambda: "a" in queue.pulls, timeout_ms=WAIT_MS, what="the pull")
    pull = queue.pulls["a"]
    await wait_for(lambda: pull.asks == [2], timeout_ms=WAIT_MS, what="the ask")
    loop.stop.set()
    await asyncio.wait_for(running, WAIT_MS / 1000)
    pull.bring(Task())  # type: ignore[arg-type]
    await loop.end()
    assert naks == [0] and jobs.taken == 0 and pull.closed


Event = tuple[str, int]  # ("bring" | "end" | "expire", type index)


def events() -> st.SearchStrategy[list[Event]]:
    kinds = st.sampled_from(("bring", "bring", "end", "expire"))
    return st.lists(st.tuples(kinds, st.integers(0, 7)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(slots=st.integers(1, 8), types=st.integers(1, 6), happenings=events())
def test_held_tasks_stay_within_held_max_and_no_type_starves(
    slots: int, types: int, happenings: list[Event]
) -> None:
    asyncio.run(_held_tasks_stay_within_held_max(slots, types, happenings))


async def _held_tasks_stay_within_held_max(
    slots: int, types: int, happenings: list[Event]
) -> None:
    names = [f"t{index}" for index in range(types)]
    jobs = Jobs(slots)
    loop, queue = fetch_loop(names, jobs)
    loop.credit_max = credit_of(slots, types, loop.batch_max)
    bound = held_max(slots, types, loop.batch_max)
    for turn, (kind, index) in enumerate([("look", 0), *happenings]):
        pull = queue.pulls.get(names[index % types])
        if kind == "bring" and pull is not None and pull.credit.pending > 0:
            pull.bring(object())  # type: ignore[arg-type]
        elif kind == "end" and jobs.running:
            jobs.running.pop(index % len(jobs.running))
            loop.job_ended()
        elif kind == "expire" and pull is not None:
            pull.expire()
        await loop._ask(turn % types)
        standing = sum(pull.credit.pending for pull in queue.pulls.values())
        held = len(jobs.running) - slots
        assert held <= bound, (held, bound)
        assert held + standing <= bound, ("credit beyond the slots", held + standing, bound)
        if jobs.free() > 0:
            standing_of = {name: pull.credit.pending for name, pull in queue.pulls.items()}
            starving = [name for name in names if not standing_of.get(name)]
            assert not starving, (starving, jobs.free())
