"""What the query tables cost per batch: the statements they run.

- a batch with no approvals, agent turns or tool calls runs no statement on those tables (an
  empty `executemany` still prepares and steps its statement), and no batch queries
  `sqlite_master` (the checkpoint is read without listing the tables first);
- the rows are the same as before: the incremental tables equal a rebuild (the properties
  are in tests/test_projections_properties.py; here, once more under the statement trace);
- a live tail's inline batches leave the busy timeout at 0 (no PRAGMA per batch); the
  checkpoint read and batches in a thread set it back (they may wait for a lock); a live
  batch of about 100 ms of a chain is applied inline too;
- `read_checkpoint` of a database without the checkpoints table is None, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from sqlite_utils import Database

from dagnats.runtime.projector_sqlite import SqliteTarget, wal_size_limit_bytes
from projections.base import Message, SqliteRunner, read_checkpoint
from projections.sqlite import QueryTables
from tests.projection_support import History, completed_run, histories

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNUSED_TABLES = ("approvals", "agent_turns", "tool_calls")


def _messages() -> list[Message]:
    return [(index + 1, "run-1", data) for index, data in enumerate(completed_run("run-1"))]


class _CountingConnection(sqlite3.Connection):
    """A connection that records the statements given to `executemany` (an empty one runs
    no step, so the trace callback alone does not see it)."""

    prepared: list[str]

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        self.prepared.append(sql)
        return super().executemany(sql, parameters)


def test_a_plain_batch_runs_no_statement_on_tables_it_does_not_touch() -> None:
    connection = sqlite3.connect(":memory:", factory=_CountingConnection)
    assert isinstance(connection, _CountingConnection)
    connection.prepared = []
    db = Database(connection)
    runner = SqliteRunner(db, QueryTables())
    seq = runner.open()
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    for message in _messages():
        seq = runner.apply_batch([message], after_seq=seq, now_ms=1).seq
    db.conn.set_trace_callback(None)
    assert statements, "the trace saw the batches"
    for table in UNUSED_TABLES:
        touching = [s for s in [*statements, *connection.prepared] if f"INTO {table} " in s]
        assert touching == [], f"{table}: {touching[:2]}"
    assert not [s for s in statements if "sqlite_master" in s], "tables listed per batch"
    assert [s for s in statements if "INTO events " in s], "the events were written"
    assert db.execute("SELECT status FROM runs").fetchall() == [("completed",)]


@SETTINGS
@given(histories())
def test_tables_built_batch_by_batch_equal_a_rebuild(history: History) -> None:
    live, rebuilt = Database(memory=True), Database(memory=True)
    runner = SqliteRunner(live, QueryTables())
    seq = runner.open()
    for message in history.messages:
        seq = runner.apply_batch([message], after_seq=seq, now_ms=0).seq
    SqliteRunner(rebuilt, QueryTables()).apply_all(history.messages)
    for table in QueryTables.tables:
        query = f'SELECT * FROM "{table}" ORDER BY 1, 2'
        assert live.execute(query).fetchall() == rebuilt.execute(query).fetchall(), table


def test_no_checkpoints_table_reads_as_no_checkpoint() -> None:
    db = Database(memory=True)
    assert read_checkpoint(db, "dagnats") is None
    runner = SqliteRunner(db, QueryTables())
    runner.open()
    stored = read_checkpoint(db, "dagnats")
    assert stored is not None and stored.seq == 0 and stored.tables == QueryTables.tables


async def test_inline_batches_set_no_busy_timeout_per_batch(tmp_path: Path) -> None:
    target = SqliteTarget(tmp_path / "dagnats.sqlite", QueryTables(), inline=True)
    position = await target.open()
    assert target.db is not None
    statements: list[str] = []
    target.db.conn.set_trace_callback(statements.append)
    try:
        for message in _messages():
            position, _applied = await target.apply([message], position)
        assert await target.stored_seq() == position == len(_messages())
    finally:
        await target.close()
    pragmas = [s for s in statements if s.startswith("PRAGMA busy_timeout")]
    assert pragmas == ["PRAGMA busy_timeout = 0", "PRAGMA busy_timeout = 30000"], pragmas


async def test_a_live_tails_batch_of_a_hundred_ms_is_applied_inline(tmp_path: Path) -> None:
    """A live 10-step chain's batch (about 40 messages in 100 ms) runs in the loop's thread:
    in a worker thread each row's step lets go of the GIL and the loop takes it (futex calls
    by the thousand). Old bound: 16 messages, so such a batch went to the thread."""
    runs = 14
    batch: list[Message] = []
    for index in range(runs):
        run_id = f"run-{index}"
        batch.extend((0, run_id, data) for data in completed_run(run_id))
    batch = [(seq, run_id, data) for seq, (_, run_id, data) in enumerate(batch, 1)]
    assert len(batch) >= 40, len(batch)
    target = SqliteTarget(tmp_path / "dagnats.sqlite", QueryTables(), inline=True)
    position = await target.open()
    assert target.db is not None
    statements: list[str] = []
    target.db.conn.set_trace_callback(statements.append)
    try:
        position, applied = await target.apply(batch, position)
        assert position == len(batch) and applied > len(batch), (position, applied)
    finally:
        await target.close()
    pragmas = [s for s in statements if s.startswith("PRAGMA busy_timeout")]
    assert pragmas == ["PRAGMA busy_timeout = 0"], f"not applied inline: {pragmas}"


async def test_the_query_tables_wal_is_cut_back_after_a_checkpoint(tmp_path: Path) -> None:
    """The WAL is checkpointed by serve's thread, not inside commits (projector_sqlite): it
    grows by a second of batches, and is cut back to `wal_size_limit_bytes` after a
    checkpoint, not left at its largest while serve runs."""
    path = tmp_path / "dagnats.sqlite"
    target = SqliteTarget(path, QueryTables(), inline=True)
    await target.open()
    assert target.db is not None
    try:
        limit = target.db.conn.execute("PRAGMA journal_size_limit").fetchone()[0]
        assert limit == wal_size_limit_bytes
        target.db.conn.execute("CREATE TABLE filler (x BLOB)")
        for _ in range(2 * wal_size_limit_bytes // 4_000):
            target.db.conn.execute("INSERT INTO filler VALUES (randomblob(4000))")
        target.db.conn.commit()
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > wal_size_limit_bytes
        target.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        target.db.conn.execute("INSERT INTO filler VALUES (x'00')")  # (the WAL starts over)
        target.db.conn.commit()
        assert wal.stat().st_size <= wal_size_limit_bytes
    finally:
        await target.close()
