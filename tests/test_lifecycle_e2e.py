"""End to end, against a real `dagnats serve` and a real worker process: dead letters, retry in
place, rerun and terminate (kernel.reopen, dagnats/client/lifecycle.py, dagnats/cli/dlq.py
and dagnats/cli/lifecycle.py), driven through the `dagnats` command as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagnats.client import Client
from kernel.events import RunReopened
from tests.fault_support import (
    Processes,
    connected,
    decisions_of,
    events_of,
    workflow,
)
from tests.nats_fixtures import wait_for

step_timeout_ms = 15_000



FLAKY_CHAIN: list[dict[str, Any]] = [
    {"id": "fetch", "task": "fault.work"},
    {"id": "charge", "task": "fault.work", "depends_on": ["fetch"],
     "metadata": {"fail_attempts": "1"}},
    {"id": "mail", "task": "fault.work", "depends_on": ["charge"]},
]  # fmt: skip


async def wait_status(client: Client, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await client.get_run(run_id)).status == status

    await wait_for(reached, timeout_ms=step_timeout_ms, what=f"run {run_id} to be {status}")


def cli_json(procs: Processes, *args: str) -> Any:
    done = procs.cli(*args, "--json")
    assert done.returncode == 0, f"dagnats {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


async def test_a_dead_letter_is_listed_once_and_retried_into_a_completed_run(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("orders", FLAKY_CHAIN))
        run_id = await client.start("orders", {"order": 7})
        await wait_status(client, run_id, "failed")

        letters = cli_json(procs, "dlq", "list", "--nats-url", serve.url)
        mine = [d for d in letters if d["run_id"] == run_id]
        assert [(d["step_id"], d["attempts"]) for d in mine] == [("charge", 1)], letters
        fetched = (await client.get_run(run_id)).step("fetch")
        assert fetched is not None
        assert mine[0]["input"] == json.loads(bytes(fetched.output)), "the exact task input"
        shown = cli_json(procs, "dlq", "show", run_id, "charge", "--nats-url", serve.url)
        assert "asked to fail attempt 1" in shown["error"]["message"]

        retried = cli_json(procs, "dlq", "retry", run_id, "charge", "--nats-url", serve.url)
        assert retried["run_id"] == run_id
        await wait_status(client, run_id, "completed")
        events = events_of(await decisions_of(client, run_id))
    assert [e.reset for e in events if isinstance(e, RunReopened)] == [("charge",)]
    assert [c["attempt"] for c in procs.calls_of(run_id, "fetch")] == [1], "fetch kept"
    assert [c["attempt"] for c in procs.calls_of(run_id, "charge")] == [1, 2]
    assert [c["attempt"] for c in procs.calls_of(run_id, "mail")] == [1]
    after = cli_json(procs, "dlq", "list", "--nats-url", serve.url)
    assert not [d for d in after if d["run_id"] == run_id], "its step ran again: no dead letter"


async def test_retry_bulk_dry_run_then_from_a_step_and_rerun(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.cli_worker(serve.url)
    always: list[dict[str, Any]] = [
        {"id": "a", "task": "fault.work"},
        {"id": "b", "task": "fault.work", "depends_on": ["a"], "metadata": {"fail_attempts": "1"}},
    ]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("bulk", always))
        runs = [await client.start("bulk", {"n": n}) for n in range(2)]
        for run_id in runs:
            await wait_status(client, run_id, "failed")
        url = ("--nats-url", serve.url)
        dry = cli_json(
            procs, "run", "retry", "--workflow", "bulk", "--since", "1h", "--dry-run", *url
        )
        assert sorted(r["run_id"] for r in dry["runs"]) == sorted(runs) and dry["dry_run"]
        statuses = [(await client.get_run(r)).status for r in runs]
        assert statuses == ["failed", "failed"], "a dry run changes nothing"

        cli_json(procs, "run", "retry", runs[0], "--from", "a", *url)
        await wait_status(client, runs[0], "completed")
        assert [c["attempt"] for c in procs.calls_of(runs[0], "a")] == [1, 2], "from a: a again"

        rerun = cli_json(procs, "run", "rerun", runs[1], *url)
        new_id = rerun["run_id"]
        assert new_id != runs[1]
        await wait_status(client, new_id, "failed")  # attempt 1 fails in the new run as well
        assert (await client.get_run(new_id)).input == (await client.get_run(runs[1])).input
        assert (await client.get_run(runs[1])).status == "failed", "the old run stays"

        refused = procs.cli("run", "retry", runs[0], *url)
        assert refused.returncode != 0 and "completed" in refused.stderr, refused.stderr


async def test_terminate_ends_a_run_at_once_without_compensation(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.cli_worker(serve.url)
    steps: list[dict[str, Any]] = [
        {"id": "book", "task": "fault.work", "compensate": "unbook"},
        {"id": "wait", "task": "fault.work", "depends_on": ["book"], "metadata": {"gate": "w"}},
        {"id": "unbook", "task": "fault.work"},
    ]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("trip", steps))
        run_id = await client.start("trip", None)
        await wait_for(
            lambda: len(procs.calls_of(run_id, "wait")) == 1,
            timeout_ms=step_timeout_ms,
            what="the gated step to be running",
        )
        url = ("--nats-url", serve.url)
        no_reason = procs.cli("run", "terminate", run_id, *url)
        assert no_reason.returncode != 0 and "--reason" in no_reason.stderr
        cli_json(procs, "run", "terminate", run_id, "--reason", "provider gone", *url)
        await wait_status(client, run_id, "terminated")
        state = await client.get_run(run_id)
        procs.open_gate("w")
        again = procs.cli("run", "terminate", run_id, "--reason", "again", *url)
        assert again.returncode != 0 and "terminated" in again.stderr
    assert state.error is not None and "provider gone" in state.error.message
    assert procs.calls_of(run_id, "unbook") == [], "no compensation ran"
