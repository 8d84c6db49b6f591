"""A `wait`'s fold fed by its live watch in the client's read loop (client/watches.Fold,
client/live_watch.LiveWatch.fold_into), against a real nats-server.

Without an `on_update` of the caller's, each message the watch receives in order is decoded
and folded as it is received, and the waiter is woken once, at the run's end, not once per
message. What cannot be folded there (a message before it missing, messages held before the
fold began, a read of the stream under way) goes through `next` as before, in order; a
message that does not decode is raised to the waiter, never in the read loop.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from dagnats.client import live_watch
from dagnats.client.live_watch import LiveWatch
from dagnats.client.watches import Fold, Seen, fold_until_end
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.resources import history_subject
from dagnats.runtime.wakeup import Wakeup
from kernel.state import RunState
from tests.nats_fixtures import unique, wait_for
from tests.test_live_watch import EXPECTED_LAST, History

WAIT_S = 20.0


@pytest.fixture
def js(private_js: JetStreamContext) -> JetStreamContext:
    """This module's tests run on a server of their own."""
    return private_js


class CountedWakes(Wakeup):
    """A watch's waiter that counts its wakes (put in place while no one waits)."""

    def __init__(self, watch: LiveWatch) -> None:
        super().__init__()
        self.count = 0
        watch._wakeup = self

    def wake(self) -> None:
        self.count += 1
        super().wake()


async def folded(watch: LiveWatch, known_seq: int = 0) -> RunState:
    return await fold_until_end(watch, time.monotonic() + WAIT_S, None, known_seq)


async def folding(watch: LiveWatch) -> asyncio.Future[RunState]:
    """A `wait`'s fold under way, once the watch folds for it in the read loop."""
    waiting = asyncio.ensure_future(folded(watch))
    await wait_for(lambda: watch._fold is not None, timeout_ms=int(WAIT_S * 1000),
                   what="the fold set")  # fmt: skip
    return waiting


async def test_messages_held_before_the_fold_began_are_folded_first_in_order(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("held"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        await run.start()
        watch.seen.append(await given_one(watch))  # as `start` reads the first decision
        stored = [await run.signal(name) for name in ("a", "b", "c")]
        await wait_for(lambda: len(watch._incoming) == len(stored),
                       timeout_ms=int(WAIT_S * 1000), what="three held")  # fmt: skip
        waiting = asyncio.ensure_future(folded(watch))
        await wait_for(lambda: watch.last_seq == stored[-1], timeout_ms=int(WAIT_S * 1000),
                       what="the held ones folded")  # fmt: skip
        await run.cancel()  # received while the fold is set and nothing is held
        state = await waiting
        assert state == run.state
        assert state.status == "cancelled"
        assert watch.reads == 0, "everything came live"
    finally:
        await watch.close()


async def test_messages_folded_in_the_read_loop_wake_the_waiter_only_at_the_end(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("quiet-fold"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    first = await run.start()
    watch.seen.append(await given_one(watch))
    wakes = CountedWakes(watch)
    try:
        waiting = await folding(watch)
        for name in ("a", "b", "c", "d"):
            await run.signal(name)
        await wait_for(lambda: watch.last_seq > first + 3, timeout_ms=int(WAIT_S * 1000),
                       what="four signals folded")  # fmt: skip
        assert wakes.count == 0, "a message folded in the read loop wakes no one"
        assert not waiting.done()
        await run.cancel()
        state = await waiting
        assert state == run.state
        assert wakes.count == 1, wakes.count
        assert watch._fold is None, "the fold is let go once the wait has its answer"
    finally:
        await watch.close()


async def test_a_message_missed_while_folding_is_read_from_the_stream_in_order(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("fold-gap"))
    await run.start()  # stored before the watch exists: the first message it hears has a gap
    await run.signal("a")
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        waiting = await folding(watch)
        await run.signal("b")
        await run.cancel()
        state = await waiting
        assert state == run.state, "every message folded once, in order"
        assert watch.reads >= 1
    finally:
        await watch.close()


async def test_a_message_that_does_not_decode_is_raised_to_the_waiter_not_the_read_loop(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("fold-bad"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    other = History(js, unique("fold-other"))
    other_watch = await LiveWatch.open(js, other.run_id, stored=False)
    try:
        await run.start()
        watch.seen.append(await given_one(watch))
        waiting = await folding(watch)
        ack = await js.publish(history_subject(run.run_id), b"not a decision",
                               headers={EXPECTED_LAST: str(run.last_seq)})  # fmt: skip
        with pytest.raises(RunParkedError, match=rf"{run.run_id}.*sequence {ack.seq}"):
            await waiting
        seq = await other.start()  # the connection's read loop goes on
        assert (await given_one(other_watch))[0] == seq
    finally:
        await watch.close()
        await other_watch.close()


async def test_what_a_folding_watch_holds_keeps_its_bound(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages a folding watch cannot fold (a read of the stream is under way) are held
    within live_pending_messages_max like any others; beyond it they are dropped and read."""
    monkeypatch.setattr(live_watch, "live_pending_messages_max", 2)
    run = History(js, unique("fold-bound"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        watch.fold_into(Fold(0))
        watch._reading = True  # (as while `_read_stored` reads: what comes is held)
        await run.start()
        for name in ("a", "b", "c"):
            await run.signal(name)
        await wait_for(lambda: watch._read_now, timeout_ms=int(WAIT_S * 1000), what="a drop")
        assert len(watch._incoming) == 2, "the bound held"
    finally:
        await watch.close()


async def given_one(watch: LiveWatch) -> Seen:
    item = await watch.next(time.monotonic() + WAIT_S)
    assert item is not None, "a message within the bound"
    return item
