"""The lifecycle endpoints of the HTTP API (dagnats/api/routes_lifecycle.py) against a real
`dagnats serve` and worker: dead letters listed, shown, retried into a completed run; retry,
rerun and terminate of runs, with their refusals as problems; the live workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import Recorder, Stack, assert_problem, start_stack
from tests.nats_fixtures import wait_for_sync

RECORDER = Recorder()
FLAKY: dict[str, Any] = {
    "name": "flaky_http",
    "steps": [
        {"id": "fetch", "task": "fault.work"},
        {"id": "charge", "task": "fault.work", "depends_on": ["fetch"],
         "metadata": {"fail_attempts": "1"}},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("lifecycle_http")
    for running in start_stack(tmp, RECORDER):
        running.wait_healthy()
        response = running.http.post("/v1/workflows", json=FLAKY)
        assert response.status_code == 201, response.text
        yield running


def start_and_end(stack: Stack) -> dict[str, Any]:
    response = stack.http.post("/v1/runs", json={"workflow": "flaky_http", "input": {"n": 1}})
    assert response.status_code in (200, 201), response.text
    return wait_end(stack, response.json()["run_id"])


def wait_end(stack: Stack, run_id: str) -> dict[str, Any]:
    response = stack.http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": 30})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["ended"] is True, body
    return body


def test_a_dead_letter_is_listed_shown_and_retried_into_a_completed_run(stack: Stack) -> None:
    http = stack.http
    run_id = start_and_end(stack)["run"]["run_id"]
    letters = http.get("/v1/dead-letters", params={"workflow": "flaky_http"}).json()
    mine = [d for d in letters["dead_letters"] if d["run_id"] == run_id]
    assert [(d["step_id"], d["attempts"]) for d in mine] == [("charge", 1)], letters
    shown = http.get(f"/v1/dead-letters/{run_id}/charge").json()
    assert "asked to fail attempt 1" in shown["error"]["message"], shown
    assert_problem(http.get(f"/v1/dead-letters/{run_id}/fetch"), 404, detail_has="no dead letter")

    retried = http.post(f"/v1/dead-letters/{run_id}/charge/retry", json={"reason": "fixed"})
    assert retried.status_code == 200, retried.text
    assert wait_end(stack, run_id)["run"]["status"] == "completed"
    after = http.get("/v1/dead-letters").json()["dead_letters"]
    assert not [d for d in after if d["run_id"] == run_id]
    assert_problem(http.post(f"/v1/runs/{run_id}/retry", json={}), 409, detail_has=run_id)


def test_rerun_discard_and_terminate(stack: Stack) -> None:
    http = stack.http
    run_id = start_and_end(stack)["run"]["run_id"]
    rerun = http.post(f"/v1/runs/{run_id}/rerun")
    assert rerun.status_code == 201, rerun.text
    new_id = rerun.json()["run_id"]
    assert new_id != run_id and rerun.json()["rerun_of"] == run_id
    wait_end(stack, new_id)

    discarded = http.post(f"/v1/dead-letters/{run_id}/charge/discard", json={"reason": "moot"})
    assert discarded.status_code == 200, discarded.text
    assert_problem(http.post(f"/v1/dead-letters/{run_id}/charge/discard", json={}), 404)

    assert_problem(http.post(f"/v1/runs/{run_id}/terminate", json={"reason": " "}), 400,
                   field="reason")  # fmt: skip
    assert_problem(http.post(f"/v1/runs/{run_id}/terminate", json={"reason": "x"}), 409)
    assert_problem(http.post("/v1/runs/no-such-run/retry", json={}), 404)


def test_the_live_workers_are_listed(stack: Stack) -> None:
    listed: list[Any] = []

    def listed_one() -> bool:  # the worker writes its entry when it starts serving
        listed[:] = stack.http.get("/v1/workers").json()["workers"]
        return bool(listed)

    wait_for_sync(listed_one, timeout_ms=10_000, what="the worker in /v1/workers")
    workers = listed
    assert len(workers) == 1 and "fault.work" in workers[0]["task_types"], workers
    assert workers[0]["groups"] == [] and workers[0]["concurrency"] == 32
