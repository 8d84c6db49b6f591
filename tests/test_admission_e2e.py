"""Admission end to end: a real embedded nats-server, the engine, a worker and a client.

max_runs 1 holds the second run `pending` until the first ends (completed, cancelled or
failed); priority picks which pending run starts first; a singleton `skip` records the new run
cancelled, naming the holder; a start whose input breaks the input_schema is refused with no
run; a run started `--at` a time is `scheduled` and starts then. Waits are bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dagnats import Client, NonRetryableError, TaskContext, Worker
from dagnats.client import RunNotFoundError
from dagnats.input_schema import InputSchemaError
from dagnats.runtime.clock import now_ms
from kernel.events import RunAdmitted
from kernel.workflow import WorkflowDef, parse_workflow
from tests.gated_support import gated_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
WAIT_MS = 30_000


class Gates:
    """Handlers that hold until the test lets them go (by the input's `name`)."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.order: list[str] = []

    def of(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


def make_worker(gates: Gates) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> Any:
        name = ctx.input["name"]
        gates.order.append(name)
        await gates.of(name).wait()
        if ctx.input.get("fail"):
            raise NonRetryableError("told to fail")
        return {"done": name}

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Gates]]:
    gates = Gates()
    async with gated_stack(tmp_path / "data", make_worker(gates), gates.events) as client:
        yield client, gates


def gated(name: str, **admission: object) -> WorkflowDef:
    return parse_workflow({"name": name, "steps": [{"id": "work", "task": "hold"}], **admission})


async def status_of(client: Client, run_id: str) -> str:
    try:
        return (await client.get_run(run_id)).status
    except RunNotFoundError:
        return "none"


async def wait_status(client: Client, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return await status_of(client, run_id) == status

    await wait_for(reached, timeout_ms=WAIT_MS, what=f"run {run_id} {status}")


@pytest.mark.parametrize("end", ["completes", "is cancelled", "fails"])
async def test_max_runs_1_holds_the_second_run_pending_until_the_first_ends(
    stack: tuple[Client, Gates], end: str
) -> None:
    client, gates = stack
    workflow = gated(unique("one_at_a_time"), concurrency={"max_runs": 1})
    first = await client.start(workflow, {"name": "first", "fail": end == "fails"})
    await wait_for(lambda: "first" in gates.order, timeout_ms=WAIT_MS, what="first runs")
    second = await client.start(workflow, {"name": "second"})
    await wait_status(client, second, "pending")
    assert "second" not in gates.order
    assert await status_of(client, first) == "running"
    if end == "is cancelled":
        await client.cancel(first, "make room")
    else:
        gates.of("first").set()
    ended = await client.wait(first, timeout_s=WAIT_S)
    assert ended.status == {"completes": "completed", "is cancelled": "cancelled"}.get(
        end, "failed"
    )
    await wait_for(lambda: "second" in gates.order, timeout_ms=WAIT_MS, what="second runs")
    gates.of("second").set()
    assert (await client.wait(second, timeout_s=WAIT_S)).status == "completed"


async def test_priority_decides_which_pending_run_starts_first(
    stack: tuple[Client, Gates],
) -> None:
    client, gates = stack
    workflow = gated(unique("ranked"), concurrency={"max_runs": 1}, priority="rank")
    holder = await client.start(workflow, {"name": "holder", "rank": 0})
    await wait_for(lambda: "holder" in gates.order, timeout_ms=WAIT_MS, what="holder runs")
    low = await client.start(workflow, {"name": "low", "rank": 1})
    high = await client.start(workflow, {"name": "high", "rank": 9})
    await wait_status(client, low, "pending")
    await wait_status(client, high, "pending")
    for name in ("holder", "low", "high"):
        gates.of(name).set()
    await client.wait(holder, timeout_s=WAIT_S)
    await client.wait(low, timeout_s=WAIT_S)
    await client.wait(high, timeout_s=WAIT_S)
    assert gates.order == ["holder", "high", "low"]
    admitted = {}
    for run_id in (low, high):
        async for _, decision in client.history(run_id):
            for event in decision.events:
                if isinstance(event, RunAdmitted):
                    admitted[run_id] = event.at_ms
    assert admitted[high] <= admitted[low]


async def test_singleton_skip_records_a_cancelled_run_naming_the_holder(
    stack: tuple[Client, Gates],
) -> None:
    client, gates = stack
    workflow = gated(unique("single"), singleton={"key": "customer", "mode": "skip"})
    holder = await client.start(workflow, {"name": "holder", "customer": "c1"})
    await wait_for(lambda: "holder" in gates.order, timeout_ms=WAIT_MS, what="holder runs")
    skipped = await client.start(workflow, {"name": "skipped", "customer": "c1"})
    other = await client.start(workflow, {"name": "other", "customer": "c2"})
    state = await client.wait(skipped, timeout_s=WAIT_S)
    assert state.status == "cancelled"
    assert state.holder_run_id == holder
    assert state.cancel_reason is not None and holder in state.cancel_reason
    await wait_for(lambda: "other" in gates.order, timeout_ms=WAIT_MS, what="another key runs")
    assert "skipped" not in gates.order
    gates.of("holder").set()
    gates.of("other").set()
    assert (await client.wait(holder, timeout_s=WAIT_S)).status == "completed"
    assert (await client.wait(other, timeout_s=WAIT_S)).status == "completed"


async def test_a_start_that_breaks_the_input_schema_is_refused_and_no_run_exists(
    stack: tuple[Client, Gates],
) -> None:
    client, _gates = stack
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    workflow = gated(unique("checked"), input_schema=schema)
    run_id = unique("refused")
    with pytest.raises(InputSchemaError) as refused:
        await client.start(workflow, {"name": 7}, run_id=run_id)
    assert refused.value.errors == ("$.name: 7 — 7 is not of type 'string' (type)",)
    assert await status_of(client, run_id) == "none"


async def test_a_run_started_at_a_time_is_scheduled_then_starts(
    stack: tuple[Client, Gates],
) -> None:
    client, gates = stack
    workflow = gated(unique("later"))
    due = now_ms() + 1_500
    run_id = await client.start(workflow, {"name": "later"}, run_at_ms=due)
    await wait_status(client, run_id, "scheduled")
    assert "later" not in gates.order
    gates.of("later").set()
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    assert state.started_at_ms >= due
