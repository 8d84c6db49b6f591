"""A worker process of the LLM crash tests (tests/test_llm_crash.py): an `agent_turn` loop
against the fake model server at `$FAKE_MODEL_URL` (Anthropic wire format), with one tool,
`slow_tool`, that records each call in `$FAKE_MODEL_CALLS` and then waits for the gate file
`$FAKE_MODEL_GATE` (bounded), so a test can kill the worker while a tool call runs.

Run with `dagnats worker tests.fake_model_worker:worker --heartbeat-timeout 1`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Final

from dagnats import Worker
from dagnats.llm import AnthropicMessages, Toolset, agent_turn

gate_wait_s_max: Final = 60.0

tools = Toolset(prefix="crash.")


@tools.tool
async def slow_tool(name: str) -> str:
    """A tool that waits for the test's gate."""
    with Path(os.environ["FAKE_MODEL_CALLS"]).open("a") as calls:
        calls.write(json.dumps({"tool": "slow_tool", "name": name, "pid": os.getpid()}) + "\n")
    gate = Path(os.environ["FAKE_MODEL_GATE"])
    for _ in range(int(gate_wait_s_max / 0.02)):
        if gate.exists():
            return f"hello {name}"
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the gate {gate} did not open within {gate_wait_s_max}s")


worker = Worker(concurrency=4, heartbeat_interval_ms=300)
_model = AnthropicMessages(
    "claude-haiku-4-5", base_url=os.environ.get("FAKE_MODEL_URL", "http://127.0.0.1:9"),
    api_key="sk-fake", timeout_s=30,
)  # fmt: skip
worker.add("crash.turn", agent_turn(model=_model, system="crash test agent", tools=tools))
tools.register(worker)
