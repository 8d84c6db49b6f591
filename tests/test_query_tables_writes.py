"""What the query tables write per batch, and what they read first (projections/sqlite.py).

- a run whose `run.started` is in the batch reads nothing stored (its rows begin there; an old
  life's steps, if its id was used before, are deleted);
- a run held from the last batch is updated in the columns that changed (its `runs` row in
  its progress alone while its status stays; a step's row in its state, no insert tried), and
  is not looked up again while no other connection wrote the file; after another connection
  wrote (retention), it is;
- the rows stay those of a rebuild.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from dagnats.runtime.retention import delete_rows
from kernel.commands import AnyCommand, CompleteTask, StartRun
from kernel.workflow import StepDef, WorkflowDef
from projections.base import Message, SqliteRunner
from projections.sqlite import QueryTables
from tests.projection_support import completed_run, run_messages
from tests.strategies import RUN_ID, replay

RUN = "run-1"


def _batches(runner: SqliteRunner, messages: list[Message], seq: int) -> list[list[str]]:
    """Apply each message in a batch of its own; the statements each batch ran."""
    traced: list[list[str]] = []
    for message in messages:
        statements: list[str] = []
        runner.db.conn.set_trace_callback(statements.append)
        seq = runner.apply_batch([message], after_seq=seq, now_ms=1).seq
        runner.db.conn.set_trace_callback(None)
        traced.append(statements)
    return traced


def _tables(db: Database) -> dict[str, list[tuple[object, ...]]]:
    return {
        table: db.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
        for table in QueryTables.tables
    }


def _solo_run(at_ms: int) -> list[bytes]:
    """A one-step run (step `x`) that completes, under RUN."""
    workflow = WorkflowDef(name="solo", steps=(StepDef(id="x", task="fetch"),))
    commands: list[AnyCommand] = [
        StartRun(run_id=RUN_ID, at_ms=at_ms, workflow=workflow),
        CompleteTask(run_id=RUN_ID, at_ms=at_ms + 1_000, step_id="x", attempt=1),
    ]
    return run_messages(replay(workflow, commands), RUN)


def test_a_batch_that_starts_a_run_reads_nothing_stored_of_it() -> None:
    runner = SqliteRunner(Database(memory=True), QueryTables())
    messages = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
    first = _batches(runner, messages[:1], runner.open())[0]
    reads = [s for s in first if s.startswith("SELECT") and "_dagnats_projections" not in s]
    assert reads == [], reads
    assert [s for s in first if s.startswith("DELETE FROM steps")], "an old life's steps"


def test_a_held_runs_rows_are_updated_in_what_changed_and_equal_a_rebuild() -> None:
    tables = QueryTables()
    runner = SqliteRunner(Database(memory=True), tables)
    messages = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
    traced = _batches(runner, messages, runner.open())
    assert not tables.problems, tables.problems
    middle = traced[1]  # (step a completed, b scheduled: the run still running)
    assert [s for s in middle if s.startswith("UPDATE runs SET steps_total")], middle
    assert not [s for s in middle if s.startswith("INSERT INTO runs")], middle
    assert [s for s in middle if s.startswith("UPDATE steps SET status")], middle
    assert not [s for s in middle if s.startswith("INSERT INTO steps")], middle
    looked_up = [s for batch in traced for s in batch if "FROM runs" in s]
    assert looked_up == [], looked_up  # (no other connection wrote the file)
    last = traced[-1]  # (the run completed: its status changed, its row written whole)
    assert [s for s in last if s.startswith("INSERT INTO runs")], last
    rebuilt = SqliteRunner(Database(memory=True), QueryTables())
    rebuilt.apply_all(messages)
    assert _tables(runner.db) == _tables(rebuilt.db)


def test_after_another_connection_wrote_a_held_run_is_looked_up_again(tmp_path: Path) -> None:
    path = tmp_path / "query.sqlite"
    tables = QueryTables()
    runner = SqliteRunner(Database(path), tables)
    messages = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
    seq = runner.open()
    _batches(runner, messages[:1], seq)
    other = sqlite3.connect(path)
    other.execute("UPDATE runs SET workflow = workflow WHERE run_id = ?", (RUN,))
    other.commit()
    other.close()
    traced = _batches(runner, messages[1:2], 1)
    assert [s for s in traced[0] if s.startswith("SELECT last_seq FROM runs")], traced[0]
    traced = _batches(runner, messages[2:], 2)  # (no other write since: held, not looked up)
    assert not [s for s in traced[0] if s.startswith("SELECT last_seq FROM runs")], traced[0]
    assert not tables.problems, tables.problems
    runner.db.close()
    assert delete_rows(path, [(RUN, None)]) > 0  # (retention, on a connection of its own)
    runner = SqliteRunner(Database(path), tables)
    after = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN)[1:], start=10)]
    _batches(runner, after[:1], 3)
    assert tables.problems and "before run.started" in tables.problems[0], tables.problems


def test_a_run_id_started_again_in_a_later_batch_keeps_only_its_new_lifes_steps() -> None:
    for restarted in (False, True):
        db = Database(memory=True)
        runner = SqliteRunner(db, QueryTables())
        old = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
        seq = runner.apply_all(old)
        if restarted:  # (a new instance: the old life not in memory)
            runner = SqliteRunner(db, QueryTables())
        new = [(seq + 3 + index, RUN, data) for index, data in enumerate(_solo_run(90_000))]
        _batches(runner, new, seq)
        steps = db.execute("SELECT step_id, status FROM steps").fetchall()
        assert steps == [("x", "completed")], (restarted, steps)
        runs = db.execute("SELECT workflow, status, started_at_ms FROM runs").fetchall()
        assert runs == [("solo", "completed", 90_000)], (restarted, runs)
