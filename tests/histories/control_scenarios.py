"""The control plane's golden history (kernel/control.py): an agent writes a workflow and starts
it as a child run, a second request passes a quota and is refused, the child's output comes
back as the tool call's result, and the next turn finishes the loop."""

from __future__ import annotations

from typing import Any, Final

from kernel.commands import AnswerChild, AnyCommand, AskChild, RecordChild, ReleaseChild, StartRun
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


def _agents(max_active: int) -> Any:
    return parse_workflow({
        "name": "kid", "child_runs": {"allow": True, "max_active": max_active},
        "steps": [{"id": "a", "type": "agent_loop", "task": "think", "config": {"tools": {}}}],
    })  # fmt: skip


def _spawn() -> dict[str, Any]:
    call = {"name": CHILD_TOOL, "id": "c0", "arguments": {"workflow": "adder", "input": [1]}}
    return {"agent": "continue", "state": {}, "tool_calls": [call]}


def descendant_asks_the_root() -> Scenario:
    """A descendant's request is asked of the root, refused (the tree is full), asked again
    next turn, granted, started; the child's end is released at the root."""
    first, second = child_id("r1", "a", 1, 0), child_id("r1", "a", 2, 0)

    def answer(child: str, turn: int, granted: bool) -> AnswerChild:
        return AnswerChild(
            run_id="r1", at_ms=-1, step_id="a", child_run_id=child, turn=turn, index=0,
            granted=granted, rule="" if granted else "child_runs.max_active",
            message="" if granted else "child run refused: the quota is 1",
        )  # fmt: skip

    return (
        StartRun(
            run_id="r1",
            at_ms=-1,
            workflow=_agents(2),
            depth=1,
            parent_run_id="root",
            parent_step_id="a",
            control_root="root",
            control_root_step="a",
        ),
        complete("a.turn1", _spawn()),
        answer(first, 1, False),
        complete("a.turn2", _spawn()),
        answer(second, 2, True),
        RecordChild(
            run_id="r1",
            at_ms=-1,
            step_id="a",
            child_run_id=second,
            status="completed",
            output=raw(1),
        ),
        complete("a.turn3", {"agent": "done", "output": "1"}),
    )


def root_counts_its_tree() -> Scenario:
    """The root grants a descendant's child, refuses the next (its quota of 1 is used), then
    releases the first when the descendant reports its end."""

    def ask(child: str) -> AskChild:
        return AskChild(
            run_id="r1", at_ms=-1, step_id="a", child_run_id=child, requester_run_id="kid",
            requester_step_id="a", turn=1, index=0, generation=2,
        )  # fmt: skip

    wf = _agents(1)
    return (
        start(wf),
        ask("kid-a-t1c0"),
        ask("kid-a-t1c1"),
        ReleaseChild(run_id="r1", at_ms=-1, step_id="a", child_run_id="kid-a-t1c0"),
        complete("a.turn1", {"agent": "done", "output": "ok"}),
    )


CONTROL_SCENARIOS: Final[dict[str, Scenario]] = {
    "control_child_started": agent_starts_a_child(),
    "control_tree_descendant": descendant_asks_the_root(),
    "control_tree_root": root_counts_its_tree(),
}
