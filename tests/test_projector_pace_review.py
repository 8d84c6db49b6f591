"""Review of the paced query-tables batches (`runtime/projector_pace`, `SqliteTarget` with a
pacer, as serve runs them): what happens while a batch waits between its parts with its
transaction open.

- retention's row drop (`retention.delete_rows`, another connection, in a thread) issued while
  a batch is paused waits for the batch's commit (the batch holds the file's write lock from
  its BEGIN IMMEDIATE), and the run id's new life is then folded from its start: the rows equal
  a rebuild from a history without the purged life;
- a batch cancelled while it writes its rows (`QueryTables.flush_parts`, after it remembered
  its runs' states) leaves no row, no checkpoint and no remembered state of itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlite_utils import Database

from dagnats.runtime.connection import Connection
from dagnats.runtime.projector import SnapshotTarget, stream_last_seq
from dagnats.runtime.projector_pace import (
    Pacer,
    pace_defer_batch_messages_max,
    pace_defer_ms_max,
    slice_messages_max,
)
from dagnats.runtime.projector_read import read_until
from dagnats.runtime.projector_sqlite import SqliteTarget
from dagnats.runtime.retention import delete_rows
from kernel.events import AnyEvent
from projections.base import Message, Position
from projections.sqlite import QueryTables
from tests.projection_support import completed_run
from tests.test_projector_shared import append
from tests.test_projector_sqlite_inline import dump, project

WAIT_BOUND_S = 30.0  # any wait of these tests ends by then (a failure otherwise)
LOOP_TURNS_MAX = 10_000  # turns of the loop a test gives a batch to reach a point
PURGED = "again"
BACKLOG_RUNS = 100  # completed runs of 3 messages: a backlog batch past the small one


def runs(names: list[str], first_seq: int) -> list[Message]:
    """The messages of a completed run for each name, from `first_seq` on."""
    messages: list[Message] = []
    for name in names:
        for data in completed_run(name):
            messages.append((first_seq + len(messages), name, data))
    return messages


class FlushWatch(QueryTables):
    """QueryTables that tells when a batch is inside its writes (`flush_parts`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.flushing = asyncio.Event()

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        self.seen += 1
        super().apply(db, event, at)

    def flush_parts(self, db: Database) -> Iterator[None]:
        for part in super().flush_parts(db):
            self.flushing.set()
            yield part


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(LOOP_TURNS_MAX):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached within {LOOP_TURNS_MAX} loop turns: {what}")


async def test_a_row_drop_while_a_batch_is_paused_waits_and_the_new_life_is_folded_anew(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite"
    old_life = runs([PURGED, "keep-0"], 1)
    paused = runs([f"mid-{index}" for index in range(12)], len(old_life) + 1)
    new_life = runs([PURGED], len(old_life) + len(paused) + 1)
    purged_seq = max(seq for seq, run_id, _ in old_life if run_id == PURGED)
    held = 0  # the engine's commands in flight, as the pacer sees them
    tables = FlushWatch()
    pacer = Pacer(lambda: held, defer_ms_max=int(WAIT_BOUND_S * 1000))
    target = SqliteTarget(path, tables, inline=True, pacer=pacer)
    position = await target.open()
    try:
        position, _ = await target.apply(old_life, position)
        tables.seen = 0
        applying = asyncio.create_task(target.apply(paused, position))
        await _until(lambda: tables.seen > 0, "the batch applied its first slice")
        held = 1  # the batch now waits between two slices, its transaction open
        dropping = asyncio.ensure_future(
            asyncio.to_thread(delete_rows, path, [(PURGED, purged_seq)])
        )
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert not applying.done(), "the batch went on while the engine was busy"
        assert not dropping.done(), "the row drop wrote while a batch held its transaction"
        held = 0
        position, _ = await asyncio.wait_for(applying, WAIT_BOUND_S)
        assert await asyncio.wait_for(dropping, WAIT_BOUND_S) > 0
        position, _ = await target.apply(new_life, position)
    finally:
        held = 0
        await target.close()
    rebuilt = tmp_path / "rebuilt.sqlite"
    kept = [message for message in old_life if message[1] != PURGED]
    await project(rebuilt, [*kept, *paused, *new_life], 1_000, inline=False)
    rows, seq, _ = dump(path)
    want_rows, want_seq, _ = dump(rebuilt)
    assert seq == want_seq == position
    assert rows == want_rows


async def test_a_batch_cancelled_while_writing_its_rows_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    first = runs(["a", "b"], 1)
    second = runs([f"c-{index}" for index in range(8)] + ["a"], len(first) + 1)
    tables = FlushWatch()
    target = SqliteTarget(path, tables, inline=True, pacer=Pacer(lambda: 0))
    position = await target.open()
    try:
        position, _ = await target.apply(first, position)
        before = dump(path)
        tables.flushing.clear()
        applying = asyncio.create_task(target.apply(second, position))
        await _until(tables.flushing.is_set, "the batch is writing its rows")
        assert not applying.done()
        applying.cancel()
        await asyncio.gather(applying, return_exceptions=True)
        assert applying.cancelled()
        assert dump(path) == before, "the cancelled batch left rows or its checkpoint"
        assert not tables._states and tables._states_seq == -1, "its states are remembered"
        assert await target.stored_seq() == position
        position, _ = await asyncio.wait_for(target.apply(second, position), WAIT_BOUND_S)
    finally:
        await target.close()
    once = tmp_path / "once.sqlite"
    await project(once, [*first, *second], 1_000, inline=False)
    assert dump(path) == dump(once)


# -- the snapshots' lane behind the stream (a real nats-server) ----------------------------


async def test_a_snapshot_backlog_batch_does_not_wait_for_a_busy_engine(
    connection: Connection,
) -> None:
    """A batch of more than `pace_defer_batch_messages_max` messages is a backlog (the tail is
    behind the stream): it must not spend `pace_defer_ms_max` waiting for an engine that is
    never without a command, or the snapshots (and the query tables fed by the same shared
    tail) fall behind without bound once history grows faster than about `batch_messages_max`
    messages per `pace_defer_ms_max` (about 12,000 a second measured). It still yields to the
    loop between its slices; a small batch still waits."""
    js = connection.js
    for index in range(BACKLOG_RUNS):
        await append(connection.history, f"b-{index}", completed_run(f"b-{index}"))
    messages = [message async for message in read_until(js, 0, await stream_last_seq(js))]
    small = pace_defer_batch_messages_max
    assert len(messages) > small + slice_messages_max, len(messages)
    pacer = Pacer(lambda: 1, defer_ms_max=pace_defer_ms_max)  # (always a command in flight)
    target = SnapshotTarget(js, pacer=pacer)
    position = await target.open()
    position, _ = await target.apply(messages[:small], position)
    assert pacer.deferred_s > 0, "a small batch waits for the engine"
    waited, turns = pacer.deferred_s, pacer.turns
    position, _ = await target.apply(messages[small:], position)
    assert position == messages[-1][0]
    assert pacer.turns - turns > 1, "a backlog batch still goes in slices"
    assert pacer.deferred_s == waited, "a backlog batch waited for the engine"
