"""The worker module of the agent loop crash test (tests/test_agent_loop_e2e.py), run as a real
subprocess: a scripted fake model (no network, no weights) and its tools.

It serves the handlers of tests/fault_workers.py plus these (same command line, same call file:
one JSON line per handler call, written first). The model is a script keyed by the turn
number: turn 1 asks for two tools, turn 2 for a tool that fails for good (its failure is a
value turn 3 sees), turn 3 for a slow tool, turn 4 answers. Turn 3's first attempt and the slow
tool's first attempt block on gate files (`turn3`, `slow`), so the test kills a worker inside
turn 3 and the engine inside a tool call.

Run it with `python -m tests.agent_workers --nats-url URL --ack-wait-ms 2000 ...`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dagnats import Continue, Done, NonRetryableError, TaskContext, ToolCall
from tests import fault_workers
from tests.fault_workers import CALLS_ENV, append_line, wait_for_gate

worker = fault_workers.worker


def record(ctx: TaskContext, **extra: object) -> None:
    line = {
        "task": ctx.task_type,
        "run": ctx.run_id,
        "step": ctx.step_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        **extra,
    }
    append_line(Path(os.environ[CALLS_ENV]), json.dumps(line))


async def turn(ctx: TaskContext) -> Continue | Done:
    """The scripted model: one line of script per turn."""
    record(ctx, turn=ctx.turn)
    if ctx.turn == 3 and ctx.attempt == 1:
        await wait_for_gate("turn3")  # the test SIGKILLs this worker here
    seen = [
        r.output if r.ok else f"error: {(r.error or {}).get('message')}" for r in ctx.tool_results
    ]
    notes: list[Any] = [*(ctx.state or {"notes": []})["notes"], *seen]
    state = {"notes": notes}
    usage: dict[str, Any] = {"tokens_in": 100, "tokens_out": 10, "cost": 0.01}
    if ctx.turn == 1:
        calls = [
            ToolCall("search", {"q": ctx.input["topic"]}, id="s1"),
            ToolCall("calc", {"x": 21}),
        ]
        return Continue(state, calls, **usage)
    if ctx.turn == 2:
        return Continue(state, [ToolCall("search", {"q": "nothing"})], **usage)
    if ctx.turn == 3:
        return Continue(state, [ToolCall("slow", {"n": 3})], **usage)
    return Done({"notes": notes, "turns": ctx.turn, "tokens_in": ctx.usage.tokens_in}, **usage)


async def search(ctx: TaskContext) -> Any:
    record(ctx)
    if ctx.input["q"] == "nothing":
        raise NonRetryableError("no results for 'nothing'")
    return {"hits": [ctx.input["q"]]}


async def calc(ctx: TaskContext) -> Any:
    record(ctx)
    return ctx.input["x"] * 2


async def slow(ctx: TaskContext) -> Any:
    record(ctx)
    if ctx.attempt == 1:
        await wait_for_gate("slow")  # the test SIGKILLs serve while this waits
    return "slow done"


worker.add("agent.turn", turn)
worker.add("agent.search", search)
worker.add("agent.calc", calc)
worker.add("agent.slow", slow)

if __name__ == "__main__":
    fault_workers.main()
