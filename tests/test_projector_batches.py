"""How a live projection tail cuts batches (`dagnats.runtime.projector.next_batch`): a batch
lingers from its first message's arrival, so messages that arrive while the previous batch is
applied join the next one instead of making a batch of their own (once the tail is live); a
backlog, or what the reader holds while catching up, is taken at once, and an idle tail
returns None."""

from __future__ import annotations

import asyncio
import time

from dagnats.runtime.projector import PendingMessages, next_batch
from projections.base import Message

LINGER_S = 0.05
IDLE_S = 0.05


def message(seq: int) -> Message:
    return (seq, "run-1", b"{}")


def test_a_message_that_arrived_while_a_batch_was_applied_waits_for_the_next_ones() -> None:
    """Old rule: a message already waiting was taken at once, alone (a batch of one right after
    each lingered batch). Now its batch lingers from its arrival and gathers what follows."""

    async def scenario() -> list[Message] | None:
        pending = PendingMessages(10)
        pending.live = True
        await pending.put(message(1))  # arrived while the previous batch was being applied

        async def later() -> None:
            await pending.put(message(2))  # arrives during the linger

        putter = asyncio.create_task(later())
        batch = await next_batch(pending, IDLE_S, LINGER_S, batch_max=10)
        await putter
        return batch

    assert asyncio.run(scenario()) == [message(1), message(2)]


def test_a_message_waiting_longer_than_the_linger_is_taken_at_once() -> None:
    async def scenario() -> tuple[list[Message] | None, bool]:
        pending = PendingMessages(10)
        pending.live = True
        await pending.put(message(1))
        pending.oldest_at = time.monotonic() - 10 * LINGER_S  # it has waited long enough
        arrived: list[Message] = []

        async def later() -> None:
            await pending.put(message(2))
            arrived.append(message(2))

        putter = asyncio.create_task(later())
        batch = await next_batch(pending, IDLE_S, LINGER_S, batch_max=10)
        taken_before_the_putter_ran = not arrived
        await putter
        return batch, taken_before_the_putter_ran

    batch, at_once = asyncio.run(scenario())
    assert batch == [message(1)], batch
    assert at_once, "next_batch lingered for a message already older than the linger"


def test_catching_up_what_the_reader_holds_is_taken_at_once() -> None:
    """Before the tail is live (reading what the stream held), a batch does not wait for the
    reader: the messages it holds are taken as they are (a linger there would only idle)."""

    async def scenario() -> tuple[list[Message] | None, bool]:
        pending = PendingMessages(10)
        await pending.put(message(1))
        arrived: list[Message] = []

        async def later() -> None:
            await pending.put(message(2))
            arrived.append(message(2))

        putter = asyncio.create_task(later())
        batch = await next_batch(pending, IDLE_S, 1.0, batch_max=10)
        taken_before_the_putter_ran = not arrived
        await putter
        return batch, taken_before_the_putter_ran

    batch, at_once = asyncio.run(scenario())
    assert batch == [message(1)], batch
    assert at_once, "next_batch lingered while catching up"


def test_a_backlog_is_taken_at_once_in_batches_of_at_most_batch_max() -> None:
    async def scenario() -> tuple[list[Message] | None, list[Message] | None, int]:
        pending = PendingMessages(10)
        for seq in range(1, 6):
            await pending.put(message(seq))
        first = await next_batch(pending, IDLE_S, 1.0, batch_max=3)  # no wait: 3 are waiting
        second = await next_batch(pending, IDLE_S, 0.0, batch_max=3)
        return first, second, pending.queue.qsize()

    first, second, left = asyncio.run(scenario())
    assert first == [message(1), message(2), message(3)], first
    assert second == [message(4), message(5)], second
    assert left == 0, left


def test_an_idle_tail_gives_none() -> None:
    async def scenario() -> list[Message] | None:
        return await next_batch(PendingMessages(4), IDLE_S, LINGER_S, batch_max=4)

    assert asyncio.run(scenario()) is None
