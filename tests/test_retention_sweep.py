"""Serve's retention sweep (dagnats/runtime/retention.py `Retention.sweep`) against a real
nats-server and a real SQLite file of query tables: the candidates come from the tables, the
truth from history.

- A listed run whose history is gone loses the rows of the life the tables listed, up to the
  sequence they were at: a new life of the id, begun between the listing and the delete,
  keeps its rows (the delete used to drop every row under the id).
- A listed run the sweep cannot purge (its history parked, or gone) holds back none of the
  runs listed after it (a parked run used to end every sweep; a gone one was listed first
  for good, the purges of one sweep being bounded).
- A new life of a listed id that ended after the cutoff is not purged.
- A purge cancels the purged life's timers, not a new life's.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from dagnats.client.errors import RunNotFoundError
from dagnats.runtime import retention, settings
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import Projector, SqliteTarget
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    HISTORY_STREAM,
    SCHEDULE_PREFIX,
    history_subject,
)
from dagnats.runtime.retention import Retention
from dagnats.runtime.timers import JetStreamTimers
from projections.sqlite import QueryTables
from tests.projection_support import completed_run
from tests.test_query_tables_serve import append

RETENTION_MS = 1_000_000
SWEEP_AT_MS = 10_000_000  # (every run below but the new lives ended before the cutoff)


def rows(path: Path, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "runs": "SELECT status, last_seq FROM runs WHERE run_id = ?",
        "steps": "SELECT step_id FROM steps WHERE run_id = ? ORDER BY step_id",
        "events": "SELECT seq FROM events WHERE run_id = ? ORDER BY seq",
    }
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {table: db.execute(sql, (run_id,)).fetchall() for table, sql in queries.items()}


class Tables:
    """The query tables of one test, caught up from the history stream on demand."""

    def __init__(self, js: JetStreamContext, path: Path) -> None:
        self.path = path
        self.target = SqliteTarget(path, QueryTables())
        self.projector = Projector(js, self.target, batch_max=50)

    async def catch_up(self) -> None:
        await self.projector.catch_up()


@pytest.fixture
async def tables(private_js: JetStreamContext, tmp_path: Path) -> Any:
    made = Tables(private_js, tmp_path / "serve.sqlite")
    try:
        yield made
    finally:
        await made.target.close()


def sweeper(js: JetStreamContext, path: Path) -> Retention:
    return Retention(js, path, retention_ms=RETENTION_MS, admin=js)


def on_not_found(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[None]]
) -> list[str]:
    """The sweep's purges go through; one that finds no history runs `meanwhile` before it
    raises (what another client does between the purge's read and the sweep's delete)."""
    purge = retention.purge_run
    missed: list[str] = []

    async def purge_run(js: JetStreamContext, run_id: str, **options: Any) -> Any:
        try:
            return await purge(js, run_id, **options)
        except RunNotFoundError:
            missed.append(run_id)
            await meanwhile()
            raise

    monkeypatch.setattr(retention, "purge_run", purge_run)
    return missed


async def test_a_gone_runs_rows_go_up_to_the_listed_life_and_a_new_life_keeps_its(
    private_js: JetStreamContext, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, log = private_js, JetStreamEventLog(private_js)
    await append(log, "gone", completed_run("gone", at_ms=1_000))
    await tables.catch_up()
    first_life = rows(tables.path, "gone")
    [(status, listed_seq)] = first_life["runs"]
    assert status == "completed" and first_life["steps"], first_life
    await js.purge_stream(HISTORY_STREAM, subject=history_subject("gone"))  # (by hand: no log)

    async def started_again() -> None:
        await append(log, "gone", completed_run("gone", at_ms=SWEEP_AT_MS)[:2])
        await tables.catch_up()

    missed = on_not_found(monkeypatch, started_again)
    assert await sweeper(js, tables.path).sweep(SWEEP_AT_MS) == 0
    assert missed == ["gone"], "the sweep tried to purge the listed run"
    after = rows(tables.path, "gone")
    [(status, new_seq)] = after["runs"]
    assert status == "running" and new_seq > listed_seq, after
    assert after["steps"], "the new life's steps rows are kept"
    assert after["events"] and all(seq > listed_seq for (seq,) in after["events"]), after


async def test_a_run_that_cannot_be_purged_holds_back_none_listed_after_it(
    private_js: JetStreamContext, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, log = private_js, JetStreamEventLog(private_js)
    for at_ms, run_id in ((500, "parked"), (1_000, "gone"), (2_000, "kept")):
        await append(log, run_id, completed_run(run_id, at_ms=at_ms))
    await tables.catch_up()
    await append(log, "parked", [b"not a history message"])
    await js.purge_stream(HISTORY_STREAM, subject=history_subject("gone"))
    monkeypatch.setattr(settings, "retention_purges_per_sweep_max", 1)

    sweep = sweeper(js, tables.path)
    assert await sweep.sweep(SWEEP_AT_MS) == 1
    assert await log.last_seq("kept") == 0, "the run listed after the others is purged"
    assert rows(tables.path, "gone") == {"runs": [], "steps": [], "events": []}
    assert await log.last_seq("parked") > 0, "a parked run is left as it is"
    assert rows(tables.path, "parked")["runs"], rows(tables.path, "parked")


async def test_a_new_life_of_a_listed_id_that_ended_after_the_cutoff_is_not_purged(
    private_js: JetStreamContext, tables: Tables
) -> None:
    js, log = private_js, JetStreamEventLog(private_js)
    await append(log, "again", completed_run("again", at_ms=1_000))
    await tables.catch_up()  # (the tables list the first life; they see no more of it)
    await retention.purge_run(js, "again", reason="run delete", at_ms=2_000_000)
    await append(log, "again", completed_run("again", at_ms=SWEEP_AT_MS - 10_000))
    new_last = await log.last_seq("again")

    assert await sweeper(js, tables.path).sweep(SWEEP_AT_MS) == 0
    assert await log.last_seq("again") == new_last, "the new life's history is kept"


async def test_a_timer_armed_after_the_purge_read_the_run_is_kept(
    private_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge cancels the purged life's timers left armed, not those of a life begun under
    the id (or a reopen) between its read of the run and its purge of the schedules: it
    purges the run's schedules stored up to the commands stream's last sequence at the read
    (a purge of the subject used to take them all, and the new life's sleep never fired)."""
    js, log = private_js, JetStreamEventLog(private_js)
    await append(log, "timed", completed_run("timed", at_ms=1_000))
    timers = JetStreamTimers(js, partitions=1)
    await timers.arm("timed", "old.1", SWEEP_AT_MS * 10, b"{}")  # (left armed by the old life)
    purge = js.purge_stream

    async def purge_stream(name: str, **options: Any) -> bool:
        done = await purge(name, **options)
        if name == HISTORY_STREAM:  # the history is gone: the id is started again, a timer set
            await timers.arm("timed", "new.1", SWEEP_AT_MS * 10, b"{}")
        return done

    monkeypatch.setattr(js, "purge_stream", purge_stream)
    await retention.purge_run(js, "timed", reason="run delete", at_ms=2_000_000)
    assert await schedules(js, "timed") == ["dagnats.sched.timed.new.1"]


async def schedules(js: JetStreamContext, run_id: str) -> list[str]:
    """The run's armed timers' subjects."""
    info = await js.stream_info(COMMANDS_STREAM, subjects_filter=f"{SCHEDULE_PREFIX}.{run_id}.>")
    return sorted(info.state.subjects or {})
