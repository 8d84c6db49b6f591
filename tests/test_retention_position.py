"""Where serve's reading of the retention log is (dagnats/runtime/retention.py
`Retention.drop_rows`, dagnats/runtime/retention_rows.py), against a real nats-server and a
real SQLite file of query tables:

- The position is kept in the SQLite file: a restarted serve reads on from it (it read the
  whole log again at every start, up to a million records, deleting rows of runs long gone).
- A log made again (the stream deleted and created) is read from its start: its new records
  came at sequences below the position kept in memory and were skipped until a restart.
- A projector that read a run's history before its purge and commits the rows after the
  rows were dropped: the record is read again until the projections passed the purged
  history, and the rows go (they stayed until serve restarted).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import retention
from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import SqliteTarget
from dagnats.runtime.retention import RETENTION_STREAM, Retention, ensure_log, purge_run
from dagnats.runtime.retention_rows import QUERY_TABLES
from projections.base import Message
from projections.sqlite import NAME, QueryTables
from tests.projection_support import completed_run, tables_caught_up
from tests.test_query_tables_serve import append


def runs_rows(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [str(row[0]) for row in db.execute("SELECT run_id FROM runs ORDER BY run_id")]


async def tables_of(
    js: JetStreamContext, path: Path, *run_ids: str, at_ms: int = 1_000
) -> None:
    log = JetStreamEventLog(js)
    for run_id in run_ids:
        await append(log, run_id, completed_run(run_id, at_ms=at_ms))
    await tables_caught_up(js, path)


def reads_of(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (after, until) sequences of every read of the log."""
    reads: list[tuple[int, int]] = []
    read = retention.read_records

    async def read_records(js: JetStreamContext, after_seq: int, last_seq: int) -> Any:
        reads.append((after_seq, last_seq))
        return await read(js, after_seq, last_seq)

    monkeypatch.setattr(retention, "read_records", read_records)
    return reads


async def test_a_restarted_serve_reads_on_from_the_position_kept_in_the_file(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, path = private_js, tmp_path / "serve.sqlite"
    await tables_of(js, path, "gone", "kept")
    await purge_run(js, "gone", reason="run delete", at_ms=now_ms())
    await Retention(js, path).drop_rows()
    assert runs_rows(path) == ["kept"]

    reads = reads_of(monkeypatch)
    await Retention(js, path).drop_rows()  # (serve started again)
    assert reads == [], "the log read already is not read again"
    await purge_run(js, "kept", reason="run delete", at_ms=now_ms())
    await Retention(js, path).drop_rows()
    assert runs_rows(path) == []
    assert reads == [(1, 2)], "a new record is read from where the last read stopped"


async def test_a_log_made_again_is_read_from_its_start(
    private_js: JetStreamContext, tmp_path: Path
) -> None:
    js, path = private_js, tmp_path / "serve.sqlite"
    await tables_of(js, path, "first", "second", "kept")
    reader = Retention(js, path)
    await purge_run(js, "first", reason="run delete", at_ms=now_ms())
    await purge_run(js, "kept", reason="run delete", at_ms=now_ms())
    await reader.drop_rows()
    await tables_of(js, path, "kept", at_ms=50_000)  # (a new life of the id: rows again)
    assert runs_rows(path) == ["kept", "second"]

    await js.delete_stream(RETENTION_STREAM)
    await ensure_log(js)
    await purge_run(js, "second", reason="run delete", at_ms=now_ms())  # (sequence 1)
    await reader.drop_rows()
    assert runs_rows(path) == ["kept"], "the new log's record is read; its rows go"


async def test_rows_a_lagging_projector_wrote_after_the_drop_go_too(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, path = private_js, tmp_path / "serve.sqlite"
    log = JetStreamEventLog(js)
    await tables_of(js, path, "kept")
    await append(log, "late", completed_run("late"))
    fetched: list[Message] = [
        (seq, "late", data) async for seq, data in log.read("late")
    ]  # (what the projector fetched before the purge, and commits after the drop)
    await purge_run(js, "late", reason="run delete", at_ms=now_ms())
    reader = Retention(js, path)
    await reader.drop_rows()

    target = SqliteTarget(path, QueryTables())
    try:
        after_seq = await target.open()
        await target.apply(fetched, after_seq)
    finally:
        await target.close()
    assert runs_rows(path) == ["kept", "late"], "the projector wrote the purged run's rows"
    await reader.drop_rows()
    assert runs_rows(path) == ["kept"], "they go at the next read of the log"
    reads = reads_of(monkeypatch)
    await reader.drop_rows()
    assert reads == [], "the projections passed the purged history: the record is done with"


def test_the_query_tables_projection_is_the_one_waited_for() -> None:
    assert QUERY_TABLES == NAME
