"""The control plane's golden history (kernel/control.py): an agent writes a workflow and starts
it as a child run, a second request passes a quota and is refused, the child's output comes
back as the tool call's result, and the next turn finishes the loop."""

from __future__ import annotations

from typing import Any, Final

from kernel.commands import AnyCommand, RecordChild
from kernel.control import CHILD_TOOL, child_id
from kernel.workflow import parse_workflow
from tests.kernel_dsl import complete, raw, start

Scenario = tuple[AnyCommand, ...]
CHILD: Final[dict[str, Any]] = {"name": "adder", "steps": [{"id": "add", "task": "math.add"}]}


def agent_starts_a_child() -> Scenario:
    wf = parse_workflow({
        "name": "boss", "child_runs": {"allow": True, "max_active": 1},
        "steps": [{"id": "a", "type": "agent_loop", "task": "think", "config": {"tools": {}}}],
    })  # fmt: skip
    calls = [
        {"name": CHILD_TOOL, "id": "c0", "arguments": {"definition": CHILD, "input": [1, 2]}},
        {"name": CHILD_TOOL, "id": "c1", "arguments": {"workflow": "adder", "input": [3]}},
    ]
    child = child_id("r1", "a", 1, 0)
    return (
        start(wf, {"goal": "add"}),
        complete("a.turn1", {"agent": "continue", "state": {"n": 1}, "tool_calls": calls}),
        RecordChild(
            run_id="r1",
            at_ms=-1,
            step_id="a",
            child_run_id=child,
            status="completed",
            output=raw(3),
        ),
        complete("a.turn2", {"agent": "done", "output": "3"}),
    )


CONTROL_SCENARIOS: Final[dict[str, Scenario]] = {"control_child_started": agent_starts_a_child()}
