"""Flow control end to end: a real embedded nats-server, the engine, a worker and a client.

A rate limit holds a task back on a durable timer (the run shows `task.deferred`,
`rate_limited`, until its tokens are there; the handler is called no earlier); a task type's
max_task_concurrency lets one task of that type run at once across runs of two workflows, the
next one released when the first ends. Waits are bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from dagnats import Client, TaskContext, Worker
from dagnats.runtime.clock import now_ms
from kernel.admission_tasks import show_deferral
from kernel.events import TaskDeferred, TaskReleased
from kernel.workflow import WorkflowDef, parse_workflow
from tests.gated_support import gated_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
WAIT_MS = 30_000


class Calls:
    """Each handler call's name and time; `hold` waits until the test lets a name go."""

    def __init__(self) -> None:
        self.at_ms: dict[str, int] = {}
        self.running: set[str] = set()
        self.most_at_once = 0
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())


def make_worker(calls: Calls) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("tick")
    async def tick(ctx: TaskContext) -> Any:
        calls.at_ms[ctx.input["name"]] = now_ms()
        return {"ticked": ctx.input["name"]}

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> Any:
        name = ctx.input["name"]
        calls.at_ms[name] = now_ms()
        calls.running.add(name)
        calls.most_at_once = max(calls.most_at_once, len(calls.running))
        await calls.gate(name).wait()
        calls.running.discard(name)
        return {"held": name}

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Calls]]:
    calls = Calls()
    async with gated_stack(tmp_path / "data", make_worker(calls), calls.gates) as client:
        yield client, calls


def limited(name: str, task: str, **fields: object) -> WorkflowDef:
    return parse_workflow({"name": name, "steps": [{"id": "work", "task": task}], **fields})


async def deferrals(client: Client, run_id: str) -> list[TaskDeferred | TaskReleased]:
    found: list[TaskDeferred | TaskReleased] = []
    async for _, decision in client.history(run_id):
        found.extend(e for e in decision.events if isinstance(e, TaskDeferred | TaskReleased))
    return found


async def test_a_rate_limit_delays_dispatch_by_a_durable_timer(
    stack: tuple[Client, Calls],
) -> None:
    client, calls = stack
    rate = {"task": "tick", "limit": 1, "period": "1500ms", "key": "customer"}
    workflow = limited(unique("metered"), "tick", rate_limits=[rate])
    first = await client.start(workflow, {"name": "first", "customer": "c1"})
    second = await client.start(workflow, {"name": "second", "customer": "c1"})
    other = await client.start(workflow, {"name": "other", "customer": "c2"})

    async def second_deferred() -> bool:
        state = await client.get_run(second)
        return ("first" in calls.at_ms and bool(state.deferred)) or "second" in calls.at_ms

    await wait_for(second_deferred, timeout_ms=WAIT_MS, what="the second task deferred")
    for run_id in (first, second, other):
        assert (await client.wait(run_id, timeout_s=WAIT_S)).status == "completed"
    held = await deferrals(client, second)
    assert [type(e) for e in held] == [TaskDeferred, TaskReleased], held
    deferred = held[0]
    assert isinstance(deferred, TaskDeferred) and deferred.reason == "rate_limited"
    assert deferred.until_ms is not None and calls.at_ms["second"] >= deferred.until_ms
    assert deferred.until_ms >= deferred.at_ms + 1_000  # a whole token later, not a retry
    assert await deferrals(client, first) == []
    assert await deferrals(client, other) == []  # another key has its own bucket


async def test_the_deferred_step_shows_rate_limited_in_the_run_state(
    stack: tuple[Client, Calls],
) -> None:
    client, calls = stack
    rate = {"task": "tick", "limit": 1, "period": "1h"}
    workflow = limited(unique("hourly"), "tick", rate_limits=[rate])
    first = await client.start(workflow, {"name": "first"})
    assert (await client.wait(first, timeout_s=WAIT_S)).status == "completed"
    second = await client.start(workflow, {"name": "second"})

    async def shown() -> bool:
        state = await client.get_run(second)
        return [show_deferral(d) for d in state.deferred] == ["rate_limited"]

    await wait_for(shown, timeout_ms=WAIT_MS, what="the step shown rate_limited")
    state = await client.get_run(second)
    assert state.status == "running" and state.steps[0].status == "scheduled"
    assert "second" not in calls.at_ms
    await client.cancel(second, "not in this hour")
    assert (await client.wait(second, timeout_s=WAIT_S)).status == "cancelled"


async def test_max_task_concurrency_runs_one_task_of_a_type_at_once_across_workflows(
    stack: tuple[Client, Calls],
) -> None:
    client, calls = stack
    one = limited(unique("one"), "hold", max_task_concurrency={"hold": 1})
    two = limited(unique("two"), "hold", max_task_concurrency={"hold": 1})
    first = await client.start(one, {"name": "first"})
    await wait_for(lambda: "first" in calls.running, timeout_ms=WAIT_MS, what="first runs")
    second = await client.start(two, {"name": "second"})

    async def waiting() -> bool:
        return bool((await client.get_run(second)).deferred)

    await wait_for(waiting, timeout_ms=WAIT_MS, what="the second task waits for a slot")
    state = await client.get_run(second)
    assert [show_deferral(d) for d in state.deferred] == ["waiting_for_slot"]
    assert "second" not in calls.at_ms
    calls.gate("first").set()
    await wait_for(lambda: "second" in calls.running, timeout_ms=WAIT_MS, what="second runs")
    calls.gate("second").set()
    for run_id in (first, second):
        assert (await client.wait(run_id, timeout_s=WAIT_S)).status == "completed"
    assert calls.most_at_once == 1
    assert calls.at_ms["second"] >= calls.at_ms["first"]
