"""Serve's shared projection tail (runtime/projector_shared.SharedTail) against a real
nats-server:

- the query tables and the run snapshots it builds equal those each projection builds when it
  tails alone, for generated histories (hypothesis) and when the projections start at
  different checkpoints (one rebuilt, one half way);
- while another process holds the snapshots' lease it runs the query tables alone, and takes
  the snapshots over when the lease is given up;
- SIGKILL in the middle of a batch: restarted, each projection resumes at its own checkpoint,
  with every event applied exactly once and every snapshot equal to its run's fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from nats.js import JetStreamContext

from dagnats.runtime.connection import Connection
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.lease import Lease
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.projector import (
    LEASE_PREFIX,
    MARKER_KEY,
    SNAPSHOTS,
    Projector,
    SnapshotTarget,
    SqliteTarget,
    open_database,
    stream_last_seq,
)
from dagnats.runtime.projector_shared import SharedTail
from dagnats.runtime.resources import RUNS_BUCKET, ensure_resources
from kernel import codec
from kernel.state import INITIAL_STATE, RunState
from projections.base import read_checkpoint
from projections.snapshot import Snapshot, decode_snapshot, fold_messages
from projections.sqlite import QueryTables
from tests.nats_fixtures import connect, wait_for
from tests.projection_support import History, completed_run, histories
from tests.slow_projection import PAUSE_ENV

REPO = Path(__file__).resolve().parent.parent
WAIT_MS = 30_000

Rows = dict[str, list[tuple[object, ...]]]


async def append(log: JetStreamEventLog, run_id: str, messages: list[bytes]) -> list[int]:
    seqs: list[int] = []
    last = await log.last_seq(run_id)
    for data in messages:
        last = await log.append(run_id, data, msg_id=f"{run_id}:{last}", expected_last_seq=last)
        seqs.append(last)
    return seqs


async def snapshots(js: JetStreamContext) -> dict[str, Snapshot | None]:
    kv = await js.key_value(RUNS_BUCKET)
    keys = [key for key in await kv_keys(js, RUNS_BUCKET) if key != MARKER_KEY]
    return {key: decode_snapshot((await kv.get(key)).value, key) for key in sorted(keys)}


def sqlite_checkpoint(path: Path, name: str) -> tuple[int, int]:
    """(seq, events applied) of a projection's SQLite checkpoint; (0, 0) when none."""
    if not path.exists():
        return 0, 0
    with contextlib.closing(open_database(path, readonly=True)) as db:
        found = read_checkpoint(db, name)
        return (found.seq, found.events) if found is not None else (0, 0)


def dump(path: Path) -> Rows:
    with contextlib.closing(open_database(path, readonly=True)) as db:
        return {
            table: sorted((tuple(r) for r in db.execute(f"SELECT * FROM {table}")), key=repr)
            for table in QueryTables.tables
        }


async def snapshot_checkpoint(js: JetStreamContext) -> int:
    target = SnapshotTarget(js)
    return await target.stored_seq()


async def alone(js: JetStreamContext, path: Path) -> tuple[Rows, dict[str, Snapshot | None]]:
    """Each projection tailed alone (catch up), into `path` and a fresh runs bucket."""
    sqlite = SqliteTarget(path, QueryTables())
    await Projector(js, sqlite, batch_max=7).catch_up()
    await sqlite.close()
    await js.delete_key_value(RUNS_BUCKET)
    await Projector(js, SnapshotTarget(js), batch_max=5).catch_up()
    return dump(path), await snapshots(js)


async def shared(js: JetStreamContext, path: Path) -> tuple[Rows, dict[str, Snapshot | None]]:
    """Both projections on one shared tail until each holds the stream's last sequence."""
    last = await stream_last_seq(js)
    sqlite = SqliteTarget(path, QueryTables())
    tail = SharedTail(js, (SnapshotTarget(js), sqlite), batch_max=6, idle_ms=100, linger_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(tail.run(stop))
    try:
        await wait_for(
            lambda: len(tail.active) == 2 and all(lane.position == last for lane in tail.active),
            timeout_ms=WAIT_MS, what="both lanes at the stream's end",
        )  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_MS / 1000)
        await sqlite.close()
    assert await snapshot_checkpoint(js) == last, "the snapshot checkpoint is stored on stop"
    assert sqlite_checkpoint(path, "dagnats")[0] == last
    return dump(path), await snapshots(js)


def rename(history: History, prefix: str) -> list[tuple[str, bytes]]:
    """The history's messages in stream order, each run id prefixed (unique per example)."""
    renamed: list[tuple[str, bytes]] = []
    for _, run_id, data in history.messages:
        own = f'"run_id":"{prefix}{run_id}"'.encode()
        renamed.append((prefix + run_id, data.replace(f'"run_id":"{run_id}"'.encode(), own)))
    return renamed


@settings(
    max_examples=6, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(history=histories(runs_max=3, commands_max=20))
def test_the_shared_tail_builds_what_each_projection_builds_alone(
    private_server: EmbeddedNats, tmp_path: Path, history: History
) -> None:
    async def check() -> None:
        nc = await connect(private_server.url)
        js = nc.jetstream()
        try:
            await ensure_resources(js)
            log = JetStreamEventLog(js)
            prefix = f"x{await stream_last_seq(js)}-"
            for run_id, data in rename(history, prefix):
                await append(log, run_id, [data])
            directory = Path(tmp_path) / prefix
            directory.mkdir()
            want = await alone(js, directory / "alone.sqlite")
            await js.delete_key_value(RUNS_BUCKET)
            got = await shared(js, directory / "shared.sqlite")
            assert got[0] == want[0], "query tables"
            assert got[1] == want[1], "snapshots"
            own = [run_id for run_id in want[0]["runs"] if str(run_id[0]).startswith(prefix)]
            assert len(own) == len(history.runs), (own, history.runs.keys())
        finally:
            await nc.close()

    asyncio.run(check())


async def test_projections_at_different_checkpoints_catch_up_on_one_tail(
    connection: Connection, tmp_path: Path
) -> None:
    js, log = connection.js, connection.history
    for index in range(6):
        await append(log, f"early-{index}", completed_run(f"early-{index}", at_ms=1_000 + index))
    half = tmp_path / "half.sqlite"
    sqlite = SqliteTarget(half, QueryTables())
    half_seq = await Projector(js, sqlite, batch_max=4).catch_up()  # the tables half way
    await sqlite.close()
    for index in range(6):
        await append(log, f"late-{index}", completed_run(f"late-{index}", at_ms=9_000 + index))
    want = await alone(js, tmp_path / "alone.sqlite")
    await js.delete_key_value(RUNS_BUCKET)  # the snapshots from sequence 0
    got = await shared(js, half)
    assert 0 < half_seq < await stream_last_seq(js)
    assert got == want
    assert (
        sqlite_checkpoint(half, "dagnats")[1]
        == sqlite_checkpoint(tmp_path / "alone.sqlite", "dagnats")[1]
    ), "every event counted once, none twice"
    assert len(got[1]) == 12 and all(s is not None for s in got[1].values())


async def test_the_query_tables_run_alone_while_another_process_holds_the_snapshots(
    connection: Connection, tmp_path: Path
) -> None:
    js, log = connection.js, connection.history
    other = Lease(js, LEASE_PREFIX + SNAPSHOTS, owner="another-engine")
    assert await other.acquire()
    seqs = await append(log, "held", completed_run("held"))
    path = tmp_path / "dagnats.sqlite"
    sqlite = SqliteTarget(path, QueryTables())
    tail = SharedTail(js, (SnapshotTarget(js), sqlite), idle_ms=100, linger_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(tail.run(stop))
    try:

        async def tables_alone() -> bool:
            assert await other.refresh(), "the other process keeps its lease meanwhile"
            return sqlite_checkpoint(path, "dagnats")[0] == seqs[-1]

        await wait_for(tables_alone, timeout_ms=WAIT_MS, what="the query tables alone")
        assert [lane.target.name for lane in tail.active] == ["dagnats"]
        assert await snapshots(js) == {}, "no snapshot written without the lease"
        assert await other.refresh()
        await other.release()
        await wait_for(
            lambda: len(tail.active) == 2, timeout_ms=WAIT_MS, what="the snapshots taken over"
        )

        async def snapshotted() -> bool:
            found = (await snapshots(js)).get("held")
            return found is not None and found.last_seq == seqs[-1]

        await wait_for(snapshotted, timeout_ms=WAIT_MS, what="the run's snapshot")
        more = await append(log, "after", completed_run("after"))
        await wait_for(
            lambda: sqlite_checkpoint(path, "dagnats")[0] == more[-1],
            timeout_ms=WAIT_MS, what="both on one tail again",
        )  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_MS / 1000)
        await sqlite.close()
    assert dump(path)["runs"] and len(dump(path)["runs"]) == 2


async def full_fold(log: JetStreamEventLog, run_id: str) -> tuple[RunState, int]:
    return fold_messages(INITIAL_STATE, 0, [item async for item in log.read(run_id)])


def start_child(url: str, path: Path, pause_ms: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.shared_tail_child", url, str(path)]
    env = {**os.environ, PAUSE_ENV: str(pause_ms)}
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


async def test_sigkill_mid_batch_loses_and_doubles_nothing_in_either_projection(
    connection: Connection, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    js, log = connection.js, connection.history
    expected: list[tuple[int, int]] = []
    runs: list[str] = []
    for index in range(50):
        run_id = f"r{index}"
        messages = completed_run(run_id, at_ms=1_000 + index)
        runs.append(run_id)
        for seq, data in zip(await append(log, run_id, messages), messages, strict=True):
            expected.extend((seq, i) for i in range(len(codec.decode_decision(data).events)))
    last_seq = await stream_last_seq(js)
    path = tmp_path / "slow.sqlite"
    child = start_child(private_server.url, path, pause_ms=3)
    try:
        await wait_for(
            lambda: sqlite_checkpoint(path, "slow")[0] > 0, timeout_ms=WAIT_MS,
            what="a first batch",
        )  # fmt: skip
        stop_child(child)
    finally:
        stop_child(child)
    killed_at = sqlite_checkpoint(path, "slow")[0]
    assert 0 < killed_at < last_seq, "killed in the middle of the backlog"
    child = start_child(private_server.url, path, pause_ms=0)
    try:
        await wait_for(
            lambda: sqlite_checkpoint(path, "slow")[0] == last_seq, timeout_ms=WAIT_MS,
            what="the tables after the restart",
        )  # fmt: skip

        async def snapshots_done() -> bool:
            return await snapshot_checkpoint(js) == last_seq

        await wait_for(snapshots_done, timeout_ms=WAIT_MS, what="the snapshot checkpoint")
    finally:
        stop_child(child)
    with contextlib.closing(open_database(path, readonly=True)) as db:
        stored = sorted(db.execute("SELECT seq, idx FROM slow_events").fetchall())
    assert stored == sorted(expected), "each event exactly once"
    found = await snapshots(js)
    assert sorted(found) == sorted(runs)
    for run_id in runs:
        snapshot = found[run_id]
        assert snapshot is not None
        assert (snapshot.state, snapshot.last_seq) == await full_fold(log, run_id), run_id


def test_a_tail_needs_distinct_projection_names(tmp_path: Path) -> None:
    one = SqliteTarget(tmp_path / "a.sqlite", QueryTables())
    two = SqliteTarget(tmp_path / "b.sqlite", QueryTables())
    with pytest.raises(AssertionError, match="names must differ"):
        SharedTail(None, (one, two))  # type: ignore[arg-type]
