"""The engine's command pump: a window of commands in hand, refilled as commands settle.

The engine holds at most `commands_unsettled_max` commands fetched and not yet settled (acked
or naked): its `CommandWindow`. It fetches again as soon as the window has room for
`command_fetch_room_min` more, whatever became of the batches they came in. (It counted whole
batches before, `command_batches_in_flight_max` = 2: a batch held its slot until its slowest
command settled, so one straggler, a run waiting for its previous group or a slow ack, held
back the next fetch while most of the batch was done; a throughput run's appends came in
bursts of a batch with whole 100 ms of none between.) Each run's commands stay in order (the
engine's `_tails`), so a fetch may bring a run's next command while its last is in hand.

Beside it: a progress ack every command_progress_interval_ms for each command in hand and for
each one the standing pull brought and no fetch took yet (`keep_in_progress`), and, when the
window stays full that long, what the pull brought goes back for an idle engine
(`wait_for_room`), unless it holds a command delivered `command_give_back_deliveries_max`
times already (runtime/queue `release`: each give-back is a delivery).
A standing pull hands a command over as it comes while the engine has nothing in hand
(runtime/standing_pull `WhenIdle`: a chain's command, at once).

This module only schedules: deciding and settling are the engine's (engine.py, batched.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dagnats.runtime.protocols import CommandMessage, CommandQueue
from dagnats.runtime.pull_credit import credit_bound_share
from dagnats.runtime.settings import (
    command_ack_wait_ms,
    command_batch_max,
    command_fetch_room_min,
    command_fetch_timeout_ms,
    command_progress_interval_ms,
    commands_unsettled_max,
    fetch_batch_max,
    partitions_max,
)
from dagnats.runtime.standing_pull import WhenIdle
from dagnats.runtime.wakeup import Wakeup

if TYPE_CHECKING:
    from dagnats.runtime.engine import Engine

log = logging.getLogger("dagnats.engine")


class CommandWindow(set[CommandMessage]):
    """The commands fetched and not yet settled (a set: the engine adds what it schedules,
    each settle discards), and a wait for room in it (woken by the discards that make it)."""

    def __init__(
        self, size_max: int = commands_unsettled_max, room_min: int = command_fetch_room_min
    ) -> None:
        super().__init__()
        assert 1 <= room_min <= size_max <= commands_unsettled_max, (room_min, size_max)
        self.size_max = size_max
        self.room_min = room_min
        self._wakeup = Wakeup()
        self._waiting = False

    def room(self) -> int:
        """How many more commands the engine may fetch now (0 or less: none)."""
        return self.size_max - len(self)

    def discard(self, message: object) -> None:
        super().discard(message)
        if self._waiting and self.room() >= self.room_min:
            self._wakeup.wake()

    def difference_update(self, *others: Iterable[Any]) -> None:
        super().difference_update(*others)
        if self._waiting and self.room() >= self.room_min:
            self._wakeup.wake()

    async def wait_for_room(self, timeout_ms: int | None) -> bool:
        """Whether the window has room for `room_min` more commands, waiting
        at most `timeout_ms` for it (None: as long as it takes)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (timeout_ms if timeout_ms is not None else 86_400_000) / 1000
        self._waiting = True
        try:
            while self.room() < self.room_min and loop.time() < until:
                await self._wakeup.wait(until)
        finally:
            self._waiting = False
        return self.room() >= self.room_min


async def wait_for_room(commands: object, window: CommandWindow) -> None:
    """The window is full: wait for room. When none comes within
    command_progress_interval_ms, the queue gives back what it brought and no fetch took
    (its `release`, when it has one: runtime/queue), for an idle engine at once, instead of
    holding it in progress behind slow commands (the next fetch asks again)."""
    if await window.wait_for_room(command_progress_interval_ms):
        return
    release: Callable[[], Awaitable[int]] | None = getattr(commands, "release", None)
    if release is not None:
        given = await release()
        log.info("no room for commands for %d ms: gave back %d command(s)",
                 command_progress_interval_ms, given)  # fmt: skip
    await window.wait_for_room(None)


async def keep_in_progress(
    engine: Engine, stop: asyncio.Event,
    waiting: Callable[[], Sequence[CommandMessage]] | None = None,
) -> None:  # fmt: skip
    """Until `stop`: a progress ack (`+WPI`) every command_progress_interval_ms for each
    command fetched and not yet settled, and for each the queue brought that no fetch took
    yet (`waiting`: a standing pull's, while the engine's window is full), so the commands
    consumer's short ack wait (`command_ack_wait_ms`) ends only for an engine that stopped
    working: its commands then go to another engine within that wait.

    With `waiting` (a standing pull's, or a partitioned engine's buffer's,
    `PartitionedSource.held`: each shows every command from when it came, held, then in
    hand), it looks twice an interval and a command gets its first progress ack at the
    second look after it came (within one interval, as when every look sent one: the ack
    wait keeps two intervals of slack for a loop held up), then one every other look (one an
    interval): most commands settle within half an interval and need none (a throughput run
    sent one per three commands at one look an interval, each a message for the engine and
    the server). Without it (a source that shows no waiting commands, whose commands may
    wait unseen), every look, once an interval, sends one to each."""
    assert command_progress_interval_ms * 2 <= command_ack_wait_ms
    # (a standing pull's, runtime/pull_credit; a partitioned buffer's, runtime/partitions)
    brought_max = max(
        fetch_batch_max * (credit_bound_share + 1), command_batch_max + partitions_max
    )
    looks_per_interval = 1 if waiting is None else 2
    seen: set[CommandMessage] = set()  # in hand or held at the last look (with `waiting`)
    acked: set[CommandMessage] = set()  # progress-acked at the last look (with `waiting`)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            pause_s = command_progress_interval_ms / 1000 / looks_per_interval
            await asyncio.wait_for(stop.wait(), pause_s)
        held = list(engine._unsettled)
        assert len(held) <= commands_unsettled_max + command_batch_max, len(held)
        brought = () if waiting is None else waiting()
        assert len(brought) <= brought_max, len(brought)
        due = [*held, *brought]
        if waiting is not None:
            looked, seen = seen, set(due)
            due = [message for message in due if message in looked and message not in acked]
            acked = set(due)
        for message in due:
            try:
                await message.in_progress()
            except Exception as error:  # a lost progress ack costs one redelivery
                log.debug("progress ack of %s failed: %s", message.subject, error)


async def serve(engine: Engine, commands: CommandQueue, stop: asyncio.Event) -> None:
    """`Engine.serve`: fetch while the window has room, hand each batch to the engine's
    scheduler, resume every unfinished run meanwhile, until `stop`; then wait for what is
    in hand to settle, still keeping it in progress (a drain longer than the ack wait would
    otherwise hand a command to another engine while this one works on it)."""
    window = engine._unsettled
    resuming = asyncio.create_task(engine.resume_all())
    in_flight: set[asyncio.Future[Any]] = set()  # scheduled batches not done (WhenIdle's)
    waiting = getattr(commands, "held", None)  # (a standing pull's: runtime/queue)
    drained = asyncio.Event()  # set once what is in hand settled, after `stop`
    progress = asyncio.create_task(keep_in_progress(engine, drained, waiting))
    dispatch_to = getattr(commands, "dispatch_to", None)  # (a standing pull's too)
    if dispatch_to is not None:
        dispatch_to(WhenIdle(in_flight, stop, engine._schedule_batch, window))
    try:
        while not stop.is_set():
            if resuming.done():
                resuming.result()  # a resume that failed stops the engine, as before
            room = window.room()
            if room < window.room_min:
                await wait_for_room(commands, window)
                continue
            messages = await commands.fetch_commands(
                batch=min(command_batch_max, room), timeout_ms=command_fetch_timeout_ms
            )
            if messages:
                batch = engine._schedule_batch(list(messages))
                in_flight.add(batch)
                batch.add_done_callback(in_flight.discard)
            if engine.needs_resume:
                await engine.resume_pending()
    finally:
        if dispatch_to is not None:
            dispatch_to(None)
        if not resuming.done():
            resuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(resuming, return_exceptions=True)
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        drained.set()
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress


__all__ = ["CommandWindow", "keep_in_progress", "serve", "wait_for_room"]
