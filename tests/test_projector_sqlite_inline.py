"""Small batches of the query tables applied in the event loop's thread (`SqliteTarget(...,
inline=True)`, as serve runs them): the same rows and checkpoint as batches in a worker
thread, for generated histories in batches of any size (hypothesis); and a file whose write
lock another connection holds never blocks the event loop (the batch waits in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagnats.runtime.projector_pace import Pacer
from dagnats.runtime.projector_sqlite import (
    SqliteTarget,
    inline_batch_messages_max,
    open_database,
)
from projections.base import Message, read_checkpoint
from projections.sqlite import QueryTables
from tests.projection_support import History, completed_run, histories

Rows = dict[str, list[tuple[object, ...]]]
LOOP_BOUND_S = 20.0  # the other writer holds its lock at most this long


def dump(path: Path) -> tuple[Rows, int, int]:
    """Every query table's rows, and the checkpoint's (seq, events)."""
    with contextlib.closing(open_database(path, readonly=True)) as db:
        rows = {
            table: sorted((tuple(r) for r in db.execute(f"SELECT * FROM {table}")), key=repr)
            for table in QueryTables.tables
        }
        checkpoint = read_checkpoint(db, QueryTables.name)
        assert checkpoint is not None
        return rows, checkpoint.seq, checkpoint.events


async def project(path: Path, messages: list[Message], batch: int, *, inline: bool) -> None:
    target = SqliteTarget(path, QueryTables(), inline=inline)
    position = await target.open()
    try:
        for start in range(0, len(messages), batch):
            position, _ = await target.apply(messages[start : start + batch], position)
    finally:
        await target.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(runs_max=3, commands_max=20),
    batch=st.integers(1, inline_batch_messages_max + 4),
    data=st.data(),
)
def test_inline_batches_write_what_batches_in_a_thread_write(
    tmp_path_factory: object, history: History, batch: int, data: st.DataObject
) -> None:
    directory = Path(str(tmp_path_factory.mktemp("inline")))  # type: ignore[attr-defined]
    split = data.draw(st.integers(0, len(history.messages)), label="applied before a reopen")

    async def both() -> None:
        await project(directory / "thread.sqlite", history.messages, batch, inline=False)
        inline = directory / "inline.sqlite"
        await project(inline, history.messages[:split], batch, inline=True)
        await project(inline, history.messages[split:], batch, inline=True)

    asyncio.run(both())
    want = dump(directory / "thread.sqlite")
    assert dump(directory / "inline.sqlite") == want
    assert want[1] == history.messages[-1][0], "the checkpoint is the last message"


@pytest.mark.parametrize("paced", [False, True])
async def test_a_locked_file_never_blocks_the_event_loop(tmp_path: Path, paced: bool) -> None:
    path = tmp_path / "dagnats.sqlite"
    messages = [(seq, "run-1", data) for seq, data in enumerate(completed_run("run-1"), 1)]
    pacer = Pacer(lambda: 0) if paced else None  # (paced: serve's)
    target = SqliteTarget(path, QueryTables(), inline=True, pacer=pacer)
    position = await target.open()
    locked, loop_ran, loop_blocked = threading.Event(), threading.Event(), threading.Event()

    def other_writer() -> None:
        """Holds the file's write lock until the event loop shows it ran meanwhile (or, when
        the loop is blocked waiting for this lock, until a bound: then the test fails)."""
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            locked.set()
            if not loop_ran.wait(LOOP_BOUND_S):
                loop_blocked.set()
            holder.execute("ROLLBACK")
        finally:
            holder.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        assert await asyncio.to_thread(locked.wait, LOOP_BOUND_S)
        applying = asyncio.create_task(target.apply(messages, position))
        for _ in range(20):
            await asyncio.sleep(0.01)  # the loop runs on while the batch waits for the lock
        assert not applying.done(), "the batch waits for the lock, in a thread"
        loop_ran.set()
        seq, applied = await asyncio.wait_for(applying, 30)
        assert seq == len(messages) and applied > 0
    finally:
        loop_ran.set()
        await asyncio.to_thread(writer.join, 30)
        await target.close()
    assert not loop_blocked.is_set(), "the event loop waited for another writer's lock"
    rows, stored_seq, _ = dump(path)
    assert stored_seq == len(messages) and [row[0] for row in rows["runs"]] == ["run-1"]
