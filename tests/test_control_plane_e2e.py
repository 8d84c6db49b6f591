"""The control plane end to end on a real embedded nats-server (serve, engine, worker and client
in this process) with the fake model server: an `agent_turn` agent writes a small workflow and
starts it as a child run (its `start_workflow` tool), gets the child's output as the tool
call's result next turn, and a second request in the same turn is refused over the run's
`child_runs.max_active` quota, which the agent sees as that call's result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from dagnats import Worker
from dagnats.llm import agent_turn
from dagnats.runtime.serve import local_stack
from dagnats.worker_context import TaskContext
from kernel.control import child_id
from kernel.events import (
    AgentToolCompleted,
    AgentTurnCompleted,
    ControlChildRefused,
    ControlChildStarted,
)
from kernel.workflow import parse_workflow
from tests.fake_model import fake_server, model_for

WAIT_S = 60.0
ADDER: dict[str, Any] = {"name": "adder", "steps": [{"id": "add", "task": "math.add"}]}
START = {"name": "start_workflow", "arguments": {"definition": ADDER, "input": {"a": 2, "b": 3}}}
AGAIN = {"name": "start_workflow", "arguments": {"definition": ADDER, "input": {"a": 5, "b": 5}}}
SCRIPT: dict[str, Any] = {"agents": [{"match": "boss agent", "replies": [
    {"text": "I will write an adder and run it.", "tool_calls": [START, AGAIN]},
    {"text": "The sum is 5."},
]}]}  # fmt: skip
PARENT: dict[str, Any] = {
    "name": "boss",
    "child_runs": {"allow": True, "max_active": 1},
    "steps": [
        {"id": "agent", "type": "agent_loop", "task": "agent.turn",
         "config": {"max_turns": 4, "tools": {}}},
    ],
}  # fmt: skip


def make_worker(url: str) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=500)
    model = model_for("openai", url)
    turn = agent_turn(model=model, system="You are a boss agent.", child_runs=True)
    worker.add("agent.turn", turn)

    async def add(ctx: TaskContext) -> dict[str, int]:
        numbers = ctx.input
        return {"sum": numbers["a"] + numbers["b"]}

    worker.add("math.add", add)
    return worker


async def test_an_agent_writes_a_workflow_runs_it_as_a_child_and_is_refused_over_a_quota(
    tmp_path: Path,
) -> None:
    async with (
        fake_server(SCRIPT) as server,
        local_stack(tmp_path / "data", make_worker(server.url)) as (_, client),
    ):
        run_id = "boss-1"
        await client.start(parse_workflow(PARENT), {"task": "add 2 and 3"}, run_id=run_id)
        state = await client.wait(run_id, timeout_s=WAIT_S)
        child = child_id(run_id, "agent", 1, 0)
        child_state = await client.wait(child, timeout_s=WAIT_S)
        events = [e async for _, d in client.history(run_id) for e in d.events]
        child_events = [e async for _, d in client.history(child) for e in d.events]
    assert state.status == "completed", state.error
    assert msgspec.json.decode(bytes(state.output)) == "The sum is 5."
    assert child_state.status == "completed" and child_state.parent_run_id == run_id
    assert msgspec.json.decode(bytes(child_state.output)) == {"sum": 5}
    assert child_state.workflow is not None and child_state.workflow.name == "adder"
    assert child_state.depth == 1 and child_events  # its own history, under the root's id
    [started] = [e for e in events if isinstance(e, ControlChildStarted)]
    assert started.child_run_id == child and started.definition == parse_workflow(ADDER)
    [refused] = [e for e in events if isinstance(e, ControlChildRefused)]
    assert refused.rule == "child_runs.max_active" and refused.index == 1
    results = sorted(
        ((e.index, e.ok) for e in events if isinstance(e, AgentToolCompleted)),
    )
    assert results == [(0, True), (1, False)]
    [ok] = [e for e in events if isinstance(e, AgentToolCompleted) and e.ok]
    assert msgspec.json.decode(bytes(ok.output)) == {"sum": 5}  # the child's output
    turns = [(e.turn, e.done) for e in events if isinstance(e, AgentTurnCompleted)]
    assert turns == [(1, False), (2, True)]
    # the model was asked twice: once per finished turn, the second time with both results
    assert len(server.finished()) == 2
