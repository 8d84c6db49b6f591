"""Projections against a real nats-server (a private one per test: streams start empty).

- snapshots in KV: the engine and the client load snapshot + tail and get the full fold; a
  corrupt or impossible snapshot is ignored;
- delete the KV bucket and the SQLite file: both come back equal;
- the live projector sees new messages and starts over after a rebuild;
- SIGKILL `dagnats projection run` in the middle of a batch: it resumes at its checkpoint with
  no duplicate and no missing row;
- `dagnats serve` runs the projections; `run list` filters, `query`, `history export`,
  `run audit` and `projection status` read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from sqlite_utils import Database

from dagnats.client import Client
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.projector import (
    MARKER_KEY,
    SNAPSHOTS,
    KvSnapshotStore,
    Projector,
    SnapshotTarget,
    SqliteTarget,
    open_database,
)
from dagnats.runtime.resources import RUNS_BUCKET
from dagnats.runtime.serve import Server
from kernel import codec
from kernel.state import INITIAL_STATE, RunState
from projections.base import read_checkpoint, reset_projection
from projections.snapshot import Snapshot, decode_snapshot, encode_snapshot, fold_messages
from projections.sqlite import QueryTables
from tests.nats_fixtures import wait_for, wait_for_sync
from tests.projection_support import completed_run, run_messages, two_step_workflow
from tests.slow_projection import PAUSE_ENV
from tests.strategies import replay

REPO = Path(__file__).resolve().parent.parent
DAGNATS = [sys.executable, "-m", "dagnats.cli"]


async def append_run(log: JetStreamEventLog, run_id: str, messages: list[bytes]) -> list[int]:
    seqs: list[int] = []
    last = 0
    for index, data in enumerate(messages):
        last = await log.append(run_id, data, msg_id=f"{run_id}:{index}", expected_last_seq=last)
        seqs.append(last)
    return seqs


def long_run_messages(run_id: str, retries: int) -> list[bytes]:
    """A run whose step `a` fails `retries` times (each a few events) before both complete."""
    from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, StartRun
    from kernel.workflow import RetryPolicy

    workflow = msgspec.structs.replace(
        two_step_workflow("long"),
        default_retry=RetryPolicy(max_attempts=retries + 1, strategy="fixed", initial_delay_ms=1),
    )
    commands: list[AnyCommand] = [StartRun(run_id="run-1", at_ms=1_000, workflow=workflow)]
    at = 1_000
    for attempt in range(1, retries + 1):
        at += 10
        commands.append(FailTask(run_id="run-1", at_ms=at, step_id="a", attempt=attempt, error="x"))
        commands.append(
            FireTimer(
                run_id="run-1", at_ms=at + 1, timer_id=f"retry.a.{attempt + 1}", kind="retry",
                step_id="a", attempt=attempt + 1,
            )
        )  # fmt: skip
    run = replay(workflow, commands)
    assert run.final.step("a") is not None
    final_attempt = run.final.steps[0].attempt
    commands.append(CompleteTask(run_id="run-1", at_ms=at + 5, step_id="a", attempt=final_attempt))
    commands.append(CompleteTask(run_id="run-1", at_ms=at + 6, step_id="b", attempt=1))
    run = replay(workflow, commands)
    assert run.final.status == "completed", run
    return run_messages(run, run_id)


async def full_fold(log: JetStreamEventLog, run_id: str) -> tuple[RunState, int]:
    messages = [item async for item in log.read(run_id)]
    return fold_messages(INITIAL_STATE, 0, messages)


async def test_engine_and_client_load_snapshot_plus_tail_and_ignore_bad_snapshots(
    connection: Connection,
) -> None:
    log, js = connection.history, connection.js
    messages = long_run_messages("long-1", retries=30)
    seqs = await append_run(log, "long-1", messages[:-2])
    await Projector(js, SnapshotTarget(js)).catch_up()
    store = KvSnapshotStore(js)
    snapshot = await store.get("long-1")
    assert snapshot is not None and snapshot.last_seq == seqs[-1], "64+ events: a snapshot"
    await append_run_tail(log, "long-1", messages, len(seqs))
    engine = Engine(log, connection.tasks, connection.timers, connection.commands, snapshots=store)
    want = await full_fold(log, "long-1")
    loaded = await engine.fold_history("long-1")
    assert (loaded.state, loaded.last_seq) == want and want[0].status == "completed"
    client = Client(connection)
    assert await client.get_run("long-1") == want[0]

    kv = await js.key_value(RUNS_BUCKET)
    await kv.put("long-1", b"{corrupt")
    assert await store.get("long-1") is None
    assert (await engine.fold_history("long-1")).state == want[0]
    ahead = Snapshot(schema=snapshot.schema, run_id="long-1", last_seq=10**9, state=want[0])
    await kv.put("long-1", encode_snapshot(ahead))
    assert await store.get("long-1") is not None
    reloaded = await engine.fold_history("long-1")
    assert (reloaded.state, reloaded.last_seq) == want, "a snapshot past the history is ignored"
    old_schema = encode_snapshot(msgspec.structs.replace(snapshot, schema="0.old"))
    await kv.put("long-1", old_schema)
    assert decode_snapshot(old_schema, "long-1") is None and await store.get("long-1") is None
    assert await client.get_run("long-1") == want[0]


async def append_run_tail(
    log: JetStreamEventLog, run_id: str, messages: list[bytes], done: int
) -> None:
    last = await log.last_seq(run_id)
    for index in range(done, len(messages)):
        last = await log.append(
            run_id, messages[index], msg_id=f"{run_id}:{index}", expected_last_seq=last
        )


async def snapshots_of(js: JetStreamContext) -> dict[str, Snapshot | None]:
    kv = await js.key_value(RUNS_BUCKET)
    keys = await kv_keys(js, RUNS_BUCKET)
    found: dict[str, Snapshot | None] = {}
    for key in keys:
        if key == MARKER_KEY:  # the bucket's marker is no run
            continue
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):  # deleted: no snapshot
            found[key] = decode_snapshot((await kv.get(key)).value, key)
    return found


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = open_database(path, readonly=True)
    try:
        return {
            table: sorted((tuple(r) for r in db.execute(f"SELECT * FROM {table}")), key=repr)
            for table in QueryTables.tables
        }
    finally:
        db.close()


async def test_delete_the_bucket_and_the_sqlite_file_and_both_come_back_equal(
    connection: Connection, tmp_path: Path
) -> None:
    log, js = connection.history, connection.js
    for index in range(12):
        await append_run(log, f"run-{index}", completed_run(f"run-{index}", at_ms=1_000 + index))
    await append_run(log, "long-1", long_run_messages("long-1", retries=25))
    await append_run(log, "partial", completed_run("partial")[:2])
    path = tmp_path / "dagnats.sqlite"

    async def build() -> tuple[dict[str, Snapshot | None], dict[str, list[tuple[object, ...]]]]:
        sqlite = SqliteTarget(path, QueryTables())
        last = await Projector(js, sqlite, batch_max=7).catch_up()
        await sqlite.close()
        assert last == await Projector(js, SnapshotTarget(js), batch_max=5).catch_up()
        return await snapshots_of(js), dump(path)

    snapshots, rows = await build()
    assert len(rows["runs"]) == 14 and len(snapshots) == 13, "ended runs are snapshotted"
    assert all(s is not None and s.state.status == "completed" for s in snapshots.values())
    await js.delete_key_value(RUNS_BUCKET)
    path.unlink()
    assert await build() == (snapshots, rows)


async def test_the_live_projector_follows_new_messages_and_starts_over_after_a_rebuild(
    connection: Connection, tmp_path: Path
) -> None:
    log, js = connection.history, connection.js
    await append_run(log, "first", completed_run("first"))
    path = tmp_path / "dagnats.sqlite"
    target = SqliteTarget(path, QueryTables())
    stop = asyncio.Event()
    task = asyncio.create_task(Projector(js, target, idle_ms=50, linger_ms=20).run(stop))
    try:

        def runs() -> int:
            if not path.exists():
                return 0
            db = open_database(path, readonly=True)
            try:
                names = db.table_names()
                return (
                    db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in names else 0
                )
            finally:
                db.close()

        await wait_for(lambda: runs() == 1, timeout_ms=5_000, what="the first run's row")
        await append_run(log, "second", completed_run("second"))
        last = await log.last_seq("second")
        await wait_for(
            lambda: _checkpoint(path, "dagnats") == last, timeout_ms=5_000, what="the second run"
        )
        before = dump(path)
        assert len(before["runs"]) == 2
        db = open_database(path)
        reset_projection(db, "dagnats")
        db.close()
        assert runs() == 0
        await wait_for(
            lambda: _checkpoint(path, "dagnats") == last, timeout_ms=5_000, what="the rebuild"
        )
        assert dump(path) == before
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await target.close()


def _checkpoint(path: Path, name: str = "slow") -> int:
    if not path.exists():
        return 0
    with contextlib.closing(open_database(path, readonly=True)) as db:
        checkpoint = read_checkpoint(db, name)
        return checkpoint.seq if checkpoint is not None else 0


async def test_sigkill_mid_batch_resumes_at_the_checkpoint_without_duplicates_or_gaps(
    connection: Connection, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    log = connection.history
    expected: list[tuple[int, int]] = []
    for index in range(60):
        messages = completed_run(f"r{index}", at_ms=1_000 + index)
        for seq, data in zip(await append_run(log, f"r{index}", messages), messages, strict=True):
            expected.extend((seq, i) for i in range(len(codec.decode_decision(data).events)))
    last_seq = max(seq for seq, _ in expected)
    path = tmp_path / "custom.sqlite"
    command = [
        *DAGNATS, "projection", "run", "tests.slow_projection:SlowProjection",
        "--db", str(path), "--nats-url", private_server.url, "--batch", "20",
    ]  # fmt: skip
    env = {**os.environ, PAUSE_ENV: "3"}
    child = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        wait_for_sync(lambda: _checkpoint(path) > 0, timeout_ms=20_000, what="a first batch")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stderr is not None
        child.stderr.close()
    killed_at = _checkpoint(path)
    assert 0 < killed_at < last_seq, "killed in the middle of the backlog"
    with contextlib.closing(open_database(path, readonly=True)) as db:
        stored = sorted(db.execute("SELECT seq, idx FROM slow_events").fetchall())
    assert stored == [e for e in expected if e[0] <= killed_at], "rows match the checkpoint"
    env[PAUSE_ENV] = "0"
    finished = subprocess.run(
        [*command, "--once"], cwd=REPO, env=env, capture_output=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr.decode()
    assert _checkpoint(path) == last_seq
    with contextlib.closing(open_database(path, readonly=True)) as db:
        stored = sorted(db.execute("SELECT seq, idx FROM slow_events").fetchall())
    assert stored == sorted(expected), "each event exactly once"


async def test_serve_runs_the_projections_and_the_cli_reads_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        assert server.connection is not None
        log = server.connection.history
        await append_run(log, "ok-1", completed_run("ok-1", name="pair", at_ms=1_700_000_000_000))
        failing = completed_run("open-1", name="other", at_ms=1_700_000_100_000)[:2]
        await append_run(log, "open-1", failing)
        sqlite = data_dir / "dagnats.sqlite"
        last = await log.last_seq("open-1")
        await wait_for(
            lambda: _checkpoint(sqlite, "dagnats") == last,
            timeout_ms=10_000,
            what="serve's SQLite projection",
        )
        env = {**os.environ, "DAGNATS_NATS_URL": server.url, "DAGNATS_DATA_DIR": str(data_dir)}

        def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*DAGNATS, *arguments], cwd=REPO, env=env, capture_output=True, text=True,
                timeout=30, check=False,
            )  # fmt: skip

        listed = await asyncio.to_thread(cli, "run", "list", "--status", "completed", "--json")
        assert [row["run_id"] for row in msgspec.json.decode(listed.stdout)] == ["ok-1"]
        listed = await asyncio.to_thread(cli, "run", "list", "--workflow", "other", "--json")
        assert [row["run_id"] for row in msgspec.json.decode(listed.stdout)] == ["open-1"]
        listed = await asyncio.to_thread(
            cli, "run", "list", "--since", "2023-11-14T22:15", "--json"
        )
        assert [row["run_id"] for row in msgspec.json.decode(listed.stdout)] == ["open-1"]
        queried = await asyncio.to_thread(
            cli, "query", "SELECT status, COUNT(*) AS n FROM runs GROUP BY status", "--json"
        )
        assert msgspec.json.decode(queried.stdout) == [
            {"status": "completed", "n": 1}, {"status": "running", "n": 1},
        ]  # fmt: skip
        refused = await asyncio.to_thread(cli, "query", "DELETE FROM runs")
        assert refused.returncode == 1 and "readonly" in refused.stderr.replace(" ", "")
        exported = await asyncio.to_thread(cli, "history", "export", "ok-1")
        assert exported.stdout.encode() == b"\n".join(completed_run(
            "ok-1", name="pair", at_ms=1_700_000_000_000)) + b"\n"  # fmt: skip
        audited = await asyncio.to_thread(cli, "run", "audit", "ok-1")
        assert audited.returncode == 0, audited.stderr
        assert "consistent (3 messages" in audited.stdout and "rows agree" in audited.stdout
        audited = await asyncio.to_thread(cli, "run", "audit", "--all", "--workflow", "pair")
        assert audited.returncode == 0 and "1 runs" in audited.stdout, audited.stderr
        status = await asyncio.to_thread(cli, "projection", "status", "--json")
        names = {row["name"]: row for row in msgspec.json.decode(status.stdout)}
        assert set(names) == {"dagnats", SNAPSHOTS}, status.stderr
        assert names["dagnats"]["lag"] == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()


def test_open_database_refuses_a_missing_file_when_read_only(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        open_database(tmp_path / "none.sqlite", readonly=True)
    db = Database(memory=True)
    assert read_checkpoint(db, "x") is None
