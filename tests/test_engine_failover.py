"""Crash tests of engines and projections with real processes: `dagnats serve` restarted on a
data dir of unfinished runs with no SQLite file (20 times), two serves on one NATS sharing the
commands and the snapshot projection (no checkpoint fights; one SIGSTOPped mid-load, the other
finishes its runs and takes the projection over), and the snapshot bucket deleted while serve
runs (the snapshots come back).

Processes come from tests/fault_support.py (killed by pid at teardown, output tails printed on
failure). Every wait is bounded and says what it waited for; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from dagnats.client import Client
from dagnats.runtime.projector import SQLITE_FILE, KvSnapshotStore, open_database
from dagnats.runtime.resources import RUNS_BUCKET
from kernel.events import AnyEvent
from kernel.state import is_terminal
from tests.fault_support import (
    Process,
    Processes,
    Serve,
    connected,
    count_events,
    decisions_of,
    events_of,
    process_is_gone,
    workflow,
)
from tests.nats_fixtures import wait_for

restarts = 20
healthy_timeout_ms = 20_000  # one restart: serve up, runs resumed, the SQLite tables rebuilt
runs_timeout_ms = 30_000
takeover_timeout_ms = 20_000  # the commands of a stopped engine move within the ack wait (3 s)
kill_timeout_ms = 5_000

EVERY_STEP_TYPE: list[dict[str, Any]] = [
    {"id": "note", "type": "log", "config": {"message": "hello"}},
    {"id": "nap", "type": "sleep", "config": {"duration": "1h"}},
    {"id": "gate", "type": "approval", "config": {"question": "ok?"}},
    {"id": "sig", "type": "wait_signal", "config": {"signal": "go"}},
    {"id": "ev", "type": "wait_for_event", "config": {"event": "never-published"}},
    {"id": "child", "type": "sub_workflow", "config": {"workflow": "waiter"}},
    {"id": "work", "task": "fault.idle"},  # no worker serves fault.idle: the tasks wait
    {"id": "agent", "type": "agent_loop", "task": "fault.idle"},
    {"id": "plan", "type": "planner", "task": "fault.idle"},
    {
        "id": "fan",
        "type": "map",
        "task": "fault.idle",
        "depends_on": ["note"],
        "config": {"items_path": "items"},
    },
]
WAITER: list[dict[str, Any]] = [{"id": "w", "type": "wait_signal", "config": {"signal": "go"}}]
CHAIN: list[dict[str, Any]] = [
    {"id": "s", "type": "wait_signal", "config": {"signal": "next"}},
    {"id": "again", "type": "continue_as_new", "depends_on": ["s"]},
]
THREE: list[dict[str, Any]] = [
    {"id": "a", "task": "fault.work"},
    {"id": "b", "task": "fault.work", "depends_on": ["a"]},
    {"id": "c", "task": "fault.work", "depends_on": ["b"]},
]



def tags_of(events: list[AnyEvent]) -> set[str]:
    from kernel.events import event_tag

    return {event_tag(type(event)) for event in events}


async def kill_serve(serve: Serve) -> None:
    """SIGKILL serve and wait until its nats-server child died with it."""
    nats_pid = serve.nats_pid()
    await serve.process.kill()
    await wait_for(
        lambda: process_is_gone(nats_pid),
        timeout_ms=kill_timeout_ms,
        what=f"nats-server {nats_pid} to die with serve",
    )


def sqlite_runs(path: Path) -> int:
    """Rows of the query tables' `runs` table (0 while the file or the table is missing)."""
    if not path.exists():
        return 0
    try:
        db = open_database(path, readonly=True)
    except Exception:
        return 0
    try:
        if "runs" not in db.table_names():
            return 0
        return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        db.close()


async def leave_runs_unfinished(client: Client) -> tuple[str, str, str]:
    """A run waiting in every step type, its child, and a continue-as-new chain's second run;
    returns (run, child, the chain's root)."""
    for name, steps in (("every", EVERY_STEP_TYPE), ("waiter", WAITER), ("chain", CHAIN)):
        await client.register_workflow(workflow(name, steps))
    run_id = await client.start("every", {"items": [1, 2]}, run_id="every-1")
    chain_id = await client.start("chain", None, run_id="chain-1")
    await client.signal(chain_id, "next")
    wanted = {
        "child.started",
        "map.expanded",
        "approval.requested",
        "timer.started",
        "log.recorded",
        "step.scheduled",
    }

    async def all_waiting() -> bool:
        events = events_of(await decisions_of(client, run_id))
        chain = events_of(await decisions_of(client, chain_id))
        if not wanted <= tags_of(events) or "run.continued_as_new" not in tags_of(chain):
            return False
        if [child.status for child in await client.children(run_id)] != ["running"]:
            return False
        running = [s.run_id for s in await client.list_runs() if not is_terminal(s)]
        return len(running) == 3  # every, its child, the chain's second run

    await wait_for(all_waiting, timeout_ms=runs_timeout_ms, what="every step type waiting")
    children = await client.children(run_id)
    return run_id, children[0].child_run_id, chain_id


async def test_serve_restarts_healthy_20_times_on_unfinished_runs_without_sqlite(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir)
    async with connected(serve.url) as client:
        run_id, child_id, _chain = await leave_runs_unfinished(client)
        unfinished = [s for s in await client.list_runs() if not is_terminal(s)]
    assert len(unfinished) == 3, [(s.run_id, s.status) for s in unfinished]  # every, child, chain-2
    runs_total = 4  # and chain-1, which continued as new
    sqlite = data_dir / SQLITE_FILE
    resumed_line = f"resumed {len(unfinished)} unfinished run(s) of {runs_total}"
    await kill_serve(serve)

    for attempt in range(restarts):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite}{suffix}").unlink(missing_ok=True)
        serve = await procs.serve(data_dir, port=serve.port)
        process = serve.process

        def healthy(process: Process = process, attempt: int = attempt) -> bool:
            assert process.alive(), f"try {attempt}: serve exited\n{process.tail()}"
            return resumed_line in process.stderr() and sqlite_runs(sqlite) == runs_total

        await wait_for(healthy, timeout_ms=healthy_timeout_ms, what=f"try {attempt}: healthy")
        assert "Traceback" not in process.stderr(), process.tail()
        if attempt < restarts - 1:
            await kill_serve(serve)

    async with connected(serve.url, "admin") as client:  # the runs go on after 20 restarts
        await client.signal(child_id, "go")
        await client.approve(run_id, "gate", by="test")
        child = await client.wait(child_id, timeout_s=runs_timeout_ms / 1000)
        assert child.status == "completed", child.status

        async def parent_moved() -> bool:
            state = await client.get_run(run_id)
            done = {step.step_id for step in state.steps if step.status == "completed"}
            return {"child", "gate", "note"} <= done

        await wait_for(parent_moved, timeout_ms=runs_timeout_ms, what="child and gate completed")
        events = events_of(await decisions_of(client, run_id))
    assert count_events(events, "run.started") == {"": 1}
    assert count_events(events, "step.completed")["child"] == 1


async def snapshots_of(client: Client, run_ids: list[str]) -> int:
    store = KvSnapshotStore(client.connection.js)
    found = 0
    for run_id in run_ids:
        snapshot = await store.get(run_id)
        found += snapshot is not None and is_terminal(snapshot.state)
    return found


async def snapshotted(client: Client, run_ids: list[str]) -> bool:
    return await snapshots_of(client, run_ids) == len(run_ids)


async def start_and_wait(client: Client, prefix: str, count: int) -> list[str]:
    run_ids = [f"{prefix}-{index}" for index in range(count)]
    for run_id in run_ids:
        await client.start("three", None, run_id=run_id, wait_started_s=0)
    return run_ids


async def all_completed(client: Client, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        if await client.connection.history.last_seq(run_id) == 0:
            return False
        if (await client.get_run(run_id)).status != "completed":
            return False
    return True


def owner_and_other(first: Serve, second: Serve) -> tuple[Serve, Serve]:
    runs_it = "projection snapshots: this process runs it now"
    owners = [s for s in (first, second) if runs_it in s.process.stderr()]
    assert len(owners) == 1, "exactly one serve runs the snapshot projection"
    return owners[0], (second if owners[0] is first else first)


async def test_two_serves_share_the_work_and_one_survives_the_other_stopped(
    procs: Processes, tmp_path: Path
) -> None:
    first = await procs.serve(tmp_path / "a")
    second = await procs.serve(tmp_path / "b", nats_url=first.url)
    procs.worker(first.url)
    async with connected(first.url) as client:
        await client.register_workflow(workflow("three", THREE))
        early = await start_and_wait(client, "early", 20)
        await wait_for(
            lambda: all_completed(client, early),
            timeout_ms=runs_timeout_ms,
            what="the first runs on two engines",
        )
        await wait_for(
            lambda: snapshotted(client, early), timeout_ms=runs_timeout_ms, what="their snapshots"
        )
        for serve in (first, second):
            assert "starting over" not in serve.process.stderr(), serve.process.tail()
        owner, other = owner_and_other(first, second)
        assert "projection snapshots: standing by" in other.process.stderr()

        late = await start_and_wait(client, "late", 20)
        os.kill(owner.process.pid, signal.SIGSTOP)  # mid-load: it holds commands and the lease
        stopped_at = time.monotonic()
        try:
            await wait_for(
                lambda: all_completed(client, late),
                timeout_ms=takeover_timeout_ms,
                what="the other engine to complete every run",
            )
            took_s = time.monotonic() - stopped_at
            await wait_for(
                lambda: snapshotted(client, late),
                timeout_ms=takeover_timeout_ms,
                what="the projection to move",
            )
        finally:
            os.kill(owner.process.pid, signal.SIGCONT)
        print(f"runs completed {took_s:.1f} s after the SIGSTOP")  # measured, never asserted
        assert "projection snapshots: this process runs it now" in other.process.stderr()
        await wait_for(
            lambda: "standing by" in owner.process.stderr(),
            timeout_ms=takeover_timeout_ms,
            what="the resumed engine to stand by",
        )
        assert owner.process.alive() and other.process.alive()
        histories = [events_of(await decisions_of(client, r)) for r in early + late]
    for events in histories:
        assert count_events(events, "step.completed") == {"a": 1, "b": 1, "c": 1}
        assert count_events(events, "run.completed") == {"": 1}


async def test_snapshots_come_back_after_the_bucket_is_deleted_while_serve_runs(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.worker(serve.url)
    async with connected(serve.url, "admin") as client:  # it deletes and purges a bucket
        await client.register_workflow(workflow("three", THREE))
        run_ids = await start_and_wait(client, "kept", 5)
        await wait_for(
            lambda: snapshotted(client, run_ids), timeout_ms=runs_timeout_ms, what="the snapshots"
        )
        await client.connection.js.delete_key_value(RUNS_BUCKET)
        assert await snapshots_of(client, run_ids) == 0
        await wait_for(
            lambda: snapshotted(client, run_ids),
            timeout_ms=runs_timeout_ms,
            what="the snapshots to come back",
        )
        await client.connection.js.purge_stream(f"KV_{RUNS_BUCKET}")  # emptied, not deleted
        assert await snapshots_of(client, run_ids) == 0
        await wait_for(
            lambda: snapshotted(client, run_ids),
            timeout_ms=runs_timeout_ms,
            what="the snapshots to come back again",
        )
    assert "Traceback" not in serve.process.stderr()
