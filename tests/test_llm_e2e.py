"""An `agent_turn` loop end to end on a real embedded nats-server (serve, engine, worker and
client in this process) against the fake model server: tool calls run as durable tasks, a 429
is retried after the server's retry-after, the turn's text streams live on core NATS under the
worker's and the client's roles, and history holds exactly one turn event per finished turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from dagnats import Worker
from dagnats.llm import LiveChunk, Toolset, agent_turn, follow_live
from dagnats.runtime.serve import local_stack
from kernel.events import AgentToolCompleted, AgentTurnCompleted, AgentTurnFailed
from kernel.workflow.builder import Retry, Workflow
from tests.fake_model import fake_server, model_for
from tests.nats_fixtures import wait_for

WAIT_S = 60.0
ANSWER = "The bug was an off-by-one; fixed and the tests pass."

SCRIPT: dict[str, Any] = {"agents": [{"match": "coding agent", "replies": [
    {"text": "Reading the module.",
     "tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}]},
    {"text": ANSWER, "pieces": 6, "chunk_delay_ms": 20,
     "fail_first": [{"status": 429, "retry_after": 0.2, "message": "slow down"}]},
]}]}  # fmt: skip


def make_worker(url: str, reads: list[str]) -> Worker:
    tools = Toolset(prefix="tools.")

    @tools.tool
    async def read_file(path: str) -> str:
        """Read a file of the repository."""
        reads.append(path)
        return "def f(n): return range(n + 1)"

    worker = Worker(concurrency=8, heartbeat_interval_ms=500)
    model = model_for("anthropic", url)
    worker.add("agent.turn", agent_turn(model=model, system="You are a coding agent.", tools=tools))
    tools.register(worker)
    return worker


async def test_an_agent_loop_calls_the_model_streams_live_and_records_one_event_per_turn(
    tmp_path: Path,
) -> None:
    reads: list[str] = []
    async with fake_server(SCRIPT) as server:
        worker = make_worker(server.url, reads)
        workflow = Workflow("llm_e2e").step(
            "agent", type="agent_loop", task="agent.turn",
            retry=Retry(max_attempts=3, initial_delay=10),
            config={"max_turns": 5, "tools": {"read_file": "tools.read_file"}},
        ).build()  # fmt: skip
        async with local_stack(tmp_path / "data", worker) as (_, client):
            chunks: list[LiveChunk] = []
            run_id = "llm-run-1"
            async with follow_live(client.connection.nc, run_id, chunks.append):
                await client.start(workflow, {"task": "fix f"}, run_id=run_id)
                state = await client.wait(run_id, timeout_s=WAIT_S)
                await wait_for(
                    lambda: any(c.end and c.turn == 2 and c.attempt == 2 for c in chunks),
                    timeout_ms=5_000, what="the live end of turn 2",
                )  # fmt: skip
            events = [e async for _, d in client.history(run_id) for e in d.events]
    assert state.status == "completed", state.error
    assert msgspec.json.decode(bytes(state.output)) == ANSWER
    assert reads == ["a.py"]
    turns = [e for e in events if isinstance(e, AgentTurnCompleted)]
    assert [(t.turn, t.done) for t in turns] == [(1, False), (2, True)]
    failed = [e for e in events if isinstance(e, AgentTurnFailed)]
    assert len(failed) == 1 and "HTTP 429" in failed[0].error.message
    assert sum(isinstance(e, AgentToolCompleted) for e in events) == 1
    assert turns[0].tokens_in > 0 and turns[1].cost > 0  # claude-haiku-4-5 has a price
    live = [c for c in chunks if c.turn == 2 and c.attempt == 2 and not c.end]
    assert "".join(c.text for c in live) == ANSWER and len(live) == 6
    assert [c.seq for c in live] == sorted(c.seq for c in live)
    assert {c.step for c in chunks} == {"agent.turn1", "agent.turn2"}  # a turn's own task
    # Every finished model reply was asked once: a retried turn is a new request only after
    # a failure, never a second full answer to the same conversation.
    finished = [(e["turn"], e["digest"]) for e in server.finished()]
    assert len(finished) == len(set(finished)) == 2
