"""An agent loop on real processes: a worker SIGKILLed during turn 3, serve during a tool call.

`dagnats serve` (its own nats-server) and two workers of tests/agent_workers.py (a scripted
fake model and its tools; every handler call is a line in a file). The test kills the worker
running turn 3, then `serve` while the slow tool of turn 3 runs, restarts serve on the same
data dir, and checks with the call file and the history that the run finished and that no
finished turn called the model again and no finished tool ran again: only the turn in flight
at the worker's death ran twice (attempt 2, after the heartbeat timeout).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from kernel.events import (
    AgentToolCompleted,
    AgentTurnCompleted,
    AgentTurnFailed,
    AgentTurnLost,
)
from tests.fault_support import Process, Processes, connected, decisions_of, events_of, workflow
from tests.nats_fixtures import wait_for

step_timeout_ms = 20_000
run_timeout_s = 60.0
ack_wait_ms = 2_000

STEPS: list[dict[str, Any]] = [
    {
        "id": "research",
        "type": "agent_loop",
        "task": "agent.turn",
        "retry": {"max_attempts": 3, "strategy": "fixed", "initial_delay": "100ms"},
        "config": {
            "max_turns": 6,
            "tools": {"search": "agent.search", "calc": "agent.calc", "slow": "agent.slow"},
        },
    },
    {"id": "report", "task": "fault.work", "depends_on": ["research"]},
]



def agent_worker(procs: Processes, url: str, events: Path) -> Process:
    argv = [
        sys.executable,
        "-m",
        "tests.agent_workers",
        "--nats-url",
        url,
        "--ack-wait-ms",
        str(ack_wait_ms),
        "--heartbeat-ms",
        "300",
        "--events-file",
        str(events),
    ]
    return procs.start("agent-worker", argv)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_killed_worker_and_engine_rerun_only_the_turn_or_tool_in_flight(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir)
    events_files = [tmp_path / "events-1.txt", tmp_path / "events-2.txt"]
    workers = [agent_worker(procs, serve.url, path) for path in events_files]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("agent-crash", STEPS))
        run_id = await client.start("agent-crash", {"topic": "nats"})

        def turn_calls(turn: int) -> list[dict[str, Any]]:
            return [c for c in procs.calls_of(run_id, f"research.turn{turn}")]

        await wait_for(
            lambda: len(turn_calls(3)) == 1,
            timeout_ms=step_timeout_ms,
            what="a worker to be inside turn 3",
        )
        holder = next(w for w in workers if w.pid == turn_calls(3)[0]["pid"])
        survivor = next(w for w in workers if w is not holder)
        await holder.kill()  # during turn 3: it never returns

        slow_id = "research.turn3-tool0"
        await wait_for(
            lambda: len(procs.calls_of(run_id, slow_id)) == 1,
            timeout_ms=step_timeout_ms,
            what="turn 3 retried, its slow tool running",
        )
    survivor_events = events_files[workers.index(survivor)]
    seen = len(lines_of(survivor_events))
    await serve.process.kill()  # during the slow tool call
    restarted = await procs.serve(data_dir, port=serve.port)
    await wait_for(
        lambda: "reconnected" in lines_of(survivor_events)[seen:],
        timeout_ms=step_timeout_ms,
        what="the worker to reconnect",
    )
    procs.open_gate("slow")
    async with connected(restarted.url) as client:
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        history = events_of(await decisions_of(client, run_id))

    assert final.status == "completed", final.error
    research = final.step("research")
    assert research is not None and research.status == "completed"
    output = msgspec.json.decode(bytes(research.output))
    assert output["notes"] == [
        {"hits": ["nats"]},
        42,
        "error: no results for 'nothing'",
        "slow done",
    ], output
    assert output["turns"] == 4 and output["tokens_in"] == 300

    calls = Counter((c["step"], c["attempt"]) for c in procs.calls() if c["run"] == run_id)
    assert calls == {
        ("research.turn1", 1): 1,
        ("research.turn1-tool0", 1): 1,
        ("research.turn1-tool1", 1): 1,
        ("research.turn2", 1): 1,
        ("research.turn2-tool0", 1): 1,
        ("research.turn3", 1): 1,  # killed inside
        ("research.turn3", 2): 1,  # the one re-run: the turn in flight
        ("research.turn3-tool0", 1): 1,  # in flight when serve died: ran once all the same
        ("research.turn4", 1): 1,
        ("report", 1): 1,
    }, calls
    turns = Counter(e.turn for e in history if isinstance(e, AgentTurnCompleted))
    assert turns == {1: 1, 2: 1, 3: 1, 4: 1}
    tools = Counter((e.turn, e.index, e.ok) for e in history if isinstance(e, AgentToolCompleted))
    assert tools == {(1, 0, True): 1, (1, 1, True): 1, (2, 0, False): 1, (3, 0, True): 1}
    # The killed worker's turn is lost, not failed: it runs again without consuming the policy.
    assert not [e for e in history if isinstance(e, AgentTurnFailed)]
    lost = [(e.turn, e.attempt, e.error.kind) for e in history if isinstance(e, AgentTurnLost)]
    assert lost == [(3, 1, "lost")]
    assert survivor.alive()
