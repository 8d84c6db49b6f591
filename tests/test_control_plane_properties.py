"""Hypothesis: an agent that starts child runs never passes its workflow's quotas, and the
replay of its history equals the state decided live.

Runs are driven through `decide` only: each turn asks for drawn child runs (written or
registered), the started children report (completed or failed) in a drawn order, time moves by
drawn gaps (so the starts-per-minute window slides), and a report may come twice. After every
decision: the children running, the definitions written and the starts within the window are
within the quotas, each refusal names a quota that was full, and the fold of all the events so
far equals the state built decision by decision."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.commands import AnyCommand, ChildStatus, CompleteTask, RecordChild, StartRun
from kernel.control import CHILD_TOOL, active_count, control_of, recent_starts
from kernel.decide import decide
from kernel.events import AnyEvent, ControlChildRefused, ControlChildStarted
from kernel.reducer import fold, fold_from
from kernel.state import RunState
from kernel.workflow import WorkflowDef, parse_workflow
from kernel.workflow.child_runs import child_runs_of

CHILD: dict[str, Any] = {"name": "adder", "steps": [{"id": "add", "task": "math.add"}]}


@st.composite
def quotas(draw: st.DrawFn) -> WorkflowDef:
    child_runs = {
        "allow": True,
        "max_active": draw(st.integers(1, 3)),
        "max_definitions": draw(st.integers(0, 2)),
        "max_starts_per_minute": draw(st.integers(1, 4)),
        "max_generations": draw(st.integers(1, 3)),
    }
    return parse_workflow({
        "name": "boss", "child_runs": child_runs,
        "steps": [{"id": "a", "type": "agent_loop", "task": "think",
                   "config": {"tools": {}, "max_turns": 20}}],
    })  # fmt: skip


def turn_result(turn: int, written: list[bool]) -> msgspec.Raw:
    calls = [
        {"name": CHILD_TOOL, "id": f"c{i}",
         "arguments": {"definition": CHILD} if w else {"workflow": "adder", "input": i}}
        for i, w in enumerate(written)
    ]  # fmt: skip
    report = {"agent": "continue", "state": {"turn": turn}, "tool_calls": calls}
    return msgspec.Raw(msgspec.json.encode(report))


class Live:
    def __init__(self, workflow: WorkflowDef) -> None:
        self.quotas = child_runs_of(workflow)
        self.state = RunState()
        self.events: list[AnyEvent] = []

    def apply(self, command: AnyCommand) -> tuple[AnyEvent, ...]:
        decided = decide(self.state, command)
        events = decided if isinstance(decided, tuple) else ()
        before = self.state
        self.state = fold_from(self.state, events)
        self.events.extend(events)
        self.check(before, events, command.at_ms)
        return events

    def check(self, before: RunState, events: tuple[AnyEvent, ...], at_ms: int) -> None:
        control = control_of(self.state)
        assert active_count(self.state) <= self.quotas.max_active
        assert control.definitions <= self.quotas.max_definitions
        assert len(recent_starts(control, at_ms)) <= self.quotas.max_starts_per_minute
        if self.state.depth + 1 > self.quotas.max_generations:
            assert not any(isinstance(e, ControlChildStarted) for e in events)
        for event in events:
            if isinstance(event, ControlChildRefused):
                assert event.rule.startswith("child_runs.") or event.rule == "definition"
        assert fold(tuple(self.events)) == self.state, "replay equals live"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workflow=quotas(),
    depth=st.integers(0, 2),
    turns=st.lists(
        st.tuples(
            st.lists(st.booleans(), max_size=4),  # each call: a written definition?
            st.integers(0, 40_000),  # the gap before the turn's result
            st.randoms(use_true_random=False),  # the order children report in
            st.booleans(),  # a report comes twice
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_an_agent_never_passes_its_quotas_and_replay_equals_live(
    workflow: WorkflowDef, depth: int, turns: list[Any]
) -> None:
    live = Live(workflow)
    at_ms = 1_000
    start = StartRun(run_id="r1", at_ms=at_ms, workflow=workflow, depth=depth)
    if depth:
        start = msgspec.structs.replace(start, parent_run_id="p", parent_step_id="x")
    live.apply(start)
    for turn, (written, gap, order, twice) in enumerate(turns, start=1):
        at_ms += gap + 1
        result = CompleteTask(
            run_id="r1", at_ms=at_ms, step_id=f"a.turn{turn}", attempt=1,
            output=turn_result(turn, written),
        )  # fmt: skip
        events = live.apply(result)
        children = [e.child_run_id for e in events if isinstance(e, ControlChildStarted)]
        order.shuffle(children)
        for index, child in enumerate(children):
            at_ms += 10
            status: ChildStatus = "completed" if index % 2 == 0 else "failed"
            report = RecordChild(
                run_id="r1", at_ms=at_ms, step_id="a", child_run_id=child,
                status=status, output=msgspec.Raw(b"1"), error="" if index % 2 == 0 else "no",
            )  # fmt: skip
            live.apply(report)
            if twice:
                assert live.apply(report) == (), "a redelivered report decides nothing"
    assert control_of(live.state).started == sum(
        isinstance(e, ControlChildStarted) for e in live.events
    )
