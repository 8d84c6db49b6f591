"""Routes across workflows and the idempotency gap, against a real `dagnats serve`.

- A webhook or http route (method and path) another workflow serves is a registration
  problem naming that workflow (`POST /v1/workflows` 422, `Client.register_workflow`, and a
  managed trigger's create); the same workflow registered again keeps its routes.
- A crash between creating an idempotency key and publishing the start: the key is there, no
  run is. The run id comes from the key (its revision), and every request with the key
  publishes the start under that id again, so the repeat starts the run (once) and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from dagnats.api.triggers_routes import IDEMPOTENCY_BUCKET
from dagnats.runtime import settings
from dagnats.runtime.triggers_plan import digest, fire_run_id, trigger_key
from kernel.errors import WorkflowInvalidError
from tests.api_support import Recorder, Stack, assert_problem, start_stack
from tests.fault_support import connected

KEY: Final = "Idempotency-Key"


def hooked(name: str, trigger: dict[str, Any]) -> dict[str, Any]:
    steps = [{"id": "answer", "type": "respond", "config": {"status": 201, "body_from": "body"}}]
    return {"name": name, "steps": steps, "triggers": [trigger]}


SHARED: Final = {"path": "/shared", "method": "PUT", "idempotency_header": KEY}
FIRST: Final = hooked("routes-first", {"id": "api", "http": SHARED})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("trigger-routes")
    for running in start_stack(tmp, Recorder(), worker=False):
        running.wait_healthy()
        assert running.http.post("/v1/workflows", json=FIRST).status_code == 201
        yield running


def test_a_route_of_another_workflow_is_a_registration_problem(stack: Stack) -> None:
    clash = hooked("routes-second", {"id": "mine", "http": {"path": "/shared", "method": "PUT"}})
    body = assert_problem(stack.http.post("/v1/workflows", json=clash), 422)
    text = str(body)
    assert "routes-first" in text and "triggers[0].http.path" in text, body
    other_method = hooked("routes-second", {"id": "mine", "http": {"path": "/shared"}})
    assert stack.http.post("/v1/workflows", json=other_method).status_code == 201  # POST: free
    again = stack.http.post("/v1/workflows", json={**FIRST, "version": "2"})
    assert again.status_code == 201, again.text  # its own routes are no conflict
    managed = {
        "workflow": "routes-second",
        "trigger": {"id": "hook", "webhook": {"path": "/shared"}},
    }  # fmt: skip  (POST /shared: routes-second's own http trigger)
    assert_problem(stack.http.post("/v1/triggers", json=managed), 422)
    stolen = {"workflow": "routes-second", "trigger": {"id": "put", "http": {
        "path": "/shared", "method": "PUT"}}}  # fmt: skip
    assert "routes-first" in str(assert_problem(stack.http.post("/v1/triggers", json=stolen), 422))


def test_the_client_names_the_other_workflow_too(stack: Stack) -> None:
    async def register() -> str:
        async with connected(stack.serve.url) as client:
            try:
                await client.register_workflow(
                    hooked(
                        "routes-third", {"id": "t", "http": {"path": "/shared", "method": "PUT"}}
                    )
                )
            except WorkflowInvalidError as error:
                return str(error)
        return ""

    assert "routes-first" in asyncio.run(register())


def test_a_start_lost_after_its_idempotency_key_is_published_on_the_repeat(stack: Stack) -> None:
    value = "lost-start-1"

    async def crashed_after_the_key() -> None:  # what a serve killed there leaves behind
        async with connected(stack.serve.url, role="admin") as client:
            js = client.connection.js
            kv = await js.create_key_value(
                bucket=IDEMPOTENCY_BUCKET, history=1, ttl=settings.idempotency_ttl_ms / 1000
            )
            await kv.create(f"{trigger_key('routes-first', 'api')}.{digest(value)}", b"1")

    asyncio.run(crashed_after_the_key())
    run_id = fire_run_id("routes-first", "api", f"idem:{digest(value)}:1")
    assert stack.http.get(f"/v1/runs/{run_id}").status_code == 404  # no run: the start was lost
    first = stack.http.put("/hooks/shared", json={"n": 1}, headers={KEY: value})
    assert first.status_code == 201, first.text
    assert first.headers["x-run-id"] == run_id and first.json() == {"n": 1}
    repeat = stack.http.put("/hooks/shared", json={"n": 2}, headers={KEY: value})
    assert repeat.status_code == 201 and repeat.json() == {"n": 1}  # the first run's answer
    assert repeat.headers["x-run-id"] == run_id
