"""`dagnats trigger fire` on a debounced trigger against a real `dagnats serve` with roles
enforced: the CLI connects in the client role, which may not write the pending bursts nor
the fire records; the run starts at once, with a note saying why, and nothing records a
failure the user did not cause."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from dagnats.runtime.triggers import read_fires
from tests.fault_support import Processes, connected, workflow

NAP = [{"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}]
TRIGGER = {"id": "b", "subject": {"subject": "x.fire"},
           "debounce": {"period": "1h", "key": "data.user"}}  # fmt: skip


@pytest_asyncio.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        await processes.close()


async def test_a_client_fires_a_debounced_trigger_and_its_run_starts_at_once(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    async with connected(serve.url, role="admin") as admin:
        await admin.register_workflow(workflow("fired", NAP, triggers=[TRIGGER]))
    done = procs.cli("trigger", "fire", "fired", "b", "--nats-url", serve.url, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["outcome"] == "started", record
    assert "client role may not write" in record["note"] and not record["reason"], record
    async with connected(serve.url, role="client") as client:
        final = await client.wait(record["run_id"], timeout_s=30)
        assert final.status == "completed", final.status
        records = await read_fires(client.connection.js, "fired", "b", 10)
        assert [r.outcome for r in records if r.outcome == "failed"] == []
    plain = procs.cli("trigger", "fire", "fired", "b", "--nats-url", serve.url)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("started  trg-") and "note: not debounced" in plain.stdout
