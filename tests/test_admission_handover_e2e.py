"""Continue-as-new hands its admission slot to the next run of its chain, end to end: a real
embedded nats-server, the engine, a worker and a client (dagnats/runtime/admission.py).

Under `max_runs: 1`, a chain of continue-as-new runs keeps its slot from link to link: a run
pending on the same gate is not admitted between the links, and starts when the chain ends.
When the successor lands on another gate (another key value), the predecessor's slot is
released at once: the run pending on the old gate starts (no slot leaks). Waits are bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from dagnats import Client, TaskContext, Worker
from kernel.workflow import WorkflowDef, parse_workflow
from steps.continuation import next_run_id
from tests.gated_support import gated_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
WAIT_MS = 30_000


class Links:
    """A handler per link that holds until the test lets it go (by `<name><i>`)."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.order: list[str] = []

    def of(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


def make_worker(links: Links) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("link")
    async def link(ctx: TaskContext) -> Any:
        given = dict(ctx.input)
        index, count = int(given["i"]), int(given["n"])
        name = f"{given['name']}{index}"
        links.order.append(name)
        await links.of(name).wait()
        # the next link's input; the last link does not continue (skip_if below)
        return {**given, "i": index + 1, "k": given.get("next_k", given["k"]),
                "last": index >= count - 1}  # fmt: skip

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Links]]:
    links = Links()
    async with gated_stack(tmp_path / "data", make_worker(links), links.events) as client:
        yield client, links


def chain(name: str) -> WorkflowDef:
    skip_last = {"step_id": "work", "field": "last", "op": "==", "value": True}
    return parse_workflow({
        "name": name,
        "concurrency": {"max_runs": 1, "key": "k"},
        "steps": [
            {"id": "work", "task": "link"},
            {"id": "again", "type": "continue_as_new", "depends_on": ["work"],
             "config": {"input_from": "work"}, "skip_if": skip_last},
        ],
    })  # fmt: skip


async def wait_ran(links: Links, name: str) -> None:
    await wait_for(lambda: name in links.order, timeout_ms=WAIT_MS, what=f"{name} runs")


async def wait_status(client: Client, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await client.get_run(run_id)).status == status

    await wait_for(reached, timeout_ms=WAIT_MS, what=f"run {run_id} {status}")


async def test_a_chain_keeps_its_slot_across_continue_as_new_and_the_pending_run_waits(
    stack: tuple[Client, Links],
) -> None:
    client, links = stack
    workflow = chain(unique("chain"))
    root = await client.start(workflow, {"name": "chain", "i": 0, "n": 3, "k": "a"})
    await wait_ran(links, "chain0")
    other = await client.start(workflow, {"name": "other", "i": 0, "n": 1, "k": "a"})
    await wait_status(client, other, "pending")
    for index in (1, 2):
        # when: the link before continues as new
        links.of(f"chain{index - 1}").set()
        ended = await client.wait(next_run_id(root, index - 1) if index > 1 else root,
                                  timeout_s=WAIT_S)  # fmt: skip
        assert ended.status == "continued_as_new"
        # then: the next link runs, and the pending run is still pending
        await wait_ran(links, f"chain{index}")
        assert (await client.get_run(other)).status == "pending"
        assert "other0" not in links.order
    links.of("chain2").set()
    last = await client.wait(next_run_id(root, 2), timeout_s=WAIT_S)
    assert last.status == "completed"
    # the chain ended: its slot frees, and the pending run starts
    await wait_ran(links, "other0")
    links.of("other0").set()
    assert (await client.wait(other, timeout_s=WAIT_S)).status == "completed"
    assert links.order == ["chain0", "chain1", "chain2", "other0"]


async def test_a_successor_on_another_gate_releases_the_slot_it_left(
    stack: tuple[Client, Links],
) -> None:
    client, links = stack
    workflow = chain(unique("rekeyed"))
    start = {"name": "moving", "i": 0, "n": 2, "k": "a", "next_k": "b"}
    root = await client.start(workflow, start)
    await wait_ran(links, "moving0")
    other = await client.start(workflow, {"name": "stay", "i": 0, "n": 1, "k": "a"})
    await wait_status(client, other, "pending")
    # when: the chain continues as new on key "b"
    links.of("moving0").set()
    # then: the key "a" slot is free again (the pending run starts) and the successor runs
    await wait_ran(links, "stay0")
    await wait_ran(links, "moving1")
    links.of("stay0").set()
    links.of("moving1").set()
    assert (await client.wait(other, timeout_s=WAIT_S)).status == "completed"
    assert (await client.wait(next_run_id(root, 1), timeout_s=WAIT_S)).status == "completed"
