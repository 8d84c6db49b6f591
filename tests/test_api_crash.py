"""SIGKILL `dagnats serve` while HTTP requests are in flight: nothing is lost or doubled.

A real serve (tests/fault_support.Processes) with its HTTP API and bridge (heartbeat timeout
HEARTBEAT_S through $DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT), driven by an HTTP client in this test:
runs started with an `Idempotency-Key`, tasks polled over the bridge, some held (never
completed), one completed before the kill. Then, at once, more starts, a completion, a long
poll and a heartbeat are sent and serve is SIGKILLed (its nats-server child dies with it)
while they are in flight. After a restart on the same data dir the client sends every start
again with its key, and an HTTP worker completes what it is given until every run has ended.

What must hold, whatever the interleaving: every key names one run, the same before and after
the crash; every run completes once (one run.started, one step.completed); a completion
answered 200 before the kill is the one recorded; the tasks held at the kill come back to the
bridge (after the heartbeat timeout; the attempt the killed bridge held is recorded lost) and
complete; the killed bridge's task ids are unknown (404) to the new one; no other run of the
workflow exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest_asyncio

from kernel.events import RunCompleted, RunStarted, StepCompleted, StepLost
from tests.fault_support import Processes, connected, decisions_of, events_of
from tests.nats_fixtures import wait_for
from tests.test_result_crashes import data_dir_of, kill_serve

HEARTBEAT_S: Final = 1.5
RUNS: Final = 12
BEFORE: Final = 6  # runs started (answered) before the kill phase
HELD: Final = 2  # tasks polled before the kill and never completed
REQUEST_TIMEOUT_S: Final = 15.0
DRAIN_TIMEOUT_MS: Final = 40_000
TASK: Final = "crash.http"
FLOW: Final = {
    "name": "crash-http", "version": "1",
    "steps": [{"id": "s", "task": TASK,
               "retry": {"max_attempts": 3, "strategy": "fixed", "initial_delay": "10ms"}}],
}  # fmt: skip


@pytest_asyncio.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    processes.extra_env = {"DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S)}
    try:
        yield processes
    finally:
        await processes.close()


async def start(http: httpx.AsyncClient, key: str) -> str:
    answer = await http.post(
        "/v1/runs", json={"workflow": "crash-http", "input": {"key": key}},
        headers={"Idempotency-Key": key},
    )  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    run_id: str = answer.json()["run_id"]
    return run_id


async def poll(http: httpx.AsyncClient, max_tasks: int, timeout_ms: int) -> list[dict[str, Any]]:
    body = {"task_types": [TASK], "max_tasks": max_tasks, "timeout_ms": timeout_ms}
    answer = await http.post("/v1/tasks/poll", json=body)
    assert answer.status_code == 200, answer.text
    tasks: list[dict[str, Any]] = answer.json()["tasks"]
    return tasks


async def complete(http: httpx.AsyncClient, task: dict[str, Any]) -> int:
    output = {"run": task["run_id"], "attempt": task["attempt"]}
    answer = await http.post(f"/v1/tasks/{task['id']}/complete", json={"output": output})
    return answer.status_code


async def take(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """`count` tasks, polling until they came (bounded)."""
    taken: list[dict[str, Any]] = []

    async def enough() -> bool:
        taken.extend(await poll(http, count - len(taken), 1_000))
        return len(taken) >= count

    await wait_for(enough, timeout_ms=DRAIN_TIMEOUT_MS, what=f"{count} {TASK} tasks")
    return taken


async def test_serve_killed_with_http_requests_in_flight_loses_and_doubles_nothing(
    procs: Processes,
) -> None:
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    keys = [f"crash-{index}" for index in range(RUNS)]
    run_of: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=serve.http_url, timeout=REQUEST_TIMEOUT_S) as http:
        assert (await http.post("/v1/workflows", json=FLOW)).status_code == 201
        for key in keys[:BEFORE]:
            run_of[key] = await start(http, key)
        tasks = await take(http, HELD + 2)
        held, done_before, in_flight = tasks[:HELD], tasks[HELD], tasks[HELD + 1]
        assert await complete(http, done_before) == 200
        flying: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(start(http, key)) for key in keys[BEFORE:]
        ]
        flying.append(asyncio.ensure_future(complete(http, in_flight)))
        flying.append(asyncio.ensure_future(poll(http, 10, 20_000)))
        flying.append(asyncio.ensure_future(http.post(f"/v1/tasks/{held[0]['id']}/heartbeat")))
        await wait_for(lambda: any(job.done() for job in flying), timeout_ms=DRAIN_TIMEOUT_MS,
                       what="the first request in flight to be answered")  # fmt: skip
        await kill_serve(serve)
        outcomes = await asyncio.gather(*flying, return_exceptions=True)
    for key, outcome in zip(keys[BEFORE:], outcomes, strict=False):
        if isinstance(outcome, str):
            run_of[key] = outcome  # answered before the kill: it must be the run after
    completed_in_flight = outcomes[RUNS - BEFORE] == 200

    serve = await procs.serve(data_dir)
    async with httpx.AsyncClient(base_url=serve.http_url, timeout=REQUEST_TIMEOUT_S) as http:
        for key in keys:  # the client sends every start again: the same run for each key
            again = await start(http, key)
            assert run_of.setdefault(key, again) == again, (key, run_of[key], again)
        for old in (held[1], done_before):  # ids of the killed bridge: unknown, nothing sent
            assert await complete(http, old) == 404
        taken_after = await drain(http, set(run_of.values()))
        listed = await http.get("/v1/runs", params={"workflow": "crash-http", "limit": 100})
        assert listed.status_code == 200, listed.text
        listed_ids = {run["run_id"] for run in listed.json()["runs"]}
        assert listed_ids <= set(run_of.values()), listed_ids - set(run_of.values())

    held_runs = {task["run_id"] for task in held}
    assert held_runs <= taken_after, ("held tasks never came back", held_runs - taken_after)
    async with connected(serve.url) as client:
        for key, run_id in run_of.items():
            events = events_of(await decisions_of(client, run_id))
            started = [e for e in events if isinstance(e, RunStarted)]
            completed = [e for e in events if isinstance(e, StepCompleted)]
            assert len(started) == 1 and len(completed) == 1, (key, run_id, completed)
            assert any(isinstance(e, RunCompleted) for e in events), (key, run_id)
            if run_id in held_runs and completed[0].attempt > 1:  # came back: the first lost
                assert [e.attempt for e in events if isinstance(e, StepLost)] == [1], events
            if run_id == done_before["run_id"]:
                assert completed[0].attempt == done_before["attempt"], completed
            if run_id == in_flight["run_id"] and completed_in_flight:
                assert completed[0].attempt == in_flight["attempt"], completed


async def drain(http: httpx.AsyncClient, runs: set[str]) -> set[str]:
    """Complete every task given until every run in `runs` has ended; the runs whose tasks
    were taken."""
    taken: set[str] = set()
    ended: set[str] = set()

    async def all_ended() -> bool:
        for task in await poll(http, 10, 500):
            taken.add(task["run_id"])
            assert await complete(http, task) in (200, 202)
        for run_id in runs - ended:
            with contextlib.suppress(httpx.HTTPError):
                shown = await http.get(f"/v1/runs/{run_id}")
                if shown.status_code == 200 and shown.json()["status"] == "completed":
                    ended.add(run_id)
        return ended == runs

    await wait_for(all_ended, timeout_ms=DRAIN_TIMEOUT_MS, what="every run to complete")
    return taken
