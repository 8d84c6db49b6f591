"""End to end, against a real `dagnats serve` and a real worker process: retention (`serve
--retention`), `dagnats run delete`, `dagnats run list --purged` and `dagnats workflow delete`
(dagnats/runtime/retention.py, dagnats/cli/lifecycle.py), driven through the `dagnats` command.

A running run is never purged; a purged run's history, snapshot and query rows are gone and
recorded in the retention log; the other runs' history and audit are untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dagnats.client import Client
from dagnats.client.errors import RunNotFoundError, WorkflowNotFoundError
from dagnats.runtime.projector import SQLITE_FILE
from dagnats.runtime.retention import purged_runs
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for
from tests.test_lifecycle_e2e import cli_json, wait_status

purge_timeout_ms = 20_000

QUICK: list[dict[str, Any]] = [{"id": "only", "task": "fault.work"}]
HELD: list[dict[str, Any]] = [{"id": "hold", "task": "fault.work", "metadata": {"gate": "hold"}}]



def rows_of(data_dir: Path, run_id: str) -> int:
    """The run's rows in the query tables (runs, steps, events)."""
    path = data_dir / SQLITE_FILE
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5.0)
    try:
        return sum(
            int(
                db.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[
                    0
                ]
            )
            for table in ("runs", "steps", "events")
        )
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


async def history_count(client: Client, run_id: str) -> int:
    return len([item async for item in client.history_bytes(run_id)])


async def test_run_delete_purges_one_finished_run_and_refuses_a_running_one(
    procs: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    serve = await procs.serve(data, http=None)
    procs.cli_worker(serve.url)
    url = ("--nats-url", serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("quick", QUICK))
        await client.register_workflow(workflow("held", HELD))
        gone, kept = await client.start("quick", {"n": 1}), await client.start("quick", {"n": 2})
        running = await client.start("held", {"n": 3})
        for run_id in (gone, kept):
            await wait_status(client, run_id, "completed")
        await wait_status(client, running, "running")
        await wait_for(lambda: rows_of(data, gone) > 0, timeout_ms=purge_timeout_ms, what="rows")
        kept_history = [item async for item in client.history_bytes(kept)]
        running_history = await history_count(client, running)
        gone_last_seq = [seq async for seq, _ in client.history_bytes(gone)][-1]

        refused = procs.cli("run", "delete", running, *url)
        assert refused.returncode == 1, refused.stdout
        assert f"run {running!r} is running: only a finished run" in refused.stderr
        assert await history_count(client, running) == running_history

        deleted = cli_json(procs, "run", "delete", gone, *url)
        assert deleted["run_id"] == gone and deleted["status"] == "completed", deleted
        assert deleted["reason"] == "run delete"
        assert deleted["history_last_seq"] == gone_last_seq, deleted  # (a sequence, no count)
        assert "history_messages" not in deleted, deleted
        with pytest.raises(RunNotFoundError):
            await client.get_run(gone)
        assert await history_count(client, gone) == 0
        await wait_for(
            lambda: rows_of(data, gone) == 0, timeout_ms=purge_timeout_ms, what="its rows gone"
        )
        assert rows_of(data, kept) > 0

        listed = cli_json(procs, "run", "list", "--purged", *url)
        assert [r["run_id"] for r in listed] == [gone], listed
        assert listed[0]["history_last_seq"] == gone_last_seq, listed
        again = procs.cli("run", "retry", gone, *url)
        assert again.returncode == 1 and "run list" in again.stderr, again.stderr

        assert [item async for item in client.history_bytes(kept)] == kept_history
        report = await client.audit(kept, sqlite_path=data / SQLITE_FILE)
        assert report.consistent, report
        procs.open_gate("hold")
        await wait_status(client, running, "completed")
        assert (await client.audit(running)).consistent


async def test_serve_retention_purges_old_finished_runs_never_a_running_one(
    procs: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    serve = await procs.serve(data, http=None, extra_args=("--retention", "2s"))
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("quick", QUICK))
        await client.register_workflow(workflow("held", HELD))
        running = await client.start("held", {})
        done = await client.start("quick", {})
        await wait_status(client, done, "completed")
        await wait_status(client, running, "running")

        async def purged(run_id: str) -> bool:
            return run_id in [r.run_id for r in await purged_runs(client.connection.js, 100)]

        await wait_for(lambda: purged(done), timeout_ms=purge_timeout_ms, what="the purge")
        with pytest.raises(RunNotFoundError):
            await client.get_run(done)
        await wait_for(lambda: rows_of(data, done) == 0, timeout_ms=purge_timeout_ms, what="rows")
        # Older than the retention age by now, and still running: untouched.
        state = await client.get_run(running)
        assert state.status == "running" and not await purged(running)
        assert (await client.audit(running)).consistent
        procs.open_gate("hold")
        await wait_status(client, running, "completed")
        await wait_for(lambda: purged(running), timeout_ms=purge_timeout_ms, what="its purge")
        [record] = [r for r in await purged_runs(client.connection.js, 100) if r.run_id == running]
        assert record.status == "completed" and record.reason == "retention 2s"


async def test_workflow_delete_is_refused_with_open_runs_unless_forced(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    url = ("--nats-url", serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("held", HELD))
        run_id = await client.start("held", {})
        await wait_status(client, run_id, "running")

        refused = procs.cli("workflow", "delete", "held", *url)
        assert refused.returncode == 1
        assert "workflow 'held' has 1 open run(s)" in refused.stderr and "--force" in refused.stderr
        await client.get_workflow("held")  # still there

        forced = cli_json(procs, "workflow", "delete", "held", "--force", *url)
        assert forced == {"workflow": "held", "deleted": True, "cancelled": [run_id]}
        await wait_status(client, run_id, "cancelled")
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow("held")
        assert "held" not in await client.list_workflows()
