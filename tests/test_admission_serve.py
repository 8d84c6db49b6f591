"""Admission through real `dagnats serve` processes (tests/fault_support.py): a run scheduled
with `dagnats run start --in` starts on time after serve is killed and started again between
the scheduling and the time; `run list --status scheduled` lists it from the query tables and
`run cancel` ends a scheduled one; the HTTP API takes `run_at` and refuses an input that breaks
the input_schema with a 422 naming path, value and rule, and creates no run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Final

import httpx

from dagnats.runtime.clock import now_ms
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import unique, wait_for
from tests.test_result_crashes import kill_serve

ONE_STEP: Final = [{"id": "only", "task": "fault.work"}]
WAIT_MS: Final = 30_000
BURST: Final = 12
DELAY_MS: Final = 6_000  # about the time to start two runs, kill and start serve again



def listed(procs: Processes, status: str) -> list[str]:
    found = procs.cli("run", "list", "--status", status, "--json")
    assert found.returncode == 0, found.stderr
    return [run["run_id"] for run in json.loads(found.stdout)]


async def test_a_scheduled_run_starts_on_time_after_a_restart(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None)
    procs.cli_worker(serve.url)
    name = unique("later")
    async with connected(serve.url) as client:
        await client.register_workflow(workflow(name, ONE_STEP))
    asked_ms = now_ms()
    started = procs.cli("run", "start", name, "--in", f"{DELAY_MS}ms", "--run-id", "due-run")
    assert started.returncode == 0, started.stderr
    assert "scheduled for" in started.stdout
    dropped = procs.cli("run", "start", name, "--in", "2h", "--run-id", "drop")
    assert dropped.returncode == 0, dropped.stderr
    await kill_serve(serve)
    serve = await procs.serve(data_dir, http=None)
    # (on a slow machine serve may come back after the due time: the run then starts at once,
    # which is what a durable timer owes it; never before its time, asserted below)
    await wait_for(
        lambda: "drop" in listed(procs, "scheduled"), timeout_ms=WAIT_MS,
        what="the later run listed as scheduled",
    )  # fmt: skip
    cancelled = procs.cli("run", "cancel", "drop", "--reason", "not needed")
    assert cancelled.returncode == 0, cancelled.stderr
    async with connected(serve.url) as client:
        final = await client.wait("due-run", timeout_s=WAIT_MS / 1000)
        dropped_state = await client.get_run("drop")
    assert final.status == "completed", final.error
    assert final.started_at_ms >= asked_ms + DELAY_MS  # not before its time
    assert [c["run"] for c in procs.calls()] == ["due-run"]
    assert dropped_state.status == "cancelled"
    refused = procs.cli("run", "start", name, "--at", "soon")
    assert refused.returncode == 2 and "--at 'soon'" in refused.stderr


async def test_the_http_api_takes_run_at_and_refuses_a_schema_breaking_input_with_a_422(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    name = unique("checked")
    async with connected(serve.url) as client:
        await client.register_workflow(workflow(name, ONE_STEP, input_schema=schema))
    with httpx.Client(base_url=serve.http_url, timeout=10) as http:
        body = {"workflow": name, "input": {"n": "seven"}, "run_id": "refused"}
        refused = http.post("/v1/runs", json=body)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert problem["field"] == "input.n"
        assert problem["errors"][0]["field"] == "input.n"
        assert '"seven"' in problem["errors"][0]["detail"]
        assert "(type)" in problem["errors"][0]["detail"]
        assert http.get("/v1/runs/refused").status_code == 404
        later = {"workflow": name, "input": {"n": 7}, "run_id": "later", "run_at": "1h"}
        assert http.post("/v1/runs", json=later).status_code == 201
        assert http.get("/v1/runs/later").json()["status"] == "scheduled"
        bad = http.post("/v1/runs", json={**later, "run_id": "x", "run_at": "whenever"})
        assert bad.status_code == 400 and bad.json()["field"] == "run_at", bad.text


async def test_two_engines_on_one_nats_never_admit_over_max_runs_under_a_burst(
    procs: Processes, tmp_path: Path
) -> None:
    first = await procs.serve(tmp_path / "data", http=None)
    await procs.serve(tmp_path / "other", nats_url=first.url, http=None)
    procs.cli_worker(first.url)
    name = unique("burst")
    held = [{"id": "only", "task": "fault.work", "metadata": {"gate": "burst"}}]
    runs = [f"burst-{index}" for index in range(BURST)]
    async with connected(first.url) as client:
        await client.register_workflow(workflow(name, held, concurrency={"max_runs": 2}))
        await asyncio.gather(*(client.start(name, {"i": run}, run_id=run) for run in runs))

        async def all_decided() -> bool:
            states = [(await client.get_run(run)).status for run in runs]
            return sorted(states).count("pending") == BURST - 2 and states.count("running") == 2

        await wait_for(all_decided, timeout_ms=WAIT_MS, what="2 runs running, the rest pending")
        await wait_for(lambda: len(procs.calls()) == 2, timeout_ms=WAIT_MS, what="2 calls")
        assert len(procs.calls()) == 2
        procs.open_gate("burst")
        finals = [await client.wait(run, timeout_s=WAIT_MS / 1000) for run in runs]
    assert {final.status for final in finals} == {"completed"}
    assert sorted(call["run"] for call in procs.calls()) == sorted(runs)  # each once
