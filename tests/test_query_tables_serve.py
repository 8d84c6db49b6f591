"""The query tables' run states kept in memory between batches (projections/sqlite.py,
version 3), against a real nats-server and real serves: the tables equal a rebuild from zero
when a run's rows are changed under a running instance by another connection, across a
`projection rebuild` while serve runs and across a serve killed and started again beside
another; a purged run's lag is gone from status and metrics.

- retention (`run delete`, `serve --retention`) deletes a purged run's rows from every table
  (`retention.delete_rows`, its own connection) without moving the checkpoint: the state the
  instance kept of that run is not that of the rows any more. A run started again under the
  same id (a caller-given id) must then be folded from the start, as a rebuild does.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import msgspec
from msgspec.structs import replace
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.client.errors import RunNotFoundError
from dagnats.observe.status import collect
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import SQLITE_FILE, Projector, SqliteTarget, stream_last_seq
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.retention import delete_rows, purge_run
from kernel.commands import StartRun
from projections.sqlite import QueryTables
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for
from tests.projection_support import completed_run
from tests.test_lifecycle_e2e import cli_json, wait_status
from tests.test_projector_shared import dump, full_fold, snapshots, sqlite_checkpoint
from tests.test_retention_e2e import QUICK

RUN = "again"
WAIT_MS = 20_000


async def append(log: JetStreamEventLog, run_id: str, messages: list[bytes]) -> None:
    """Append as the engine does (its message id names the payload's digest)."""
    last = await log.last_seq(run_id)
    for data in messages:
        msg_id = f"{run_id}:{last}:{hashlib.blake2b(data, digest_size=8).hexdigest()}"
        last = await log.append(run_id, data, msg_id=msg_id, expected_last_seq=last)


async def _rebuilt(js: JetStreamContext, path: Path) -> dict[str, list[tuple[object, ...]]]:
    """The query tables rebuilt from sequence 0 into a new file."""
    target = SqliteTarget(path, QueryTables())
    try:
        await Projector(js, target, batch_max=50).catch_up()
    finally:
        await target.close()
    return dump(path)


async def test_a_run_started_again_after_its_purge_is_folded_from_its_start(
    private_js: JetStreamContext, tmp_path: Path
) -> None:
    js = private_js
    await ensure_resources(js)
    log = JetStreamEventLog(js)
    await append(log, "other", completed_run("other", at_ms=500))
    await append(log, RUN, completed_run(RUN, at_ms=1_000))
    path = tmp_path / "serve.sqlite"
    target = SqliteTarget(path, QueryTables())  # (one instance throughout: serve's)
    projector = Projector(js, target, batch_max=50)
    try:
        await projector.catch_up()
        assert dump(path)["runs"], "the first run is in the tables"
        await purge_run(js, RUN, reason="run delete", at_ms=now_ms())
        assert delete_rows(path, [(RUN, None)]) > 0  # (what serve's Retention.drop_rows does)
        await append(log, RUN, completed_run(RUN, at_ms=90_000))  # the same id, started again
        await projector.catch_up()
        incremental = dump(path)
    finally:
        await target.close()
    rebuilt = await _rebuilt(js, tmp_path / "rebuilt.sqlite")
    assert [row[0] for row in rebuilt["runs"]] == ["again", "other"], rebuilt["runs"]
    assert incremental["runs"] == rebuilt["runs"]
    assert incremental == rebuilt


async def test_serve_shows_a_run_started_again_after_run_delete(
    procs: Processes, tmp_path: Path
) -> None:
    """The same, through a real `dagnats serve` (its engine's folds handed to the tables),
    `dagnats run delete` and a worker: the new run's row is in serve's query tables."""
    data = tmp_path / "data"
    serve = await procs.serve(data, http=None)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("quick", QUICK))
        await client.start("quick", {"n": 1}, run_id=RUN)
        await wait_status(client, RUN, "completed")
        first = await client.get_run(RUN)
        await wait_for(lambda: _runs_row(data) is not None, timeout_ms=WAIT_MS, what="its row")
        deleted = cli_json(procs, "run", "delete", RUN, "--nats-url", serve.url)
        assert deleted["run_id"] == RUN, deleted
        await wait_for(lambda: _runs_row(data) is None, timeout_ms=WAIT_MS, what="rows gone")
        # (`client.start` sends `start:<id>`, which the commands stream drops as a duplicate
        # for its duplicate window: the start is sent as it does, under another message id.)
        definition = replace(await client.get_workflow("quick"), triggers=msgspec.UNSET)
        again = StartRun(run_id=RUN, at_ms=now_ms(), seed=new_seed(), workflow=definition,
                         input=msgspec.Raw(b'{"n":2}'))  # fmt: skip
        await client.send(again, msg_id=f"start:{RUN}:again")

        async def second_started() -> bool:
            with contextlib.suppress(RunNotFoundError):
                return (await client.get_run(RUN)).started_at_ms > first.started_at_ms
            return False

        await wait_for(second_started, timeout_ms=WAIT_MS, what="the second run started")
        second = await client.get_run(RUN)

        def shows_the_second() -> bool:
            row = _runs_row(data)
            return row is not None and row[1:] == (second.started_at_ms, '{"n":2}')

        await wait_for(shows_the_second, timeout_ms=WAIT_MS, what="the second run's row")


def _runs_row(data: Path) -> tuple[object, ...] | None:
    db = sqlite3.connect(data / SQLITE_FILE, timeout=5.0)
    try:
        row = db.execute(
            "SELECT status, started_at_ms, input FROM runs WHERE run_id = ?", (RUN,)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return tuple(row) if row is not None else None


LONG: list[dict[str, object]] = [
    {
        "id": f"s{index}",
        "task": "fault.work",
        **({"depends_on": [f"s{index - 1}"]} if index else {}),
    }
    for index in range(45)
]  # (a chain: over 128 events a run, so states are stored at 64 and 128 and loaded back)


async def _serve_tables_at_the_end(client: Client, data: Path) -> None:
    last = await stream_last_seq(client.connection.js)
    await wait_for(
        lambda: sqlite_checkpoint(data / SQLITE_FILE, "dagnats")[0] >= last,
        timeout_ms=WAIT_MS, what="serve's query tables at the stream's end",
    )  # fmt: skip


async def test_serve_tables_equal_a_rebuild_before_and_after_projection_rebuild(
    procs: Processes, tmp_path: Path
) -> None:
    """Serve's query tables (its engine's folds taken, its states kept in memory) equal an
    offline rebuild from zero, for runs past 64 and 128 events; and again after
    `dagnats projection rebuild dagnats` while it runs."""
    data = tmp_path / "data"
    serve = await procs.serve(data, http=None)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("long", LONG))
        runs = [await client.start("long", {"n": index}) for index in range(3)]
        for run_id in runs:
            await wait_status(client, run_id, "completed")
        assert (await client.get_run(runs[0])).event_count > 128
        await _serve_tables_at_the_end(client, data)
        expected = await _rebuilt(client.connection.js, tmp_path / "offline.sqlite")
        assert len(expected["runs"]) == 3 and len(expected["_run_states"]) == 3
        assert dump(data / SQLITE_FILE) == expected
        rebuilt = procs.cli("projection", "rebuild", "dagnats", "--data-dir", str(data))
        assert rebuilt.returncode == 0, rebuilt.stderr
        await wait_status(client, await client.start("long", {"n": 9}), "completed")
        await _serve_tables_at_the_end(client, data)
        expected = await _rebuilt(client.connection.js, tmp_path / "offline-2.sqlite")
        assert dump(data / SQLITE_FILE) == expected


async def test_two_serves_one_killed_mid_batch_each_tables_equal_a_rebuild(
    procs: Processes, tmp_path: Path
) -> None:
    """Two serves on one NATS (two engines, each its own folds and SQLite file, one snapshot
    lease); B is SIGKILLed while runs go on and started again: both files equal an offline
    rebuild from zero once every run completed (runs past 128 events, moving between
    engines, so a message's state comes from this engine's folds, or from its own fold of the
    other engine's message)."""
    serve = await procs.serve(tmp_path / "a", http=None)
    other = await procs.serve(tmp_path / "b", nats_url=serve.url, http=None)
    procs.cli_worker(serve.url)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        js = client.connection.js
        log = JetStreamEventLog(js)
        await client.register_workflow(workflow("long", LONG))
        runs = [await client.start("long", {"n": index}) for index in range(6)]
        start = await stream_last_seq(js)

        async def well_under_way() -> bool:
            return await stream_last_seq(js) > start + 150

        await wait_for(well_under_way, timeout_ms=4 * WAIT_MS, what="150 messages appended")
        await other.process.kill()
        other = await procs.serve(tmp_path / "b", nats_url=serve.url, http=None)

        async def all_completed() -> bool:
            return all([await _completed(client, run_id) for run_id in runs])

        await wait_for(all_completed, timeout_ms=4 * WAIT_MS, what="every run completed")
        await _serve_tables_at_the_end(client, tmp_path / "a")
        await _serve_tables_at_the_end(client, tmp_path / "b")
        expected = await _rebuilt(js, tmp_path / "offline.sqlite")

        async def snapshots_at_the_end() -> bool:
            found = await snapshots(js)
            return all((s := found.get(r)) and s.state.status == "completed" for r in runs)

        await wait_for(snapshots_at_the_end, timeout_ms=WAIT_MS, what="every run's snapshot")
        for run_id, snapshot in (await snapshots(js)).items():
            assert snapshot is not None
            assert (snapshot.state, snapshot.last_seq) == await full_fold(log, run_id), run_id
    assert len(expected["runs"]) == 6 and len(expected["_run_states"]) == 6
    assert dump(tmp_path / "a" / SQLITE_FILE) == expected
    assert dump(tmp_path / "b" / SQLITE_FILE) == expected


async def _completed(client: Client, run_id: str) -> bool:
    return (await client.get_run(run_id)).status == "completed"


async def test_the_lag_in_status_and_metrics_goes_to_zero_when_the_last_run_is_purged(
    connection: Connection, tmp_path: Path
) -> None:
    """d6e79cc brought the lag a running projector mirrors into KV to 0 when the stream's last
    messages were purged before it applied them; `dagnats status`, `dagnats projection status`
    and the `projection_lag` metric take the lag from the checkpoint and the stream's last
    sequence (observe/status.py), and kept showing those messages as lag."""
    js = connection.js
    log = JetStreamEventLog(js)
    await append(log, "kept", completed_run("kept", at_ms=500))
    path = tmp_path / "dagnats.sqlite"
    target = SqliteTarget(path, QueryTables())
    try:
        await Projector(js, target, batch_max=50).catch_up()
    finally:
        await target.close()
    await append(log, RUN, completed_run(RUN, at_ms=1_000))  # appended last, then purged:
    await purge_run(js, RUN, reason="run delete", at_ms=now_ms())  # (nothing left to apply)
    facts = await collect(connection.nc, js, url="nats://test", sqlite_path=path)
    [tables] = [p for p in facts.projections if p.name == "dagnats"]
    assert tables.position == sqlite_checkpoint(path, "dagnats")[0] < await stream_last_seq(js)
    assert tables.lag == 0, tables
