"""A worker skips the task of a run that ended before it took it (runtime/ended_runs.py),
against a real `dagnats serve` and a real `dagnats worker`: the handler is never called, the
worker says so in its log; after `dagnats run retry` reopens the run, its new task runs."""

from __future__ import annotations

from pathlib import Path

from dagnats.client import Client
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for

wait_ms = 20_000



async def wait_status(client: Client, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await client.get_run(run_id)).status == status

    await wait_for(reached, timeout_ms=wait_ms, what=f"run {run_id} to be {status}")


async def test_a_cancelled_runs_waiting_task_is_skipped_and_runs_after_a_retry(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("late", [{"id": "only", "task": "fault.work"}]))
        cancelled = await client.start("late", {"n": 1})
        running = await client.start("late", {"n": 2})
        await wait_status(client, cancelled, "running")
        await client.cancel(cancelled, reason="changed my mind")
        await wait_status(client, cancelled, "cancelled")

        worker = procs.cli_worker(serve.url)
        await wait_status(client, running, "completed")  # the worker is serving now
        skipped = f"run {cancelled} is cancelled: its task only attempt 1 is skipped"
        await wait_for(lambda: skipped in worker.stderr(), timeout_ms=wait_ms,
                       what="the worker to log the skip")  # fmt: skip
        assert procs.calls_of(cancelled, "only") == [], "the handler was never called"

        done = procs.cli("run", "retry", cancelled, "--nats-url", serve.url)
        assert done.returncode == 0, done.stdout + done.stderr
        await wait_status(client, cancelled, "completed")
    assert [c["attempt"] for c in procs.calls_of(cancelled, "only")] == [2], (
        "the reopened run's task is newer than its end: it runs"
    )
