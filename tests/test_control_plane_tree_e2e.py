"""Quotas per root run end to end on a real embedded nats-server with the fake model server: a
boss agent (root quota `max_active: 1`) starts a middle agent as a child; the middle agent's
own quota has room, but its request for a grandchild is refused by the ROOT, whose one active
child (the middle agent itself) uses the tree's quota. The refusal is the middle agent's tool
result; both runs complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagnats import Worker
from dagnats.llm import agent_turn
from dagnats.runtime.serve import local_stack
from dagnats.worker_context import TaskContext
from kernel.control import child_id
from kernel.events import (
    AgentToolCompleted,
    ControlChildAsked,
    ControlChildRefused,
    ControlChildStarted,
    ControlTreeRefused,
)
from kernel.workflow import parse_workflow
from tests.fake_model import fake_server, model_for

WAIT_S = 60.0
ADDER: dict[str, Any] = {"name": "adder", "steps": [{"id": "add", "task": "math.add"}]}
MIDDLE: dict[str, Any] = {
    "name": "middle",
    "child_runs": {"allow": True, "max_active": 1},
    "steps": [
        {"id": "agent", "type": "agent_loop", "task": "agent.middle",
         "config": {"max_turns": 4, "tools": {}}},
    ],
}  # fmt: skip
ROOT_WF: dict[str, Any] = {**MIDDLE, "name": "boss", "steps": [
    {"id": "agent", "type": "agent_loop", "task": "agent.boss",
     "config": {"max_turns": 4, "tools": {}}},
]}  # fmt: skip
START_MIDDLE = {"name": "start_workflow", "arguments": {"definition": MIDDLE, "input": {}}}
START_ADDER = {
    "name": "start_workflow",
    "arguments": {"definition": ADDER, "input": {"a": 1, "b": 2}},
}
SCRIPT: dict[str, Any] = {"agents": [
    {"match": "boss agent", "replies": [
        {"text": "I delegate.", "tool_calls": [START_MIDDLE]}, {"text": "Boss done."}]},
    {"match": "middle agent", "replies": [
        {"text": "I delegate further.", "tool_calls": [START_ADDER]}, {"text": "Middle done."}]},
]}  # fmt: skip


def make_worker(url: str) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=500)
    model = model_for("openai", url)
    worker.add(
        "agent.boss", agent_turn(model=model, system="You are a boss agent.", child_runs=True)
    )
    worker.add(
        "agent.middle", agent_turn(model=model, system="You are a middle agent.", child_runs=True)
    )

    async def add(ctx: TaskContext) -> dict[str, int]:
        return {"sum": ctx.input["a"] + ctx.input["b"]}

    worker.add("math.add", add)
    return worker


async def test_a_grandchild_is_refused_because_the_roots_quota_is_used_up(tmp_path: Path) -> None:
    async with (
        fake_server(SCRIPT) as server,
        local_stack(tmp_path / "data", make_worker(server.url)) as (_, client),
    ):
        run_id = "boss-tree"
        await client.start(parse_workflow(ROOT_WF), {"task": "delegate"}, run_id=run_id)
        state = await client.wait(run_id, timeout_s=WAIT_S)
        middle = child_id(run_id, "agent", 1, 0)
        middle_state = await client.wait(middle, timeout_s=WAIT_S)
        root_events = [e async for _, d in client.history(run_id) for e in d.events]
        middle_events = [e async for _, d in client.history(middle) for e in d.events]
    assert state.status == "completed", state.error
    assert middle_state.status == "completed", middle_state.error
    assert [e.child_run_id for e in root_events if isinstance(e, ControlChildStarted)] == [middle]
    [asked] = [e for e in middle_events if isinstance(e, ControlChildAsked)]
    assert asked.root_run_id == run_id
    [tree_refused] = [e for e in root_events if isinstance(e, ControlTreeRefused)]
    assert tree_refused.rule == "child_runs.max_active"
    assert tree_refused.child_run_id == asked.child_run_id == child_id(middle, "agent", 1, 0)
    [refused] = [e for e in middle_events if isinstance(e, ControlChildRefused)]
    assert refused.rule == "child_runs.max_active" and run_id in refused.message
    assert not [e for e in middle_events if isinstance(e, ControlChildStarted)]
    [result] = [e for e in middle_events if isinstance(e, AgentToolCompleted)]
    assert not result.ok and result.error is not None and "tree" in result.error.message
    assert len(server.finished()) == 4  # two turns of each agent, each asked once
