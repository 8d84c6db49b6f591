"""Reads of the retention log (dagnats/runtime/retention.py) against a real nats-server:
serve's `Retention.drop_rows` drops the query rows of every purged run, however many the log
holds, and `purged_runs` (`dagnats run list --purged`) gives the newest purges first. Both
took the log's first `retention_listed_max` subjects in the order of their names (run ids),
so past that many records a purged run whose id sorted after them kept its rows, and the
list left the newest purges out."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.retention import Retention, purge_run, purged_runs
from tests.projection_support import completed_run, tables_caught_up
from tests.test_query_tables_serve import append

RUNS = ("c-run", "a-run", "b-run")  # purged in this order (the last, by name, in the middle)


def runs_rows(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [str(row[0]) for row in db.execute("SELECT run_id FROM runs ORDER BY run_id")]


async def test_every_purged_runs_rows_are_dropped_and_the_newest_purges_listed_first(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, log = private_js, JetStreamEventLog(private_js)
    for run_id in (*RUNS, "kept"):
        await append(log, run_id, completed_run(run_id))
    path = tmp_path / "serve.sqlite"
    await tables_caught_up(js, path)
    assert runs_rows(path) == sorted((*RUNS, "kept"))
    at_ms = now_ms()
    for offset, run_id in enumerate(RUNS):
        await purge_run(js, run_id, reason="run delete", at_ms=at_ms + offset)
    monkeypatch.setattr(settings, "retention_listed_max", 2)

    retention = Retention(js, path)
    await retention.drop_rows()
    await retention.drop_rows()  # (a log longer than one read is read on at the next)
    assert runs_rows(path) == ["kept"], "every purged run's rows are dropped"
    listed = [record.run_id for record in await purged_runs(js, 10)]
    assert listed == ["b-run", "a-run"], "the newest purges, newest first"
