"""Given/when/then for the `wait_for_event` step type and event conditions."""

from __future__ import annotations

import pytest
from hypothesis import given as hypothesis_given
from hypothesis import strategies as st

from kernel.commands import DeliverEvent
from kernel.conditions import condition_holds
from kernel.effects import ArmTimer, CancelTimer, WatchEvents
from kernel.errors import WorkflowInvalidError
from kernel.events import EventReceived, StepCompleted, TimerFired
from kernel.react import resume
from kernel.workflow import parse_workflow
from tests.kernel_dsl import (
    RUN_ID,
    UNSTAMPED,
    complete,
    fire_step_timer,
    given,
    raw,
    start,
    step_of,
    task,
    workflow,
)

MATCH = {"left": "order", "op": "eq", "right": "input.order"}
WAITER = workflow(
    task("a"),
    step_of(
        "paid", "wait_for_event", {"event": "order.paid", "match": MATCH}, "a", timeout_ms=60_000
    ),
)


def event(
    payload: object, *, name: str = "order.paid", seq: int = 1, at_ms: int = UNSTAMPED
) -> DeliverEvent:
    return DeliverEvent(run_id=RUN_ID, at_ms=at_ms, name=name, payload=raw(payload), event_seq=seq)


def test_a_matching_event_completes_the_step_with_its_payload_and_disarms_the_timeout() -> None:
    when = given(start(WAITER, {"order": "A1"}), complete("a")).when(event({"order": "A1"}, seq=4))
    at = when.at_ms
    when.then_includes(
        EventReceived(
            step_id="paid", name="order.paid", event_seq=4, payload=raw({"order": "A1"}), at_ms=at
        ),
        StepCompleted(step_id="paid", attempt=1, output=raw({"order": "A1"}), at_ms=at),
    )
    assert CancelTimer(run_id=RUN_ID, timer_id="step.paid.1") in when.effects


@pytest.mark.parametrize(
    "command",
    [
        event({"order": "B2"}),  # does not match
        event({"order": "A1"}, name="order.shipped"),  # another name
        event({"order": "A1"}, at_ms=1_500),  # published before the step started (at 2000)
    ],
)
def test_other_names_non_matching_or_earlier_events_are_not_taken(command: DeliverEvent) -> None:
    given(start(WAITER, {"order": "A1"}), complete("a")).when(command).then_nothing()


def test_since_run_start_takes_an_event_published_before_the_step_started() -> None:
    early = workflow(
        task("a"), step_of("w", "wait_for_event", {"event": "go", "since": "run_start"}, "a")
    )
    when = given(start(early), complete("a")).when(event(1, name="go", at_ms=1_500))
    when.then_includes(StepCompleted(step_id="w", attempt=1, output=raw(1), at_ms=1_500))


def test_a_timeout_completes_the_step_with_a_timeout_marker_instead_of_failing() -> None:
    when = given(start(WAITER, {"order": "A1"}), complete("a")).when(fire_step_timer("paid"))
    when.then_includes(
        TimerFired(step_id="paid", timer_id="step.paid.1", at_ms=when.at_ms),
        StepCompleted(step_id="paid", attempt=1, output=raw({"timeout": True}), at_ms=when.at_ms),
    )
    assert when.state.status == "completed"


def test_waiting_asks_for_the_events_since_the_step_started_and_resume_asks_again() -> None:
    when = given(start(WAITER, {"order": "A1"})).when(complete("a"))
    watches = [e for e in when.effects if isinstance(e, WatchEvents)]
    assert watches == [WatchEvents(run_id=RUN_ID, names=("order.paid",), since_ms=when.at_ms)]
    again = resume(when.state)
    assert [e for e in again if isinstance(e, WatchEvents)] == watches
    assert [e.timer_id for e in again if isinstance(e, ArmTimer)] == ["step.paid.1"]
    done = given(start(WAITER, {"order": "A1"}), complete("a"), event({"order": "A1"})).state
    assert resume(done) == ()


@pytest.mark.parametrize(
    ("config", "path", "rule"),
    [
        ({}, "steps[0].config.event", "is required"),
        ({"event": "a b"}, "steps[0].config.event", "is required"),
        ({"event": "e", "since": "yesterday"}, "steps[0].config.since", "must be one of"),
        ({"event": "e", "match": {"left": "x", "op": "~"}}, "steps[0].config.match.op", "one of"),
        ({"event": "e", "match": {"left": "x", "op": "eq"}}, "steps[0].config.match.right", "req"),
        ({"event": "e", "match": {"op": "exists"}}, "steps[0].config.match.left", "required"),
        ({"event": "e", "match": "x"}, "steps[0].config.match", "must be an object"),
        ({"event": "e", "until": 1}, "steps[0].config.until", "unknown field"),
    ],
)
def test_bad_wait_for_event_configs_are_named_by_path(
    config: dict[str, object], path: str, rule: str
) -> None:
    document = {"name": "w", "steps": [{"id": "s", "type": "wait_for_event", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert any(p.path == path and rule in p.rule for p in caught.value.problems), (
        caught.value.problems
    )


STATE = given(
    start(workflow(task("a"), task("b", "a")), {"limit": 10}), complete("a", {"v": 3})
).state


@pytest.mark.parametrize(
    ("condition", "payload", "holds"),
    [
        ({"left": "n", "op": "lt", "right": "input.limit"}, {"n": 5}, True),
        ({"left": "n", "op": "ge", "right": "input.limit"}, {"n": 5}, False),
        ({"left": "n", "op": "eq", "right": "step.a.output.v"}, {"n": 3}, True),
        ({"left": "n", "op": "ne", "right": 3}, {"n": 3}, False),
        ({"left": "n", "op": "in", "right": [1, 2, 3]}, {"n": 2}, True),
        ({"left": "s", "op": "in", "right": "abcdef"}, {"s": "cd"}, True),
        ({"left": "n", "op": "exists"}, {"n": None}, True),
        ({"left": "m", "op": "exists"}, {"n": 1}, False),
        ({"left": "", "op": "eq", "right": "hello"}, "hello", True),
        ({"left": "n", "op": "gt", "right": "x"}, {"n": 1}, False),  # type mismatch: false
    ],
)
def test_conditions_resolve_run_paths_and_literals(
    condition: dict[str, object], payload: object, holds: bool
) -> None:
    assert condition_holds(condition, raw(payload), STATE) is holds


@hypothesis_given(left=st.integers(-1000, 1000), right=st.integers(-1000, 1000))
def test_ordering_ops_agree_with_python_and_are_complementary(left: int, right: int) -> None:
    def holds(op: str) -> bool:
        return condition_holds({"left": "n", "op": op, "right": right}, raw({"n": left}), STATE)

    assert holds("lt") == (left < right) and holds("ge") == (not holds("lt"))
    assert holds("eq") == (left == right) and holds("ne") == (not holds("eq"))
    assert holds("le") == (holds("lt") or holds("eq")) and holds("gt") == (not holds("le"))
