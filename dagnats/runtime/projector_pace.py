"""Pacing serve's projections on the engine's event loop: their batches stay off the path of
the engine's commands.

Serve's built-in projections (`projector_shared.builtin_targets`) run on the engine's event
loop. A batch applied in one go held the loop for about a millisecond (a live query-tables
batch of some 40 messages: its SQLite transaction runs in the loop's thread), and a command
whose append was acknowledged meanwhile waited for all of it before its task was published.
So a target applies a batch in slices (`slice_messages_max` messages) and, before each slice,
asks its `Pacer` for a turn: the pacer lets the loop run what is ready (one `sleep(0)`), and
while the engine has commands in flight (fetched, not yet acked) it waits for a moment when it
has none, looking every `pace_poll_ms`. The wait is bounded: once a batch has waited
`pace_defer_ms_max` in all, its remaining slices run without waiting, yielding to the loop
every `pace_run_ms_max` (a backlog batch, of more than `pace_defer_batch_messages_max`
messages, does so from its start), so under constant load (the engine never without a command) the
projections still get their turn and their lag stays bounded (about the linger, plus this
bound, plus the batch's own time), while a command waits at most that long behind them.

A slice is not a transaction: a batch keeps one transaction and one checkpoint, applied in
slices between turns (more transactions cost more than they spare: a commit and every touched
run's rows per transaction).

This module reads nothing and writes nothing; it only waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

# Messages a projection applies between two turns of the event loop (a query-tables message
# costs about 15 us of Python on the loop; its SQL is written once per batch).
slice_messages_max: Final = 16
# A batch waits at most this long in all for the engine to have no command in flight; after
# it, its slices go on between the engine's commands (yielding once between two slices).
pace_defer_ms_max: Final = 50
# While it defers, how often a batch looks whether the engine has a command in flight.
pace_poll_ms: Final = 1
# Once its deferral budget is spent, a batch runs slices for up to this long between two
# yields: a loop iteration under load runs many callbacks of the engine, and one slice per
# iteration could fall behind a constant stream of appends for as long as it lasts.
pace_run_ms_max: Final = 2
# A batch of more messages than this is a backlog (the tail is behind the stream: a batch
# gathers what came while the last one was applied): it does not wait for the engine, only
# yields between slices. Waiting `pace_defer_ms_max` per batch under constant load capped a
# lane at about `batch_messages_max` messages per that wait (the snapshots: about 12,000 a
# second against 16,000-45,000 unpaced), past which its lag grew without bound. The query
# tables apply such a batch in a thread (`projector_sqlite.inline_batch_messages_max`).
pace_defer_batch_messages_max: Final = 128

Busy = Callable[[], int]  # how many commands the engine has in flight (0: none)


class Pacer:
    """Gives a projection's batch its turns on the event loop (see the module doc)."""

    def __init__(
        self,
        busy: Busy | None = None,
        *,
        defer_ms_max: int = pace_defer_ms_max,
        poll_ms: int = pace_poll_ms,
        run_ms_max: int = pace_run_ms_max,
    ) -> None:
        """`busy`: the engine's commands in flight (None: there is no engine to defer to,
        only a yield between slices)."""
        assert defer_ms_max >= 0 and 0 < poll_ms <= max(defer_ms_max, 1), (defer_ms_max, poll_ms)
        self.busy = busy
        self.defer_s = defer_ms_max / 1000
        self.poll_s = poll_ms / 1000
        self.run_s = run_ms_max / 1000
        self._deadline = 0.0
        self._yielded_at = 0.0  # when this batch last yielded to the loop
        self.deferred_s = 0.0  # time batches spent waiting for the engine (for tests, stats)
        self.turns = 0

    def start_batch(self, *, defer: bool = True) -> None:
        """A batch begins: its deferral budget starts now (none when not `defer`: it only
        yields between slices, as a batch past its budget)."""
        self._deadline = time.monotonic() + (self.defer_s if defer else 0.0)
        self._yielded_at = 0.0

    async def turn(self) -> None:
        """Wait for this batch's next turn: the engine without a command in flight, then
        yield once to what else is ready. Once the batch's deferral budget is spent: go on at
        once, yielding only when `run_ms_max` has passed since the last yield."""
        self.turns += 1
        now = time.monotonic()
        busy = self.busy
        if now >= self._deadline:
            if now - self._yielded_at < self.run_s:
                return
        elif busy is not None and busy():
            began = time.monotonic()
            polls = 0
            while busy() and time.monotonic() < self._deadline:
                await asyncio.sleep(self.poll_s)
                polls += 1
                assert polls <= self.defer_s / self.poll_s * 4 + 4, polls  # (the clock moves)
            self.deferred_s += time.monotonic() - began
        await asyncio.sleep(0)
        self._yielded_at = time.monotonic()


def slices(messages: list[tuple[int, str, bytes]], size: int = slice_messages_max) -> list[
    list[tuple[int, str, bytes]]
]:
    """`messages` cut into consecutive slices of at most `size`, in order."""
    assert size >= 1, size
    return [messages[start : start + size] for start in range(0, len(messages), size)]


__all__ = [
    "Busy", "Pacer", "pace_defer_batch_messages_max", "pace_defer_ms_max", "pace_poll_ms",
    "pace_run_ms_max", "slice_messages_max", "slices",
]  # fmt: skip
