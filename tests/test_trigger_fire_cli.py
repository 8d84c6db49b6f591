"""`dagnats trigger fire` against a real `dagnats serve` with roles enforced: the CLI connects
in the client role, which may neither write the pending bursts nor the fire records, so it
asks the engine (a fire request, `dagnats/runtime/triggers_requests.py`). A client's fire of a
debounced trigger joins its burst like any other fire; of a plain trigger starts a run; a
worker may not publish the request at all (the server refuses it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from dagnats.runtime import credentials
from dagnats.runtime.roles import inbox_prefix
from dagnats.runtime.triggers import read_fires
from dagnats.runtime.triggers_plan import STATE_BUCKET, Burst, burst_name, debounce_key, trigger_key
from dagnats.runtime.triggers_requests import MANUAL_VALUE, FireUnansweredError, request_fire
from kernel.workflow.trigger_model import Debounce
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for

NAP = [{"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}]
DEBOUNCED = {"id": "b", "subject": {"subject": "x.fire"}, "debounce": {"period": "1h"}}
PLAIN = {"id": "p", "subject": {"subject": "x.plain"}}
WAIT_MS = 20_000


async def test_a_client_fire_of_a_debounced_trigger_joins_its_burst(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    async with connected(serve.url, role="admin") as admin:
        await admin.register_workflow(workflow("fired", NAP, triggers=[DEBOUNCED]))
    first = procs.cli("trigger", "fire", "fired", "b", "--nats-url", serve.url, "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["outcome"] == "debounced" and answer["run_id"] == "", answer
    assert answer["starts_by"].endswith("Z"), answer
    again = procs.cli("trigger", "fire", "fired", "b", "--nats-url", serve.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("debounced  offered to the burst, starts by "), again.stdout
    async with connected(serve.url, role="admin") as admin:
        js = admin.connection.js
        kv = await js.key_value(STATE_BUCKET)
        key = debounce_key(Debounce(period_ms=3_600_000), dict(MANUAL_VALUE))
        found = await kv.get(burst_name(trigger_key("fired", "b"), key))
        assert found.value is not None
        burst = msgspec.json.decode(found.value, type=Burst)
        assert len(burst.fires) == 2 and all(f.startswith("manual:") for f in burst.fires)
        assert not burst.started_ms, burst  # one burst of both fires, its run not started

        async def two_records() -> bool:
            records = await read_fires(js, "fired", "b", 10)
            return [r.outcome for r in records] == ["debounced", "debounced"]

        await wait_for(two_records, timeout_ms=WAIT_MS, what="both fires recorded debounced")


async def test_a_client_fire_of_a_plain_trigger_starts_its_run(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    async with connected(serve.url, role="admin") as admin:
        await admin.register_workflow(workflow("plain", NAP, triggers=[PLAIN]))
    done = procs.cli("trigger", "fire", "plain", "p", "--nats-url", serve.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("started  trg-"), done.stdout
    run_id = done.stdout.split()[1]
    async with connected(serve.url, role="client") as client:
        final = await client.wait(run_id, timeout_s=30)
        assert final.status == "completed", final.status
        records = await read_fires(client.connection.js, "plain", "p", 10)
        assert [(r.outcome, r.run_id) for r in records] == [("started", run_id)], records
    unknown = procs.cli("trigger", "fire", "plain", "nope", "--nats-url", serve.url)
    assert unknown.returncode == 1 and "no trigger 'nope'" in unknown.stderr, unknown.stderr


async def test_a_worker_may_not_request_a_fire(procs: Processes, tmp_path: Path) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    async with connected(serve.url, role="admin") as admin:
        await admin.register_workflow(workflow("plain", NAP, triggers=[PLAIN]))
    credential = credentials.read_credential(tmp_path / "data" / "credentials" / "worker.json")
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await nats.connect(
        serve.url, user=credential.user, password=credential.password,
        inbox_prefix=inbox_prefix(credential.user), error_cb=on_error, allow_reconnect=False,
    )  # fmt: skip
    try:
        with pytest.raises(FireUnansweredError, match="not stored"):
            await request_fire(nc.jetstream(), "plain", "p", timeout_s=2.0)
    finally:
        await nc.close()
    assert any("permissions violation" in e and "dagnats.trigger.fire." in e for e in errors)
    async with connected(serve.url, role="admin") as admin:
        assert await read_fires(admin.connection.js, "plain", "p", 10) == []


async def test_the_http_api_fires_a_trigger_like_the_cli(procs: Processes, tmp_path: Path) -> None:
    serve = await procs.serve(tmp_path / "data")
    async with connected(serve.url, role="admin") as admin:
        await admin.register_workflow(workflow("hooked", NAP, triggers=[PLAIN, DEBOUNCED]))
    async with httpx.AsyncClient(base_url=serve.http_url, timeout=30.0) as http:
        started = await http.post("/v1/triggers/hooked/p/fire")
        assert started.status_code == 200, started.text
        assert started.json()["outcome"] == "started" and started.json()["run_id"], started.text
        offered = await http.post("/v1/triggers/hooked/b/fire")
        assert offered.status_code == 200, offered.text
        assert offered.json()["outcome"] == "debounced" and offered.json()["starts_by"]
        unknown = await http.post("/v1/triggers/hooked/nope/fire")
        assert unknown.status_code == 404, unknown.text
