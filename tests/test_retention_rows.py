"""Serve's retention drops the query rows of purged runs (dagnats/runtime/retention.py
`delete_rows`): of the purged life of a run only. A run id started again after its purge has
rows of its new life (a higher history sequence) that the drop keeps, however often serve
drops the rows of the retention log's records (each serve process does so once at its start)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from dagnats.runtime.retention import delete_rows
from projections.base import SqliteRunner
from projections.sqlite import QueryTables
from tests.projection_support import completed_run

RUN = "run-1"


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "runs": "SELECT status, last_seq FROM runs WHERE run_id = ?",
        "steps": "SELECT step_id, status FROM steps WHERE run_id = ? ORDER BY step_id",
        "events": "SELECT seq FROM events WHERE run_id = ? ORDER BY seq",
    }
    db = sqlite3.connect(path)
    try:
        return {table: db.execute(sql, (RUN,)).fetchall() for table, sql in queries.items()}
    finally:
        db.close()


def _two_lives(path: Path, *, restarted: bool = False) -> int:
    """The tables after a completed life of RUN (purged at the returned sequence) and the
    first two messages of its next life, folded by the same projection (the old life's state
    in its memory) or, `restarted`, by a new one (the old life's rows folded first)."""
    tables = QueryTables()
    runner = SqliteRunner(Database(path), tables)
    first = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
    purged = first[-1][0]
    runner.apply_all(first)
    if restarted:
        runner.db.close()
        tables = QueryTables()
        runner = SqliteRunner(Database(path), tables)
    again = completed_run(RUN, at_ms=90_000)[:2]
    runner.apply_all([(purged + 5 + index, RUN, data) for index, data in enumerate(again)])
    assert not tables.problems, tables.problems
    runner.db.close()
    return purged


@pytest.mark.parametrize("restarted", [False, True])
def test_dropping_a_purged_lifes_rows_keeps_the_rows_of_the_runs_new_life(
    tmp_path: Path, restarted: bool
) -> None:
    path = tmp_path / "query.sqlite"
    purged = _two_lives(path, restarted=restarted)
    before = _rows(path)
    assert before["runs"] == [("running", purged + 6)], before
    assert any(seq <= purged for (seq,) in before["events"]), before

    assert delete_rows(path, [(RUN, purged)]) > 0
    after = _rows(path)
    assert after["runs"] == before["runs"]
    assert after["steps"] == before["steps"] and after["steps"], after
    assert after["events"] == [(seq,) for (seq,) in before["events"] if seq > purged], after
    assert len(after["events"]) >= 2, after

    assert delete_rows(path, [(RUN, purged)]) == 0  # (a later serve drops the record again)
    assert _rows(path) == after


def test_a_purge_with_no_newer_life_drops_every_row_of_the_run(tmp_path: Path) -> None:
    path = tmp_path / "query.sqlite"
    runner = SqliteRunner(Database(path), QueryTables())
    messages = [(seq, RUN, data) for seq, data in enumerate(completed_run(RUN), start=1)]
    runner.apply_all(messages)
    runner.db.close()
    assert delete_rows(path, [(RUN, messages[-1][0])]) > 0
    assert _rows(path) == {"runs": [], "steps": [], "events": []}


def test_a_purge_of_unknown_extent_drops_every_row_of_the_run(tmp_path: Path) -> None:
    """A record of before the purged sequence was kept (0), or a run whose history is gone."""
    path = tmp_path / "query.sqlite"
    _two_lives(path)
    assert delete_rows(path, [(RUN, None)]) > 0
    assert _rows(path) == {"runs": [], "steps": [], "events": []}
