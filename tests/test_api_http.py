"""The HTTP API against a real `dagnats serve` (real nats-server) and a real worker process.

One serve and one worker per module (started once: a serve costs seconds); every test uses
its own workflow runs. Every REST route is exercised here, bad requests get their status and
a problem body, and the last test checks the OpenAPI document validates and that every route
in it was sent by this module (so it runs with the module, not alone).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from dagnats.api import limits as api_limits
from dagnats.api.routes_runs import idempotent_run_id
from dagnats.runtime.resources import HISTORY_STREAM, stream_configs
from tests.api_support import (
    APPROVAL,
    ONE_STEP,
    SIGNAL,
    Recorder,
    Stack,
    assert_problem,
    start_stack,
)
from tests.nats_fixtures import wait_for_sync

RECORDER = Recorder()
wait_ms = 30_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("api")
    for running in start_stack(tmp, RECORDER):
        running.wait_healthy()
        for workflow in (ONE_STEP, APPROVAL, SIGNAL):
            response = running.http.post("/v1/workflows", json=workflow)
            assert response.status_code == 201, response.text
        yield running


def start(stack: Stack, workflow: str, value: Any = None, **headers: str) -> str:
    response = stack.http.post(
        "/v1/runs", json={"workflow": workflow, "input": value}, headers=headers
    )
    assert response.status_code in (200, 201), response.text
    run_id: str = response.json()["run_id"]
    return run_id


def wait_end(stack: Stack, run_id: str) -> dict[str, Any]:
    response = stack.http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": 30})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["ended"] is True, body
    return body


def run_started_count(stack: Stack, run_id: str) -> int:
    items = stack.http.get(f"/v1/runs/{run_id}/history").json()["items"]
    return sum(1 for item in items for event in item["events"] if event["type"] == "run.started")


def test_workflows_register_list_show_validate(stack: Stack) -> None:
    http = stack.http
    again = http.post("/v1/workflows", json=ONE_STEP)
    assert again.status_code == 201 and again.json()["revision"] == 2, again.text
    assert "unchanged from revision 1" in again.json()["warnings"][0]
    names = http.get("/v1/workflows").json()["workflows"]
    assert {"api-one", "api-approval", "api-signal"} <= set(names)
    shown = http.get("/v1/workflows/api-one").json()
    assert shown["revision"] == 2 and shown["revisions"] == [1, 2], shown
    assert shown["workflow"]["steps"][0]["id"] == "a"
    first = http.get("/v1/workflows/api-one", params={"revision": 1}).json()
    assert first["revision"] == 1
    valid = http.post("/v1/workflows/validate", json=ONE_STEP).json()
    assert valid == {"valid": True, "name": "api-one", "steps": 1, "problems": []}
    bad = {"name": "bad", "steps": [{"id": "a", "task": "t", "depends_on": ["x", "y"]}]}
    invalid = http.post("/v1/workflows/validate", json=bad).json()
    assert invalid["valid"] is False and len(invalid["problems"]) >= 2, invalid
    assert all(p["path"].startswith("steps[0]") for p in invalid["problems"]), invalid
    assert "bad" not in http.get("/v1/workflows").json()["workflows"]  # nothing stored


def test_start_wait_show_history_list_query_audit(stack: Stack) -> None:
    http = stack.http
    run_id = start(stack, "api-one", {"n": 1})
    final = wait_end(stack, run_id)["run"]
    assert final["status"] == "completed" and final["input"] == {"n": 1}, final
    assert final["steps"][0]["output"]["step"] == "a"
    shown = http.get(f"/v1/runs/{run_id}").json()
    assert shown["status"] == "completed" and shown["workflow"] == "api-one"
    page = http.get(f"/v1/runs/{run_id}/history", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_after"] == page["items"][0]["seq"], page
    rest = http.get(
        f"/v1/runs/{run_id}/history", params={"after": page["next_after"], "limit": 1000}
    ).json()
    assert rest["next_after"] is None and rest["items"][0]["seq"] > page["next_after"]
    whole = http.get(f"/v1/runs/{run_id}/history").json()["items"]
    assert [i["seq"] for i in whole] == [page["items"][0]["seq"]] + [
        i["seq"] for i in rest["items"]
    ]
    wait_for_sync(
        lambda: any(
            r["run_id"] == run_id
            for r in http.get(
                "/v1/runs", params={"status": "completed", "workflow": "api-one", "since": "1h"}
            ).json()["runs"]
        ),
        timeout_ms=wait_ms, what="the run in GET /v1/runs?status=completed",
    )  # fmt: skip
    none = http.get("/v1/runs", params={"status": "failed", "workflow": "api-one"}).json()
    assert run_id not in [r["run_id"] for r in none["runs"]]
    rows = http.post("/v1/query", json={"sql": "SELECT run_id, status FROM runs WHERE run_id = ?1"})
    assert rows.status_code == 400  # a parameter without a value: SQLite's own message
    query = http.post(
        "/v1/query", json={"sql": f"SELECT run_id, status FROM runs WHERE run_id = '{run_id}'"}
    ).json()
    assert query == {"columns": ["run_id", "status"], "rows": [
        {"run_id": run_id, "status": "completed"}]}  # fmt: skip
    audit = http.get(f"/v1/runs/{run_id}/audit").json()
    assert audit["consistent"] is True and audit["divergence"] is None, audit


def test_idempotency_key_returns_the_first_run_also_under_ten_concurrent_requests(
    stack: Stack,
) -> None:
    key = uuid.uuid4().hex
    first = stack.http.post(
        "/v1/runs", json={"workflow": "api-one", "input": 1}, headers={"Idempotency-Key": key}
    )
    assert first.status_code == 201 and first.json()["created"] is True, first.text
    again = stack.http.post(
        "/v1/runs", json={"workflow": "api-one", "input": 2}, headers={"Idempotency-Key": key}
    )
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "created": False}
    other = stack.http.post(  # the same key for another workflow is another run
        "/v1/runs", json={"workflow": "api-signal"}, headers={"Idempotency-Key": key}
    )
    assert other.json()["run_id"] != first.json()["run_id"]

    race_key = uuid.uuid4().hex

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.base, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/runs", json={"workflow": "api-one", "input": 7},
                            headers={"Idempotency-Key": race_key})
                for _ in range(10)
            ))  # fmt: skip

    responses = asyncio.run(race())
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    run_ids = {r.json()["run_id"] for r in responses}
    assert len(run_ids) == 1, run_ids
    (run_id,) = run_ids
    assert wait_end(stack, run_id)["run"]["status"] == "completed"
    assert run_started_count(stack, run_id) == 1
    explicit = f"api-{uuid.uuid4().hex[:8]}"
    assert start(stack, "api-one", 1, **{}) != explicit
    made = stack.http.post("/v1/runs", json={"workflow": "api-one", "run_id": explicit})
    assert made.status_code == 201
    same = stack.http.post("/v1/runs", json={"workflow": "api-one", "run_id": explicit})
    assert same.status_code == 200 and same.json()["created"] is False
    clash = stack.http.post(
        "/v1/runs", json={"workflow": "api-one", "run_id": explicit, "input": "other"}
    )
    assert_problem(clash, 409, detail_has="already exists")


def test_an_idempotency_key_lasts_while_the_history_does_which_is_kept_past_24_hours() -> None:
    """The run id is derived from (workflow, key) and found in history, which has no maximum
    age: the promised 24 h (`idempotency_ttl_s`) hold for as long as the history is kept (a
    restart included: tests/test_api_crash.py sends every start again after a SIGKILL)."""
    [history] = [config for config in stream_configs() if config.name == HISTORY_STREAM]
    assert not history.max_age or history.max_age >= api_limits.idempotency_ttl_s, history
    assert api_limits.idempotency_ttl_s >= 24 * 3_600
    first = idempotent_run_id("orders", "key-1")
    assert first == idempotent_run_id("orders", "key-1") != idempotent_run_id("orders", "key-2")
    assert first != idempotent_run_id("refunds", "key-1")


def pending_of(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    approvals: list[dict[str, Any]] = stack.http.get("/v1/approvals").json()["approvals"]
    return [a for a in approvals if a["run_id"] == run_id]


def test_approvals_list_show_approve_reject(stack: Stack) -> None:
    http = stack.http
    approved_run = start(stack, "api-approval")
    rejected_run = start(stack, "api-approval")
    for run_id in (approved_run, rejected_run):

        def asked(run: str = run_id) -> bool:
            return bool(pending_of(stack, run))

        wait_for_sync(asked, timeout_ms=wait_ms, what="the approval in GET /v1/approvals")
    shown = http.get(f"/v1/approvals/{approved_run}/gate").json()
    assert shown["status"] == "pending" and shown["question"] == "Ship it?", shown
    nobody = http.post(f"/v1/approvals/{approved_run}/gate/approve", json={"by": "mallory"})
    assert_problem(nobody, 403, field="by")
    decided = http.post(
        f"/v1/approvals/{approved_run}/gate/approve", json={"comment": "ok", "data": {"go": 1}}
    )
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["status"] == "approved" and body["comment"] == "ok" and body["by"], body
    twice = http.post(f"/v1/approvals/{approved_run}/gate/reject", json={})
    assert_problem(twice, 409, detail_has=body["by"])
    assert wait_end(stack, approved_run)["run"]["status"] == "completed"
    rejected = http.post(f"/v1/approvals/{rejected_run}/gate/reject", json={"comment": "no"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert wait_end(stack, rejected_run)["run"]["status"] == "failed"
    assert http.get(f"/v1/approvals/{rejected_run}/gate").json()["by"] == body["by"]


def sse_events(response: httpx.Response, count: int) -> list[dict[str, str]]:
    """The first `count` events of an SSE stream (each as its fields)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
            if len(events) == count:
                break
            continue
        name, _, value = line.partition(":")
        current[name] = value.strip()
    return events


def test_signal_cancel_sse_events_and_external_events(stack: Stack) -> None:
    http = stack.http
    run_id = start(stack, "api-signal")
    with http.stream("GET", f"/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = sse_events(response, 1)[0]
    assert first["event"] == "decision" and int(first["id"]) > 0, first
    assert json.loads(first["data"])["events"][0]["type"] == "run.started"
    sent = http.post(f"/v1/runs/{run_id}/signals", json={"name": "go", "payload": {"x": 1}})
    assert sent.status_code == 202 and sent.json() == {
        "run_id": run_id,
        "signal": "go",
        "sent": True,
    }
    assert wait_end(stack, run_id)["run"]["status"] == "completed"
    with http.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": first["id"]}
    ) as response:
        resumed = sse_events(response, 100)
    assert resumed[-1]["event"] == "end" and resumed[-1]["data"] == "completed", resumed
    seqs = [int(e["id"]) for e in resumed if e["event"] == "decision"]
    assert seqs and min(seqs) > int(first["id"]) and seqs == sorted(seqs), seqs
    assert_problem(http.post(f"/v1/runs/{run_id}/signals", json={"name": "go"}), 409)
    assert_problem(http.post(f"/v1/runs/{run_id}/cancel", json={}), 409, detail_has="completed")
    victim = start(stack, "api-signal")
    cancelled = http.post(f"/v1/runs/{victim}/cancel", json={"reason": "test"})
    assert cancelled.status_code == 202, cancelled.text
    final = wait_end(stack, victim)["run"]
    assert final["status"] == "cancelled" and final["cancel_reason"] == "test", final
    published = http.post("/v1/events", json={"name": "api.test", "payload": {"a": 1}})
    assert published.status_code == 202 and published.json()["seq"] > 0, published.text


def test_wait_is_a_bounded_long_poll(stack: Stack) -> None:
    run_id = start(stack, "api-signal")
    response = stack.http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": 0.5})
    assert response.status_code == 200 and response.json()["ended"] is False, response.text
    assert response.json()["run"]["status"] == "running"
    assert_problem(
        stack.http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": 61}), 400,
        field="query.timeout_s",
    )  # fmt: skip
    stack.http.post(f"/v1/runs/{run_id}/cancel")


BIG = "x" * (api_limits.request_body_bytes_max + 1)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    # method, path, httpx keyword arguments, status, text in detail, field
    ("POST", "/v1/runs", {"content": b'{"workflow": "api-one",'}, 400, "at byte", "body"),
    ("POST", "/v1/runs", {"content": b'{"workflow": x}'}, 400, "not valid JSON", "body"),
    ("POST", "/v1/runs", {"content": b""}, 400, "", None),
    ("POST", "/v1/runs", {"json": {"workflow": 5}}, 400, "Expected `str`", "body.workflow"),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one", "inptu": 1}}, 400, "inptu", None),
    ("POST", "/v1/runs", {"json": [1, 2]}, 400, "Expected `object`", None),
    ("POST", "/v1/runs", {"json": {}}, 400, "workflow", None),
    ("POST", "/v1/runs", {"json": {"workflow": "nope"}}, 404, "'nope' is not registered", ""),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one", "run_id": "a.b"}}, 400, "run_id", ""),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one", "run_id": "x" * 200}}, 400, "", None),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one", "run_id": "r"},
                          "headers": {"Idempotency-Key": "k"}}, 400, "not both", "run_id"),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one"},
                          "headers": {"Idempotency-Key": "a b"}}, 400, "Idempotency-Key", None),
    ("POST", "/v1/runs", {"content": BIG.encode()}, 413, "request_body_bytes_max", "body"),
    ("POST", "/v1/runs", {"json": {"workflow": "api-one", "input": "y" * 1_048_600}},
     413, "input", ""),
    ("POST", "/v1/runs", {"content": b'{"workflow": "api-one", "input": NaN}'}, 400, "", "body"),
    ("GET", "/v1/runs/no-such-run", {}, 404, "does not exist", ""),
    ("GET", "/v1/runs/no-such-run/history", {}, 404, "does not exist", ""),
    ("GET", "/v1/runs/no-such-run/wait", {"params": {"timeout_s": 1}}, 404, "does not exist", ""),
    ("GET", "/v1/runs/no-such-run/events", {}, 404, "does not exist", ""),
    ("GET", "/v1/runs/no-such-run/audit", {}, 404, "does not exist", ""),
    ("POST", "/v1/runs/no-such-run/cancel", {"json": {}}, 404, "does not exist", ""),
    ("POST", "/v1/runs/no-such-run/signals", {"json": {"name": "go"}}, 404, "", ""),
    ("POST", "/v1/runs/x/signals", {"json": {"payload": 1}}, 400, "name", None),
    ("GET", "/v1/runs", {"params": {"limit": "many"}}, 400, "Expected `int`", "query.limit"),
    ("GET", "/v1/runs", {"params": {"limit": 0}}, 400, "", "query.limit"),
    ("GET", "/v1/runs", {"params": {"status": "happy"}}, 400, "not a run status", "query.status"),
    ("GET", "/v1/runs", {"params": {"since": "yesterday"}}, 400, "since", "query.since"),
    ("GET", "/v1/runs/x/history", {"params": {"after": -1}}, 400, "", "query.after"),
    ("GET", "/v1/workflows/nope", {}, 404, "not registered", ""),
    ("GET", "/v1/workflows/api-one", {"params": {"revision": 99}}, 404, "no revision 99", ""),
    ("POST", "/v1/workflows", {"json": {"name": "w", "steps": []}}, 422, "", None),
    ("POST", "/v1/workflows", {"content": b'{"name": "w", "name": "v", "steps": []}'},
     422, "", None),
    ("GET", "/v1/approvals/no-such-run/gate", {}, 404, "does not exist", ""),
    ("POST", "/v1/approvals/no-such-run/gate/approve", {"json": {}}, 404, "", ""),
    ("POST", "/v1/approvals/x/gate/approve", {"json": {"data": 1, "extra": 2}}, 400, "extra",
     None),
    ("POST", "/v1/events", {"json": {"name": "bad name!"}}, 400, "", ""),
    ("POST", "/v1/events", {"json": {"name": "e", "payload": "z" * 70_000}}, 413, "", ""),
    ("POST", "/v1/query", {"json": {"sql": "DELETE FROM runs"}}, 400, "readonly", "sql"),
    ("POST", "/v1/query", {"json": {"sql": "ATTACH 'x.db' AS x"}}, 400, "not authorized", "sql"),
    ("POST", "/v1/query", {"json": {"sql": "SELEKT 1"}}, 400, "syntax error", "sql"),
    ("POST", "/v1/query", {"json": {"sql": "SELECT 1", "limit": 0}}, 400, "limit", "limit"),
    ("PUT", "/v1/runs", {}, 405, "PUT is not allowed", None),
    ("DELETE", "/v1/workflows/api-one", {}, 405, "", None),
    ("GET", "/v1/nothing-here", {}, 404, "no route", None),
    ("GET", "/v1/runs/x/events", {"headers": {"Last-Event-ID": "abc"}}, 400, "Last-Event-ID",
     "header.Last-Event-ID"),
]  # fmt: skip


def test_bad_requests_get_their_status_and_a_problem_and_nothing_is_lost(stack: Stack) -> None:
    assert len(BAD_REQUESTS) >= 30
    kept = start(stack, "api-one", {"kept": True})
    wait_end(stack, kept)
    before = stack.http.get(f"/v1/runs/{kept}/history").json()["items"]
    for method, path, arguments, status, detail, field in BAD_REQUESTS:
        headers = {"content-type": "application/json", **arguments.pop("headers", {})}
        response = stack.http.request(method, path, headers=headers, **arguments)
        try:
            assert_problem(response, status, detail_has=detail, field=field or None)
        except AssertionError as error:
            raise AssertionError(f"{method} {path} {arguments!s:.80}: {error}") from None
    after = stack.http.get(f"/v1/runs/{kept}/history").json()["items"]
    assert after == before  # nothing stored was lost or changed
    fresh = start(stack, "api-one", {"after": "bad requests"})
    assert wait_end(stack, fresh)["run"]["status"] == "completed"  # the engine still serves


def test_health_ready_docs(stack: Stack) -> None:
    health = stack.http.get("/health")
    assert health.json() == {"status": "ok", "nats": True, "jetstream": True, "engine": True}
    assert stack.http.get("/ready").json() == {"ready": True}
    page = stack.http.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert (
        "http"
        not in re.sub(r"https?://(127\.0\.0\.1|localhost)", "", page.text).split("<script")[1]
    )  # no script from elsewhere
    script = stack.http.get("/docs/docs.js")
    assert script.status_code == 200 and 'fetch("/openapi.json"' in script.text
    for text in (page.text, script.text):  # offline: nothing is loaded from another host
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), text[:200]
        assert not re.search(r"\b(import|fetch)\s*\(?\s*[\"'`]https?:", text), text[:200]
    assert re.search(r"<script src=\"/docs/docs.js\">", page.text)


def poll_one(stack: Stack, task_type: str) -> dict[str, Any]:
    """One task of `task_type`, through serve's own bridge (a bounded long poll)."""
    body = {"task_types": [task_type], "timeout_ms": 5_000, "worker_id": "curl-like"}
    for _ in range(6):  # each poll is bounded; the run's task may take a moment to appear
        response = stack.http.post("/v1/tasks/poll", json=body)
        assert response.status_code == 200, response.text
        tasks: list[dict[str, Any]] = response.json()["tasks"]
        if tasks:
            return tasks[0]
    raise AssertionError(f"no {task_type} task within the polls")


def test_the_worker_bridge_is_served_by_serve_and_its_results_count(stack: Stack) -> None:
    """The bridge mounted in `dagnats serve`: poll, heartbeat, a retryable failure, then a
    completion, over HTTP; the engine takes its results (they carry the task's token)."""
    retry = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "10ms"}
    flow = {"name": "api-bridged", "version": "1",
            "steps": [{"id": "b", "task": "api.bridged", "retry": retry}]}  # fmt: skip
    assert stack.http.post("/v1/workflows", json=flow).status_code == 201
    run_id = start(stack, "api-bridged", {"n": 7})
    first = poll_one(stack, "api.bridged")
    assert (first["run_id"], first["attempt"], first["input"]) == (run_id, 1, {"n": 7}), first
    beat = stack.http.post(f"/v1/tasks/{first['id']}/heartbeat", json={})
    assert beat.status_code == 200, beat.text
    failed = stack.http.post(f"/v1/tasks/{first['id']}/fail", json={"error": "busy"})
    assert failed.status_code == 200, failed.text
    second = poll_one(stack, "api.bridged")
    assert second["attempt"] == 2, second
    done = stack.http.post(f"/v1/tasks/{second['id']}/complete", json={"output": {"ok": 1}})
    assert done.status_code == 200, done.text
    again = stack.http.post(f"/v1/tasks/{second['id']}/complete", json={"output": {"ok": 2}})
    assert again.status_code in (404, 409), again.text
    replay = {"results": [{"id": second["id"], "output": {"ok": 3}}]}
    batch = stack.http.post("/v1/tasks/results", json=replay)
    assert batch.status_code == 200, batch.text
    [item] = batch.json()["results"]
    assert item["status"] == "refused" and item["problem"]["status"] in (404, 409), item
    body = wait_end(stack, run_id)
    assert body["run"]["status"] == "completed", body


def test_metrics_are_served_by_the_api_and_count_the_runs_made(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    run_id = start(stack, "api-one", {"metrics": True})
    assert wait_end(stack, run_id)["run"]["status"] == "completed"
    response = stack.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    started = {
        sample.labels.get("workflow"): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "dagnats_runs_started_total"
    }
    assert started.get("api-one", 0) >= 1, started


def test_the_lifecycle_routes_answer(stack: Stack) -> None:
    """Each lifecycle route once, as refusals (tests/test_lifecycle_http.py drives them)."""
    http = stack.http
    assert http.get("/v1/workers").status_code == 200
    assert http.get("/v1/dead-letters").status_code == 200
    assert_problem(http.get("/v1/dead-letters/gone/a"), 404)
    for path in ("/v1/dead-letters/gone/a/retry", "/v1/dead-letters/gone/a/discard",
                 "/v1/runs/gone/retry", "/v1/runs/gone/rerun"):  # fmt: skip
        assert_problem(http.post(path), 404)
    assert_problem(http.post("/v1/runs/gone/terminate", json={"reason": ""}), 400)


def test_live_text_of_an_ended_run_ends_at_once(stack: Stack) -> None:
    run_id = start(stack, "api-one", {"live": True})
    assert wait_end(stack, run_id)["run"]["status"] == "completed"
    with stack.http.stream("GET", f"/v1/runs/{run_id}/live") as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert "event: end" in text and "completed" in text, text
    unknown = stack.http.get("/v1/runs/no-such-run/live")
    assert_problem(unknown, 404)


def test_the_trigger_routes_answer(stack: Stack) -> None:
    """Each `/v1/triggers` route once (tests/test_trigger*.py drive them further)."""
    http, base = stack.http, "/v1/triggers/api-one/api-hook"
    hook = {"id": "api-hook", "webhook": {"path": "/api-hook", "secret": "a-secret-of-16-chars+"}}
    created = http.post("/v1/triggers", json={"workflow": "api-one", "trigger": hook})
    assert created.status_code == 201, created.text
    assert any(t["id"] == "api-hook" for t in http.get("/v1/triggers").json())
    shown = http.get(base).json()
    assert shown["trigger"]["webhook"]["secret"] == "(set)", shown
    moved = {"webhook": {"path": "/api-hook-2"}}
    assert http.put(base, json=moved).status_code == 200
    assert http.post(f"{base}/disable").json() == {"enabled": False}
    assert http.post(f"{base}/enable").json() == {"enabled": True}
    fired = http.post(f"{base}/fire")
    assert fired.status_code == 200 and fired.json()["outcome"] == "started", fired.text
    assert http.get(f"{base}/history").status_code == 200
    assert http.delete(base).status_code == 204
    assert_problem(http.get(base), 404)


def test_openapi_validates_and_every_route_in_it_was_exercised(stack: Stack) -> None:
    """Runs last in this module: the routes sent by the tests above are recorded."""
    response = stack.http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    routes = [
        (method.upper(), path)
        for path, methods in document["paths"].items()
        for method in methods
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(routes) >= 20, routes
    missing = []
    for method, path in routes:
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        if not any(m == method and pattern.match(p) for m, p in RECORDER.sent):
            missing.append(f"{method} {path}")
    assert not missing, f"routes never exercised: {missing}"
