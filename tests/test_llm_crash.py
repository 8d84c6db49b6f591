"""Crash test of an `agent_turn` loop with real processes: `dagnats serve`, worker processes
SIGKILLed during a streaming model call and during a tool call. Afterwards the run completed,
history has one turn event per turn and one result per tool call, and the fake model server's
request log shows no finished turn requested twice (the killed stream was cut, not finished)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dagnats.llm.fake import FakeModelServer
from kernel.events import AgentToolCompleted, AgentTurnCompleted
from kernel.workflow.builder import Retry, Workflow
from tests.fake_model import fake_server
from tests.fault_support import (
    Process,
    Processes,
    connected,
    dagnats_command,
    decisions_of,
    events_of,
)
from tests.nats_fixtures import wait_for

WAIT_MS = 30_000
SCRIPT: dict[str, Any] = {"agents": [{"match": "crash test agent", "replies": [
    {"text": "Calling the slow tool now, one word at a time, slowly enough to be killed.",
     "pieces": 40, "chunk_delay_ms": 75,
     "tool_calls": [{"name": "slow_tool", "arguments": {"name": "world"}}]},
    {"text": "The tool said hello."},
]}]}  # fmt: skip



def start_worker(processes: Processes, url: str) -> Process:
    argv = [*dagnats_command(), "worker", "tests.fake_model_worker:worker", "--nats-url", url,
            "--heartbeat-timeout", "1"]  # fmt: skip
    return processes.start("llm-worker", argv)


def tool_calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_killing_workers_mid_stream_and_mid_tool_asks_no_finished_turn_twice(
    processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, gate = tmp_path / "tool-calls.jsonl", tmp_path / "gate"
    async with fake_server(SCRIPT) as server:
        monkeypatch.setenv("FAKE_MODEL_URL", server.url)
        monkeypatch.setenv("FAKE_MODEL_CALLS", str(calls))
        monkeypatch.setenv("FAKE_MODEL_GATE", str(gate))
        serve = await processes.serve(tmp_path / "data")
        url = serve.info["nats_url"]
        first = start_worker(processes, url)
        workflow = Workflow("llm_crash").step(
            "agent", type="agent_loop", task="crash.turn",
            retry=Retry(max_attempts=3, initial_delay=10),
            config={"max_turns": 4, "tools": {"slow_tool": "crash.slow_tool"}},
        ).build()  # fmt: skip
        async with connected(url) as client:
            run_id = await client.start(workflow, {"greet": "world"})
            await wait_for(lambda: streaming(server), timeout_ms=WAIT_MS, what="a model stream")
            await first.kill()  # mid-stream
            second = start_worker(processes, url)
            await wait_for(lambda: len(tool_calls(calls)) == 1, timeout_ms=WAIT_MS,
                           what="the tool call to start")  # fmt: skip
            await second.kill()  # mid-tool
            start_worker(processes, url)
            gate.touch()
            state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
            events = events_of(await decisions_of(client, run_id))
    assert state.status == "completed", state.error
    assert msgspec.json.decode(bytes(state.output)) == "The tool said hello."
    broken = [e for e in server.log if e["outcome"] == "broken"]
    assert len(broken) == 1 and broken[0]["turn"] == 0 and broken[0]["stream"]
    finished = [(e["turn"], e["digest"]) for e in server.finished()]
    assert len(finished) == len(set(finished)), f"a finished turn was asked again: {server.log}"
    assert sorted(turn for turn, _ in finished) == [0, 1]
    turns = [e for e in events if isinstance(e, AgentTurnCompleted)]
    assert [t.turn for t in turns] == [1, 2]
    done = [e for e in events if isinstance(e, AgentToolCompleted)]
    assert len(done) == 1 and done[0].ok
    assert len(tool_calls(calls)) == 2  # the killed tool call ran again, recorded once


def streaming(server: FakeModelServer) -> bool:
    """A model call is being streamed and has sent a few chunks already."""
    return any(e["outcome"] == "streaming" for e in server.log)
