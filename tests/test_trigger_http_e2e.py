"""Webhook and http triggers end to end: a real `dagnats serve` (its HTTP API on a free
loopback port) and a real worker process (tests.fault_workers), driven with httpx.

HMAC accept and reject, the body bound (413), 405 and 404, the answer of the run's first
respond step, the failure matrix (500 failed, 503 cancelled, 504 timeout with the run going
on, the client gone with the run going on), idempotency (a replay and ten at once: one run),
and 200 concurrent requests with distinct bodies each getting its own answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from dagnats.api.triggers_routes import signature_of
from dagnats.runtime.triggers import read_fires
from tests.api_support import Recorder, Stack, assert_problem, start_stack
from tests.fault_support import connected
from tests.nats_fixtures import wait_for_sync

RECORDER = Recorder()
SECRET: Final = "a-webhook-secret-of-some-length"
WAIT_MS: Final = 30_000


def http_trigger(path: str, **fields: object) -> dict[str, object]:
    return {"id": "api", "http": {"path": path, **fields}}


def respond(step_id: str = "answer", **config: object) -> dict[str, object]:
    return {"id": step_id, "type": "respond", "config": config}


WORKFLOWS: Final[list[dict[str, Any]]] = [
    {"name": "trg-echo", "steps": [respond(status=201, body_from="body")],
     "triggers": [http_trigger("/echo", timeout="20s")]},
    {"name": "trg-hook", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "1ms"}}],
     "triggers": [{"id": "gh", "webhook": {"path": "/gh", "secret": SECRET}}]},
    {"name": "trg-small", "steps": [respond()],
     "triggers": [http_trigger("/small", max_body_bytes=100, method="PUT")]},
    {"name": "trg-fail",
     "steps": [{"id": "work", "task": "fault.work", "metadata": {"fail": "non_retryable"}},
               {**respond(), "depends_on": ["work"]}],
     "triggers": [http_trigger("/fail")]},
    {"name": "trg-wait",
     "steps": [{"id": "hold", "type": "wait_signal", "config": {"signal": "go"}},
               {**respond(), "depends_on": ["hold"]}],
     "triggers": [http_trigger("/wait", timeout="1s"), {"id": "long", "http": {
         "path": "/wait-long", "timeout": "30s"}}]},
    {"name": "trg-gated",
     "steps": [{"id": "work", "task": "fault.work", "metadata": {"gate": "gated"}},
               {**respond(), "depends_on": ["work"]},
               {"id": "after", "task": "fault.work", "depends_on": ["answer"]}],
     "triggers": [http_trigger("/gated")]},
    {"name": "trg-idem", "steps": [respond(body_from="body")],
     "triggers": [http_trigger("/idem", idempotency_header="Idempotency-Key")]},
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("triggers-http")
    for running in start_stack(tmp, RECORDER):
        running.wait_healthy()
        for workflow in WORKFLOWS:
            response = running.http.post("/v1/workflows", json=workflow)
            assert response.status_code == 201, response.text
        yield running


def run_state(stack: Stack, run_id: str) -> dict[str, Any]:
    response = stack.http.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(stack: Stack, run_id: str, status: str) -> None:
    def reached() -> bool:
        return bool(stack.http.get(f"/v1/runs/{run_id}").json().get("status") == status)

    wait_for_sync(reached, timeout_ms=WAIT_MS, what=f"run {run_id} to be {status}")


def test_an_http_trigger_answers_what_respond_recorded(stack: Stack) -> None:
    response = stack.http.post("/hooks/echo?x=1", json={"hello": "world"})
    assert response.status_code == 201, response.text
    assert response.json() == {"hello": "world"}
    run_id = response.headers["x-run-id"]
    wait_status(stack, run_id, "completed")
    history = stack.http.get(f"/v1/runs/{run_id}/history").json()["items"]
    started = json.dumps(history[0])
    assert '"x": "1"' in started or "'x': '1'" in started or '"x":"1"' in started, started
    assert "triggers" not in started  # no trigger (and no secret) in the run's history


def test_a_signed_webhook_is_accepted_and_a_bad_signature_refused(stack: Stack) -> None:
    body = b'{"ref": "main"}'
    good = stack.http.post(
        "/hooks/gh", content=body, headers={"X-Dagnats-Signature": signature_of(body, SECRET)}
    )
    assert good.status_code == 202, good.text
    run_id = good.json()["run_id"]
    wait_status(stack, run_id, "completed")
    bad = stack.http.post(
        "/hooks/gh", content=body, headers={"X-Dagnats-Signature": signature_of(b"x", SECRET)}
    )
    assert_problem(bad, 401, detail_has="wrong", field="header.X-Dagnats-Signature")
    missing = stack.http.post("/hooks/gh", content=body)
    assert_problem(missing, 401, detail_has="missing")


def test_the_body_bound_method_and_path_are_checked(stack: Stack) -> None:
    assert_problem(stack.http.put("/hooks/small", content=b"x" * 101), 413, detail_has="100")
    assert stack.http.put("/hooks/small", content=b"x" * 100).status_code == 200
    not_allowed = stack.http.get("/hooks/small")
    assert_problem(not_allowed, 405, detail_has="PUT")
    assert not_allowed.headers["allow"] == "PUT"
    assert_problem(stack.http.post("/hooks/no-such-path"), 404, detail_has="/no-such-path")


def test_a_run_that_fails_first_answers_500_with_its_id(stack: Stack) -> None:
    response = stack.http.post("/hooks/fail", json={})
    body = assert_problem(response, 500, field="run_id")
    assert body["type"].endswith("workflow_failed"), body
    assert response.headers["x-run-id"] in body["detail"]


def test_no_respond_within_the_timeout_is_504_and_the_run_goes_on(stack: Stack) -> None:
    response = stack.http.post("/hooks/wait", json={})
    body = assert_problem(response, 504, field="run_id")
    run_id = response.headers["x-run-id"]
    assert run_id in body["detail"]
    assert run_state(stack, run_id)["status"] == "running"
    sent = stack.http.post(f"/v1/runs/{run_id}/signals", json={"name": "go", "payload": None})
    assert sent.status_code in (200, 202), sent.text
    wait_status(stack, run_id, "completed")


def _first_run_of(stack: Stack, workflow: str, known: set[str]) -> str:
    found: list[str] = []

    def listed() -> bool:
        runs = stack.http.get("/v1/runs", params={"workflow": workflow}).json()["runs"]
        found[:] = [run["run_id"] for run in runs if run["run_id"] not in known]
        return bool(found)

    wait_for_sync(listed, timeout_ms=WAIT_MS, what=f"a new run of {workflow}")
    return found[0]


def test_a_cancelled_run_answers_503(stack: Stack) -> None:
    known = {r["run_id"] for r in stack.http.get("/v1/runs").json()["runs"]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stack.http.post, "/hooks/wait-long", json={})
        run_id = _first_run_of(stack, "trg-wait", known)
        cancelled = stack.http.post(f"/v1/runs/{run_id}/cancel", json={"reason": "test"})
        assert cancelled.status_code in (200, 202), cancelled.text
        response = pending.result(timeout=WAIT_MS / 1000)
    assert_problem(response, 503, detail_has=run_id)


def test_when_the_client_goes_the_run_goes_on(stack: Stack) -> None:
    known = {r["run_id"] for r in stack.http.get("/v1/runs").json()["runs"]}
    impatient = httpx.Client(base_url=stack.base, timeout=1.0)
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/hooks/gated", json={})
    run_id = _first_run_of(stack, "trg-gated", known)
    stack.processes.open_gate("gated")
    wait_status(stack, run_id, "completed")
    assert stack.http.get("/health").status_code == 200


def test_a_repeated_idempotency_key_replays_the_first_answer(stack: Stack) -> None:
    first = stack.http.post("/hooks/idem", json={"n": 1}, headers={"Idempotency-Key": "k-one"})
    again = stack.http.post("/hooks/idem", json={"n": 2}, headers={"Idempotency-Key": "k-one"})
    other = stack.http.post("/hooks/idem", json={"n": 3}, headers={"Idempotency-Key": "k-two"})
    assert first.json() == again.json() == {"n": 1}, (first.text, again.text)
    assert first.headers["x-run-id"] == again.headers["x-run-id"]
    assert other.json() == {"n": 3} and other.headers["x-run-id"] != first.headers["x-run-id"]


async def _post_all(
    base: str, requests: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(path, json=body, headers=headers) for path, body, headers in requests)
        )


def test_ten_at_once_with_one_key_are_one_run(stack: Stack) -> None:
    sent = [("/hooks/idem", {"n": i}, {"Idempotency-Key": "k-ten"}) for i in range(10)]
    responses = asyncio.run(_post_all(stack.base, sent))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.headers["x-run-id"] for r in responses}) == 1
    assert len({r.content for r in responses}) == 1


def test_200_concurrent_requests_each_get_their_own_answer(stack: Stack) -> None:
    sent: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/hooks/echo", {"request": i, "pad": "x" * (i % 7)}, {}) for i in range(200)
    ]
    responses = asyncio.run(_post_all(stack.base, sent))
    for (_, body, _), response in zip(sent, responses, strict=True):
        assert response.status_code == 201, response.text
        assert response.json() == body
    assert len({r.headers["x-run-id"] for r in responses}) == 200


def test_http_fires_are_recorded_and_read_by_a_client(stack: Stack) -> None:
    response = stack.http.put("/hooks/small", content=b"{}")
    assert response.status_code == 200, response.text
    run_id = response.headers["x-run-id"]

    async def records() -> list[tuple[str, str]]:
        async with connected(stack.serve.url) as client:  # role client: an ordered consumer
            found = await read_fires(client.connection.js, "trg-small", "api", 100)
            return [(record.run_id, record.outcome) for record in found]

    assert (run_id, "started") in asyncio.run(records())


def test_registration_warns_of_an_http_trigger_without_one_respond(stack: Stack) -> None:
    silent = {"name": "trg-silent", "steps": [{"id": "a", "task": "fault.work"}],
              "triggers": [http_trigger("/silent")]}  # fmt: skip
    response = stack.http.post("/v1/workflows", json=silent)
    assert response.status_code == 201, response.text
    assert any("no respond step" in w for w in response.json()["warnings"]), response.text
    twice = {"name": "trg-twice", "steps": [respond("one"), {**respond("two"), "depends_on":
             ["one"]}], "triggers": [http_trigger("/twice")]}  # fmt: skip
    response = stack.http.post("/v1/workflows", json=twice)
    assert any("on one path" in w for w in response.json()["warnings"]), response.text
    fine = stack.http.post("/v1/workflows", json=WORKFLOWS[0])
    assert fine.json()["warnings"] == [] or all("unchanged" in w for w in fine.json()["warnings"])


def test_an_unknown_time_zone_is_refused_at_registration_with_its_path(stack: Stack) -> None:
    nowhere = {"name": "trg-zone", "steps": [{"id": "a", "task": "fault.work"}],
               "triggers": [{"id": "c", "cron": {"expression": "* * * * *",
                                                 "timezone": "Mars/Olympus_Mons"}}]}  # fmt: skip
    response = stack.http.post("/v1/workflows", json=nowhere)
    body = assert_problem(response, 422)
    paths = [error["field"] for error in body.get("errors", [])] + [body.get("field", "")]
    assert "triggers[0].cron.timezone" in paths, body


def test_client_start_keeps_the_triggers_out_of_run_history(stack: Stack) -> None:
    async def started_workflow() -> bytes:
        async with connected(stack.serve.url) as client:
            run_id = await client.start("trg-hook", {"by": "client"})
            async for _, data in client.history_bytes(run_id):
                return data
        return b""

    first = asyncio.run(started_workflow())
    assert b"trg-hook" in first and b"triggers" not in first and SECRET.encode() not in first


def test_managed_triggers_over_http_are_validated_and_answer_at_once(stack: Stack) -> None:
    bad = stack.http.post("/v1/triggers", json={"workflow": "trg-echo", "trigger": {
        "id": "dup", "http": {"path": "/echo", "secret": "short"}}})  # fmt: skip
    body = assert_problem(bad, 422)
    fields = {error["field"] for error in body.get("errors", [])}
    assert {"trigger.http.secret", "trigger.http.path"} <= fields, body
    made = stack.http.post("/v1/triggers", json={"workflow": "trg-echo", "trigger": {
        "id": "echo2", "http": {"path": "/echo2", "method": "PUT", "secret": SECRET}}})  # fmt: skip
    assert made.status_code == 201, made.text
    again = stack.http.post("/v1/triggers", json={"workflow": "trg-echo", "trigger": {
        "id": "echo2", "http": {"path": "/echo3"}}})  # fmt: skip
    assert_problem(again, 409)
    shown = stack.http.get("/v1/triggers/trg-echo/echo2").json()
    assert shown["trigger"]["http"]["secret"] == "(set)" and SECRET not in json.dumps(shown)
    body_bytes = b'{"v": 1}'
    signed = {"X-Dagnats-Signature": signature_of(body_bytes, SECRET)}
    answered = stack.http.put("/hooks/echo2", content=body_bytes, headers=signed)
    assert answered.status_code == 201 and answered.json() == {"v": 1}, answered.text
    listed = stack.http.get("/v1/triggers").json()
    assert any(t["id"] == "echo2" and t["managed"] for t in listed), listed
    updated = stack.http.put("/v1/triggers/trg-echo/echo2", json={"http": {"path": "/echo4"}})
    assert updated.status_code == 200, updated.text
    fires = stack.http.get("/v1/triggers/trg-echo/echo2/history").json()
    assert [f["outcome"] for f in fires] == ["started"], fires
    assert stack.http.delete("/v1/triggers/trg-echo/echo2").status_code == 204
    assert_problem(stack.http.get("/v1/triggers/trg-echo/echo2"), 404)
    assert_problem(stack.http.delete("/v1/triggers/trg-echo/api"), 409, detail_has="definition")


def test_a_trigger_made_disabled_or_deleted_through_the_api_counts_at_the_next_request(
    stack: Stack,
) -> None:
    """The routes are cached (a miss reads them again at most every route_miss_reload_ms):
    a change made through this API forgets them, so a hook asked just before the change
    (a miss that read the routes) and just after it answers as the change says."""
    assert_problem(stack.http.put("/hooks/fresh", content=b"{}"), 404)  # routes just read
    made = stack.http.post("/v1/triggers", json={"workflow": "trg-echo", "trigger": {
        "id": "fresh", "http": {"path": "/fresh", "method": "PUT"}}})  # fmt: skip
    assert made.status_code == 201, made.text
    answered = stack.http.put("/hooks/fresh", content=b'{"v": 2}')
    assert answered.status_code == 201 and answered.json() == {"v": 2}, answered.text
    off = stack.http.post("/v1/triggers/trg-echo/fresh/disable")
    assert off.status_code == 200, off.text
    assert_problem(stack.http.put("/hooks/fresh", content=b"{}"), 404)
    assert stack.http.post("/v1/triggers/trg-echo/fresh/enable").status_code == 200
    assert stack.http.put("/hooks/fresh", content=b'{"v": 3}').status_code == 201
    assert stack.http.delete("/v1/triggers/trg-echo/fresh").status_code == 204
    assert_problem(stack.http.put("/hooks/fresh", content=b"{}"), 404)


def test_managed_triggers_with_the_cli(stack: Stack) -> None:
    url = stack.serve.url
    spec = '{"id": "cli", "webhook": {"path": "/from-cli"}}'
    made = stack.processes.cli("trigger", "create", "trg-hook", spec, "--nats-url", url)
    assert made.returncode == 0, made.stderr
    shown = stack.processes.cli("trigger", "show", "trg-hook", "cli", "--nats-url", url)
    assert json.loads(shown.stdout)["trigger"]["webhook"]["path"] == "/from-cli", shown.stdout
    wrong = '{"id": "cli", "webhook": {"path": "nope"}}'
    bad = stack.processes.cli("trigger", "update", "trg-hook", wrong, "--nats-url", url)
    assert bad.returncode == 1 and "trigger.webhook.path" in bad.stderr, bad.stderr
    gone = stack.processes.cli("trigger", "delete", "trg-hook", "cli", "--nats-url", url)
    assert gone.returncode == 0, gone.stderr
    missing = stack.processes.cli("trigger", "show", "trg-hook", "cli", "--nats-url", url)
    assert missing.returncode == 1 and "no trigger 'cli'" in missing.stderr, missing.stderr
