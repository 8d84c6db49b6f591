"""Benchmark: rebuilding projections from the history stream, from sequence 0.

RUNS runs (the chain of `bench.kernel_fold`: every step fails once, then completes; made by
`decide`) are published to DAGNATS_HISTORY on an embedded nats-server. Then, in this process:

- sqlite: `Projector(SqliteTarget(QueryTables))`.catch_up() into a fresh file: the query
  tables (runs, steps, events, run states) with the checkpoint in each batch's transaction;
- kv: `Projector(SnapshotTarget)`.catch_up() into an empty `dagnats_runs` bucket;
- bare: an ordered consumer over `dagnats.history.>` that only counts the messages.

Prints one JSON line; `value` is the SQLite rebuild in events/s (target >= 50k), `ratio` that
over the bare read of the same stream in the same run; the KV rebuild rate is a field.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Final

from bench.common import bench_server
from bench.kernel_fold import build_run
from bench.kernel_fold import chain_workflow as small_chain
from bench.replay import bare_read, encoded, events_in, publish
from dagnats.runtime.connection import Connection
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.projector import (
    MARKER_KEY,
    Projector,
    SnapshotTarget,
    SqliteTarget,
    open_database,
)
from dagnats.runtime.resources import HISTORY_SUBJECTS, RUNS_BUCKET
from projections.sqlite import QueryTables

RUNS: Final = 2_000


async def measure(connection: Connection) -> dict[str, object]:
    js = connection.js
    messages = 0
    events = 0
    for index in range(RUNS):
        run = build_run(small_chain(), f"run-{index}", 1_000 * index)
        await publish(js, f"run-{index}", encoded(run))
        messages += len(run)
        events += events_in(run)

    started = time.perf_counter()
    await bare_read(js, HISTORY_SUBJECTS, messages)
    bare_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="dagnats-bench-sqlite-") as directory:
        path = Path(directory) / "dagnats.sqlite"
        target = SqliteTarget(path, QueryTables())
        started = time.perf_counter()
        position = await Projector(js, target).catch_up()
        sqlite_s = time.perf_counter() - started
        await target.close()
        database = open_database(path, readonly=True)
        stored_events = database.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        stored_runs = database.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        database.close()
    assert (stored_events, stored_runs) == (events, RUNS), (stored_events, stored_runs)

    started = time.perf_counter()
    assert await Projector(js, SnapshotTarget(js)).catch_up() == position
    kv_s = time.perf_counter() - started
    keys = await kv_keys(js, RUNS_BUCKET)  # (nats-py's keys() can list a full bucket as empty)
    snapshots = len([key for key in keys if key != MARKER_KEY])  # the bucket's marker is no run
    assert snapshots == RUNS, snapshots

    sqlite_rate = events / sqlite_s
    return {
        "bench": "projection_rebuild",
        "value": round(sqlite_rate),
        "unit": "events/s",
        "ratio": round(sqlite_rate / (events / bare_s), 4),
        "kv_snapshots_events_per_s": round(events / kv_s),
        "kv_snapshots_written": snapshots,
        "bare_read_events_per_s": round(events / bare_s),
        "events": events,
        "messages": messages,
        "runs": RUNS,
        "target": "value >= 50000",
    }


async def main() -> dict[str, object]:
    async with bench_server("projection-rebuild") as bench:
        result = await measure(bench.connection)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return result


if __name__ == "__main__":
    asyncio.run(main())
