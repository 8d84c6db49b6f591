"""Given/when/then for the control plane (kernel/control.py, steps/agent_control.py): an agent
loop's turn starts child runs as tool calls, under the quotas of its workflow's `child_runs`,
deny by default; the child's end is the call's result in the next turn."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kernel.commands import CancelRun, RecordChild, StartRun
from kernel.control import CHILD_TOOL, child_id, control_of
from kernel.effects import CancelChild, EnqueueTask, StartChild
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    AgentToolCompleted,
    ControlChildEnded,
    ControlChildRefused,
    ControlChildStarted,
    ErrorInfo,
)
from kernel.react import resume
from kernel.workflow import WorkflowDef, parse_workflow, workflow_to_document
from tests.kernel_dsl import complete, given, raw, start

CHILD_DOC: dict[str, Any] = {"name": "adder", "steps": [{"id": "add", "task": "math.add"}]}


def parent(child_runs: dict[str, Any] | None = None, *, depth_note: str = "") -> WorkflowDef:
    document: dict[str, Any] = {
        "name": "boss" + depth_note,
        "steps": [{"id": "a", "type": "agent_loop", "task": "think", "config": {"tools": {}}}],
    }
    if child_runs is not None:
        document["child_runs"] = child_runs
    return parse_workflow(document)


def child_call(arguments: object, call_id: str) -> dict[str, Any]:
    return {"name": CHILD_TOOL, "arguments": arguments, "id": call_id}


def go_on(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"agent": "continue", "state": {"n": 1}, "tool_calls": list(calls)}


def written(input: object = None) -> dict[str, Any]:
    return {"definition": CHILD_DOC, "input": input}


def registered(input: object = None) -> dict[str, Any]:
    return {"workflow": "adder", "input": input}


def report(child: str, status: str = "completed", output: object = None) -> RecordChild:
    return RecordChild(
        run_id="r1", at_ms=-1, step_id="a", child_run_id=child, status=status,  # type: ignore[arg-type]
        output=raw(output), error="" if status == "completed" else "it broke",
    )  # fmt: skip


def of(events: tuple[Any, ...], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def refusals(events: tuple[Any, ...]) -> list[tuple[int, str]]:
    return [(e.index, e.rule) for e in events if isinstance(e, ControlChildRefused)]


def test_a_written_workflow_starts_as_a_child_and_its_output_is_the_next_turns_tool_result() -> (
    None
):
    wf = parent({"allow": True})
    turn = given(start(wf)).when(complete("a.turn1", go_on(child_call(written(7), "c0"))))
    child = child_id("r1", "a", 1, 0)
    assert child.startswith("r1-a-t1c0-")  # namespaced under the root run
    definition = parse_workflow(CHILD_DOC)
    turn.then_includes(
        ControlChildStarted(
            step_id="a", turn=1, index=0, call_id="c0", child_run_id=child, workflow="adder",
            definition=definition, input=raw(7), depth=1, at_ms=turn.at_ms,
        )
    )  # fmt: skip
    [effect] = [e for e in turn.effects if isinstance(e, StartChild)]
    assert (effect.child_run_id, effect.definition, effect.depth) == (child, definition, 1)
    assert msgspec.json.decode(bytes(effect.input)) == 7
    assert not [e for e in turn.effects if isinstance(e, EnqueueTask)], "no turn while it runs"
    assert [c.child_run_id for c in control_of(turn.state).active] == [child]

    ended = given(
        start(wf), complete("a.turn1", go_on(child_call(written(7), "c0")))
    ).when(report(child, output={"sum": 8}))  # fmt: skip
    ended.then_includes(
        ControlChildEnded(
            step_id="a", turn=1, index=0, child_run_id=child, status="completed",
            at_ms=ended.at_ms,
        ),
        AgentToolCompleted(
            step_id="a", turn=1, index=0, attempt=1, ok=True, output=raw({"sum": 8}),
            at_ms=ended.at_ms,
        ),
    )  # fmt: skip
    [turn2] = [e for e in ended.effects if isinstance(e, EnqueueTask)]
    envelope = msgspec.json.decode(bytes(turn2.input))
    assert envelope["turn"] == 2
    assert envelope["tool_results"] == [
        {"id": "c0", "name": CHILD_TOOL, "ok": True, "output": {"sum": 8}}
    ]
    assert control_of(ended.state).active == () and control_of(ended.state).started == 1


def test_a_failed_child_is_a_failed_tool_result_the_agent_sees() -> None:
    wf = parent({"allow": True})
    child = child_id("r1", "a", 1, 0)
    ended = given(start(wf), complete("a.turn1", go_on(child_call(registered(), "c0")))).when(
        report(child, "failed")
    )
    ended.then_includes(
        AgentToolCompleted(
            step_id="a", turn=1, index=0, attempt=1, ok=False,
            error=ErrorInfo(message="it broke", kind="non_retryable"), at_ms=ended.at_ms,
        )
    )  # fmt: skip
    [effect] = [e for e in given(start(wf)).when(
        complete("a.turn1", go_on(child_call(registered(), "c0")))
    ).effects if isinstance(e, StartChild)]  # fmt: skip
    assert effect.workflow == "adder" and effect.definition is None  # looked up by name


def test_deny_by_default_a_workflow_without_child_runs_is_refused() -> None:
    for wf in (parent(), parent({"allow": False})):
        turn = given(start(wf)).when(complete("a.turn1", go_on(child_call(registered(), "c0"))))
        assert refusals(turn.events) == [(0, "child_runs.allow")]
        assert not [e for e in turn.effects if isinstance(e, StartChild)]
        [result] = [e for e in turn.events if isinstance(e, AgentToolCompleted)]
        assert not result.ok and result.error is not None
        assert "deny by default" in result.error.message
        [turn2] = [e for e in turn.effects if isinstance(e, EnqueueTask)]  # the agent goes on
        assert msgspec.json.decode(bytes(turn2.input))["tool_results"][0]["ok"] is False


def test_each_quota_refuses_with_its_name_and_the_agent_sees_it() -> None:
    wf = parent({"allow": True, "max_active": 2, "max_definitions": 1})
    calls = [child_call(written(), "c0"), child_call(written(), "c1"),
             child_call(registered(), "c2"), child_call(registered(), "c3")]  # fmt: skip
    turn = given(start(wf)).when(complete("a.turn1", go_on(*calls)))
    # c0 starts (1 definition); c1 passes max_definitions; c2 starts; c3 passes max_active
    assert refusals(turn.events) == [
        (1, "child_runs.max_definitions"),
        (3, "child_runs.max_active"),
    ]
    started = [e.call_id for e in turn.events if isinstance(e, ControlChildStarted)]
    assert started == ["c0", "c2"]
    messages = [e.message for e in turn.events if isinstance(e, ControlChildRefused)]
    assert "the quota is 1 (child_runs.max_definitions)" in messages[0]
    assert "2 child runs are running; the quota is 2 (child_runs.max_active)" in messages[1]


def test_starts_per_minute_counts_a_sliding_window() -> None:
    wf = parent({"allow": True, "max_active": 4, "max_starts_per_minute": 2})
    calls = [child_call(registered(), f"c{i}") for i in range(3)]
    turn = given(start(wf)).when(complete("a.turn1", go_on(*calls)))
    assert refusals(turn.events) == [(2, "child_runs.max_starts_per_minute")]


def test_generation_depth_is_counted_from_the_root_run() -> None:
    wf = parent({"allow": True, "max_generations": 2})
    deep = StartRun(run_id="r1", at_ms=-1, workflow=wf, parent_run_id="p", parent_step_id="a",
                    depth=2)  # fmt: skip
    turn = given(deep).when(complete("a.turn1", go_on(child_call(registered(), "c0"))))
    assert refusals(turn.events) == [(0, "child_runs.max_generations")]
    shallow = StartRun(run_id="r1", at_ms=-1, workflow=wf, parent_run_id="p", parent_step_id="a",
                       depth=1)  # fmt: skip
    turn = given(shallow).when(complete("a.turn1", go_on(child_call(registered(), "c0"))))
    assert refusals(turn.events) == [] and of(turn.events, ControlChildStarted)[0].depth == 2


@pytest.mark.parametrize(
    ("arguments", "rule", "words"),
    [
        ({"definition": {"name": "x", "steps": []}}, "definition", "definition is invalid"),
        ({"workflow": "a", "definition": CHILD_DOC}, "arguments", "exactly one of"),
        ({}, "arguments", "exactly one of"),
        ({"workflow": "a", "bogus": 1}, "arguments", "bogus"),
        ("not an object", "arguments", "a child run request is"),
        ({"definition": {**CHILD_DOC, "child_runs": {"allow": True, "max_generations": 5}}},
         "definition.child_runs", "max_generations 5 > 2"),
    ],
)  # fmt: skip
def test_a_bad_request_is_refused_naming_the_rule(arguments: object, rule: str, words: str) -> None:
    wf = parent({"allow": True})
    turn = given(start(wf)).when(complete("a.turn1", go_on(child_call(arguments, "c0"))))
    [refused] = of(turn.events, ControlChildRefused)
    assert refused.rule == rule and words in refused.message, refused.message


def test_resume_starts_a_running_child_again_and_the_loops_end_cancels_it() -> None:
    wf = parent({"allow": True})
    history = given(start(wf), complete("a.turn1", go_on(child_call(registered(1), "c0"))))
    child = child_id("r1", "a", 1, 0)
    again = [e for e in resume(history.state) if isinstance(e, StartChild)]
    assert [e.child_run_id for e in again] == [child]
    cancelled = history.when(CancelRun(run_id="r1", at_ms=-1, reason="stop"))
    assert [e.child_run_id for e in cancelled.effects if isinstance(e, CancelChild)] == [child]


def test_a_stale_or_unknown_child_report_decides_nothing() -> None:
    wf = parent({"allow": True})
    history = given(start(wf), complete("a.turn1", go_on(child_call(registered(1), "c0"))))
    history.when(report("r1-someone-else")).then_nothing()
    child = child_id("r1", "a", 1, 0)
    done = given(
        start(wf), complete("a.turn1", go_on(child_call(registered(1), "c0"))), report(child)
    )  # fmt: skip
    done.when(report(child)).then_nothing()  # a redelivered report


def test_the_child_runs_field_is_validated_and_round_trips() -> None:
    wf = parent({"allow": True, "max_active": 3})
    assert workflow_to_document(wf)["child_runs"]["max_active"] == 3  # type: ignore[index]
    assert parse_workflow(workflow_to_document(wf)) == wf
    assert "child_runs" not in workflow_to_document(parent())
    with pytest.raises(WorkflowInvalidError) as caught:
        parent({"allow": "yes", "max_active": 1000, "other": 1})
    text = str(caught.value)
    assert "child_runs.allow: 'yes'" in text and "child_runs.max_active: 1000" in text
    assert "must be an integer from 1 to 64" in text and "child_runs.other" in text
