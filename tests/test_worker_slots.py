"""A worker's handler slots (dagnats/worker_slots.py): taken by a call while free, waited for
in order when none is, and never lost to a waiter cancelled after it was handed one."""

from __future__ import annotations

import asyncio

from dagnats.worker_slots import HandlerSlots


async def turns(count: int) -> None:
    for _ in range(count):  # a bounded number of loop iterations
        await asyncio.sleep(0)


async def test_free_slots_are_taken_by_a_call_and_given_back() -> None:
    slots = HandlerSlots(2)
    assert slots.take_now() and slots.take_now()
    assert not slots.take_now() and slots.free == 0
    slots.give()
    assert slots.free == 1 and slots.take_now()


async def test_waiters_get_slots_in_the_order_they_came() -> None:
    slots = HandlerSlots(1)
    assert slots.take_now()
    got: list[str] = []

    async def wait(name: str) -> None:
        await slots.take()
        got.append(name)

    waiting = [asyncio.create_task(wait(name)) for name in ("a", "b", "c")]
    await turns(3)
    assert got == [] and slots.waiting() == 3
    assert not slots.take_now()  # (a free call does not jump the queue)
    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        slots.give()
        await turns(3)
        assert got == expected, got
    slots.give()
    assert slots.free == 1
    await asyncio.gather(*waiting)


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_gives_it_on() -> None:
    slots = HandlerSlots(1)
    assert slots.take_now()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await turns(2)
    slots.give()  # handed to `first`, which is cancelled before it runs
    first.cancel()
    await turns(3)
    assert first.cancelled()
    assert second.done() and not second.cancelled()  # the slot went on to `second`
    assert slots.free == 0 and slots.waiting() == 0
    slots.give()
    assert slots.free == 1


async def test_a_waiter_cancelled_while_waiting_holds_no_slot() -> None:
    slots = HandlerSlots(1)
    assert slots.take_now()
    waiter = asyncio.create_task(slots.take())
    await turns(2)
    waiter.cancel()
    await turns(2)
    assert waiter.cancelled() and slots.waiting() == 0
    slots.give()
    assert slots.free == 1 and slots.take_now()
