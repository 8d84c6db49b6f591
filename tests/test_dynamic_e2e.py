"""End to end on a real embedded nats-server: a planner whose plan runs, a 1,000-item map.

One process: server, engine, worker and client, as in tests/test_engine_e2e.py. Waits are
bounded (`Client.wait` with a timeout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest_asyncio

from dagnats import Client, NonRetryableError, TaskContext, Worker
from dagnats.runtime.serve import local_stack
from kernel.events import MapExpanded, MapItemCompleted, PlannerMaterialized, PlannerRejected
from kernel.workflow.builder import Retry, Workflow

WAIT_S = 60.0
MAP_ITEMS = 1_000


class Stack:
    def __init__(self, client: Client, calls: Counter[str], errors_seen: list[tuple[str, ...]]):
        self.client = client
        self.calls = calls
        self.errors_seen = errors_seen

    async def events(self, run_id: str) -> list[Any]:
        return [
            event async for _, decision in self.client.history(run_id) for event in decision.events
        ]


def make_worker(calls: Counter[str], errors_seen: list[tuple[str, ...]]) -> Worker:
    worker = Worker(concurrency=64, heartbeat_interval_ms=500)

    @worker.task("plan")
    async def plan(ctx: TaskContext) -> Any:
        calls["plan"] += 1
        errors_seen.append(ctx.previous_errors)
        if ctx.attempt == 1:  # a first plan with a mistake, fixed once the engine says what
            return {"steps": [{"id": "fetch", "task": "echo", "depends_on": ["nowhere"]}]}
        return {
            "steps": [
                {"id": "fetch", "task": "echo"},
                {"id": "left", "task": "double", "depends_on": ["fetch"]},
                {"id": "right", "task": "double", "depends_on": ["fetch"]},
            ]
        }

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> Any:
        calls[f"echo:{ctx.step_id}"] += 1
        return ctx.input

    @worker.task("double")
    async def double(ctx: TaskContext) -> Any:
        calls[f"double:{ctx.step_id}"] += 1
        return {"n": ctx.input["n"] * 2}

    @worker.task("numbers")
    async def numbers(ctx: TaskContext) -> Any:
        return {"items": list(range(ctx.input["count"]))}

    @worker.task("square")
    async def square(ctx: TaskContext) -> Any:
        calls["square"] += 1
        value = ctx.input
        if value % 100 == 7 and ctx.attempt == 1:
            raise ConnectionError("flaky once")  # retried by the map's retry policy
        if value == 13:
            raise NonRetryableError("thirteen")
        return value * value

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    calls: Counter[str] = Counter()
    errors_seen: list[tuple[str, ...]] = []
    worker = make_worker(calls, errors_seen)
    async with local_stack(tmp_path / "data", worker) as (_, client):
        yield Stack(client, calls, errors_seen)


async def test_a_planner_fixes_its_plan_on_retry_and_downstream_gets_the_plans_outputs(
    stack: Stack,
) -> None:
    workflow = (
        Workflow("planned")
        .step(
            "p",
            type="planner",
            task="plan",
            retry=Retry(max_attempts=2, initial_delay=50),
            config={"allowed_tasks": ["echo", "double"], "max_steps": 5},
        )
        .task("report", task="echo", depends_on=["p"])
        .build()
    )
    run_id = await stack.client.start(workflow, {"n": 21})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed", state.error
    assert msgspec.json.decode(bytes(state.output)) == {"left": {"n": 42}, "right": {"n": 42}}
    events = await stack.events(run_id)
    rejected = [e for e in events if isinstance(e, PlannerRejected)]
    materialized = [e for e in events if isinstance(e, PlannerMaterialized)]
    assert len(rejected) == 1 and "names no step" in rejected[0].problems[0]
    assert [s.id for s in materialized[0].steps] == ["p.fetch", "p.left", "p.right"]
    assert stack.errors_seen[0] == () and stack.errors_seen[1] == rejected[0].problems
    assert stack.calls["plan"] == 2 and stack.calls["echo:p.fetch"] == 1
    assert stack.calls["double:p.left"] == 1 and stack.calls["double:p.right"] == 1


async def test_a_thousand_item_map_completes_in_order_with_retries_and_collected_failures(
    stack: Stack,
) -> None:
    workflow = (
        Workflow("squares")
        .task("numbers", task="numbers")
        .step(
            "squares",
            type="map",
            task="square",
            depends_on=["numbers"],
            retry=Retry(max_attempts=2, initial_delay=20),
            config={"items_path": "items", "max_concurrency": 50, "mode": "collect"},
        )
        .build()
    )
    run_id = await stack.client.start(workflow, {"count": MAP_ITEMS})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed", state.error
    values = msgspec.json.decode(bytes(state.output))
    assert len(values) == MAP_ITEMS
    assert values[13] == {"error": {"message": "thirteen", "kind": "non_retryable"}}
    assert all(values[i] == i * i for i in range(MAP_ITEMS) if i != 13)
    events = await stack.events(run_id)
    assert [e.count for e in events if isinstance(e, MapExpanded)] == [MAP_ITEMS]
    completed = Counter(e.index for e in events if isinstance(e, MapItemCompleted))
    assert len(completed) == MAP_ITEMS - 1 and set(completed.values()) == {1}
    assert stack.calls["square"] == MAP_ITEMS + 10  # ten items x07 ran twice
