"""max_task_concurrency holds for a map's items, end to end: a real embedded nats-server, the
engine, a worker and a client. A map of 6 items of a type limited to 2 never has more than 2
handler calls of that type at once (the handler counts the calls in progress); items wait for
a slot (`task.deferred`, waiting_for_slot) and each is let go when one ends. Waits are bounded.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from dagnats import Client, TaskContext, Worker
from kernel.events import TaskDeferred, TaskReleased
from kernel.workflow import parse_workflow
from tests.gated_support import gated_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
WAIT_MS = 30_000
ITEMS = 6
LIMIT = 2


class Calls:
    """The handler calls in progress, the most seen at once, and a gate per item."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.most_at_once = 0
        self.done: set[int] = set()
        self.gates: dict[int, asyncio.Event] = {}

    def gate(self, item: int) -> asyncio.Event:
        return self.gates.setdefault(item, asyncio.Event())


def make_worker(calls: Calls) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("items")
    async def items(ctx: TaskContext) -> Any:
        return list(range(ITEMS))

    @worker.task("work")
    async def work(ctx: TaskContext) -> Any:
        item = int(ctx.input)
        calls.running.add(item)
        calls.most_at_once = max(calls.most_at_once, len(calls.running))
        try:
            await calls.gate(item).wait()
        finally:
            calls.running.discard(item)
        calls.done.add(item)
        return item * 10

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Calls]]:
    calls = Calls()
    async with gated_stack(tmp_path / "data", make_worker(calls), calls.gates) as client:
        yield client, calls


async def test_a_map_s_items_never_run_more_than_the_task_type_s_limit_at_once(
    stack: tuple[Client, Calls],
) -> None:
    client, calls = stack
    workflow = parse_workflow({
        "name": unique("fan"),
        "max_task_concurrency": {"work": LIMIT},
        "steps": [
            {"id": "list", "task": "items"},
            {"id": "each", "type": "map", "task": "work", "depends_on": ["list"],
             "config": {"max_concurrency": ITEMS}},
        ],
    })  # fmt: skip
    run_id = await client.start(workflow, {})
    await wait_for(
        lambda: len(calls.running) == LIMIT, timeout_ms=WAIT_MS, what=f"{LIMIT} items running"
    )

    async def others_wait() -> bool:
        return len((await client.get_run(run_id)).deferred) == ITEMS - LIMIT

    await wait_for(others_wait, timeout_ms=WAIT_MS, what="the other items waiting for a slot")
    assert len(calls.running) == LIMIT
    for _ in range(ITEMS):  # let the running ones go, one at a time, as they come
        await wait_for(lambda: bool(calls.running), timeout_ms=WAIT_MS, what="an item running")
        item = min(calls.running)
        calls.gate(item).set()
        await wait_for(functools.partial(calls.done.__contains__, item), timeout_ms=WAIT_MS,
                       what=f"item {item} done")  # fmt: skip
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed", state.error
    assert calls.most_at_once == LIMIT
    assert calls.done == set(range(ITEMS))
    released: list[str] = []
    async for _, decision in client.history(run_id):
        released.extend(e.step_id for e in decision.events if isinstance(e, TaskReleased))
    assert sorted(released) == [f"each.{i}" for i in range(LIMIT, ITEMS)], released
    deferred: list[str] = []
    async for _, decision in client.history(run_id):
        deferred.extend(e.reason for e in decision.events if isinstance(e, TaskDeferred))
    assert deferred == ["task_concurrency"] * (ITEMS - LIMIT), deferred
