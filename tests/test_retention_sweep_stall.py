"""Serve's retention sweep past many candidates it cannot purge (dagnats/runtime/retention.py
`Retention.sweep`) against a real nats-server and a real SQLite file of query tables.

A parked run (a history message that does not decode) is listed by the tables for good: it is
never purged and its rows stay. Each sweep starts again from the oldest listed run and looks
at `sweep_pages_max` pages of `retention_purges_per_sweep_max` at most, so once that many
parked runs are the oldest, no sweep ever reaches a run listed after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import retention, settings
from dagnats.runtime.log import JetStreamEventLog
from tests.projection_support import completed_run
from tests.test_query_tables_serve import append
from tests.test_retention_sweep import SWEEP_AT_MS, Tables, sweeper

PER_SWEEP = 2
SWEEPS = 4


@pytest.fixture
async def query_tables(private_js: JetStreamContext, tmp_path: Path) -> Any:
    made = Tables(private_js, tmp_path / "serve.sqlite")
    try:
        yield made
    finally:
        await made.target.close()


async def test_a_run_listed_after_a_full_sweep_of_parked_runs_is_purged_by_a_later_sweep(
    private_js: JetStreamContext, query_tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sweep_pages_max * PER_SWEEP parked runs ended first, then one that can be purged: one
    of a few sweeps purges it (each sweep used to stop at the parked ones)."""
    js, log = private_js, JetStreamEventLog(private_js)
    monkeypatch.setattr(settings, "retention_purges_per_sweep_max", PER_SWEEP)
    parked = [f"parked-{n}" for n in range(retention.sweep_pages_max * PER_SWEEP)]
    for n, run_id in enumerate(parked):
        await append(log, run_id, completed_run(run_id, at_ms=100 + n))
    await append(log, "kept", completed_run("kept", at_ms=5_000))
    await query_tables.catch_up()
    for run_id in parked:
        await append(log, run_id, [b"not a history message"])

    sweep = sweeper(js, query_tables.path)
    purged = [await sweep.sweep(SWEEP_AT_MS + n) for n in range(SWEEPS)]
    assert await log.last_seq("kept") == 0, f"never purged ({SWEEPS} sweeps purged {purged})"
    assert all([await log.last_seq(run_id) > 0 for run_id in parked]), "parked runs are left"
