"""Given/when/then for a workflow's `cancel_on`: parsing, deciding on delivered events, the
watch issued at start and on resume."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given as hypothesis_given
from hypothesis import strategies as st

from kernel.commands import DeliverEvent
from kernel.decide import decide
from kernel.effects import CancelTimer, WatchEvents
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    CompensationStarted,
    ErrorInfo,
    RunCancelled,
    RunCancelRequested,
    StepCompleted,
    StepScheduled,
)
from kernel.react import resume
from kernel.workflow import WorkflowDef, parse_workflow, workflow_to_document
from tests.kernel_dsl import RUN_ID, UNSTAMPED, cancel, complete, given, raw, start

MATCH = {"left": "order", "op": "eq", "right": "input.order"}


def cancellable(cancel_on: object, *, compensate: bool = False) -> WorkflowDef:
    steps: list[dict[str, object]] = [
        {"id": "a", "task": "a", **({"compensate": "undo"} if compensate else {})},
        {"id": "b", "task": "b", "depends_on": ["a"]},
    ]
    if compensate:
        steps.append({"id": "undo", "task": "undo"})
    return parse_workflow({"name": "wf", "cancel_on": cancel_on, "steps": steps})


ORDER = cancellable({"event": "order.cancelled", "match": MATCH})


def event(
    payload: object, *, name: str = "order.cancelled", seq: int = 7, at_ms: int = UNSTAMPED
) -> DeliverEvent:
    return DeliverEvent(run_id=RUN_ID, at_ms=at_ms, name=name, payload=raw(payload), event_seq=seq)


REASON = "cancel_on event 'order.cancelled' (event 7)"


def test_a_matching_event_cancels_the_run_with_a_reason_naming_the_event() -> None:
    when = given(start(ORDER, {"order": "A1"})).when(event({"order": "A1"}))
    at = when.at_ms
    when.then(
        RunCancelRequested(reason=REASON, at_ms=at),
        RunCancelled(reason=REASON, at_ms=at),
    )
    when.then_state(status="cancelled", cancel_reason=REASON)
    assert CancelTimer(run_id=RUN_ID, timer_id="step.a.1") not in when.effects  # no sleep here


@pytest.mark.parametrize(
    "command",
    [
        event({"order": "B2"}),  # does not match
        event({"other": "A1"}),  # the field is missing
        event({"order": "A1"}, name="order.paid"),  # another name
        event({"order": "A1"}, at_ms=500),  # published before the run started (at 1000)
    ],
)
def test_a_non_matching_other_or_earlier_event_changes_nothing(command: DeliverEvent) -> None:
    when = given(start(ORDER, {"order": "A1"})).when(command)
    when.then_nothing()


def test_after_the_run_ended_a_matching_event_changes_nothing() -> None:
    done = given(start(ORDER, {"order": "A1"}), complete("a"), complete("b"))
    assert done.state.status == "completed"
    done.when(event({"order": "A1"})).then_nothing()
    cancelled = given(start(ORDER, {"order": "A1"}), event({"order": "A1"}))
    assert cancelled.state.status == "cancelled"
    cancelled.when(event({"order": "A1"}, seq=8)).then_nothing()  # a second one, or a redelivery


def test_cancel_on_runs_the_compensations_of_completed_steps() -> None:
    saga = cancellable({"event": "stop"}, compensate=True)
    when = given(start(saga), complete("a", {"x": 1})).when(event({}, name="stop", seq=3))
    at = when.at_ms
    reason = "cancel_on event 'stop' (event 3)"
    when.then_includes(
        RunCancelRequested(reason=reason, at_ms=at),
        CompensationStarted(
            steps=("a",),
            outcome="cancelled",
            error=ErrorInfo(message=f"cancelled: {reason}", kind="cancelled"),
            at_ms=at,
        ),
        StepScheduled(
            step_id="undo", attempt=1, input=raw({"step_id": "a", "output": {"x": 1}}), at_ms=at
        ),
    )
    when.then_state(status="compensating")


def test_without_match_any_payload_cancels_and_any_of_a_list_may() -> None:
    either = cancellable([{"event": "a.stop"}, {"event": "b.stop", "match": MATCH}])
    given(start(either)).when(event(None, name="a.stop")).then_state(status="cancelled")
    given(start(either, {"order": 1})).when(event({"order": 2}, name="b.stop")).then_nothing()
    given(start(either, {"order": 1})).when(event({"order": 1}, name="b.stop")).then_state(
        status="cancelled"
    )


def test_a_cancel_on_event_is_taken_before_a_step_waiting_for_the_same_name() -> None:
    document = {
        "name": "wf",
        "cancel_on": {"event": "go", "match": {"left": "stop", "op": "eq", "right": True}},
        "steps": [{"id": "w", "type": "wait_for_event", "config": {"event": "go"}}],
    }
    both = parse_workflow(document)
    cancelled = given(start(both)).when(event({"stop": True}, name="go"))
    cancelled.then_lacks(StepCompleted).then_state(status="cancelled")
    taken = given(start(both)).when(event({"stop": False}, name="go"))
    taken.then_includes(
        StepCompleted(step_id="w", attempt=1, output=raw({"stop": False}), at_ms=taken.at_ms)
    )


def test_the_run_watches_its_cancel_on_names_from_its_start_and_again_on_resume() -> None:
    either = cancellable([{"event": "x"}, {"event": "y"}, {"event": "x", "match": MATCH}])
    watch = WatchEvents(run_id=RUN_ID, names=("x", "y"), since_ms=1_000)
    first = given().when(start(either, at_ms=1_000))
    assert [e for e in first.effects if isinstance(e, WatchEvents)] == [watch]
    running = given(start(either, at_ms=1_000), complete("a"))
    assert [e for e in resume(running.state) if isinstance(e, WatchEvents)] == [watch]
    ended = given(start(either, at_ms=1_000), cancel("stop"))
    assert ended.state.status == "cancelled"
    assert resume(ended.state) == ()
    plain = given(start(cancellable(None)), complete("a"))
    assert not [e for e in resume(plain.state) if isinstance(e, WatchEvents)]


def test_cancel_on_survives_the_user_document_round_trip() -> None:
    assert parse_workflow(workflow_to_document(ORDER)) == ORDER
    assert len(ORDER.cancel_on) == 1 and ORDER.cancel_on[0].event == "order.cancelled"
    assert cancellable(None).cancel_on == ()


@pytest.mark.parametrize(
    ("cancel_on", "path", "rule"),
    [
        ({"match": MATCH}, "cancel_on.event", "is required: an event name"),
        ({"event": "bad name"}, "cancel_on.event", "is required: an event name"),
        ({"event": "x", "match": {"left": "a", "op": "like"}}, "cancel_on.match.op", "one of"),
        ({"event": "x", "match": {"op": "eq", "right": 1}}, "cancel_on.match.left", "required"),
        ({"event": "x", "match": {"left": "a", "op": "eq"}}, "cancel_on.match.right", "required"),
        ({"event": "x", "match": 3}, "cancel_on.match", "must be an object"),
        ({"event": "x", "when": 1}, "cancel_on.when", "unknown field"),
        ([{"event": "x"}, "y"], "cancel_on[1]", "must be an object"),
        ([{"event": "x"}, {"event": ""}], "cancel_on[1].event", "an event name"),
        ([{"event": "x"}] * 17, "cancel_on", "the limit is 16"),
        ("order.cancelled", "cancel_on", "must be an object"),
    ],
)
def test_each_cancel_on_problem_is_named_by_its_path(
    cancel_on: object, path: str, rule: str
) -> None:
    with pytest.raises(WorkflowInvalidError) as caught:
        cancellable(cancel_on)
    problems = [(p.path, p.rule) for p in caught.value.problems]
    assert any(p == path and rule in r for p, r in problems), problems


def test_a_workflow_with_cancel_on_round_trips_through_the_stored_json() -> None:
    either = cancellable([{"event": "a.stop"}, {"event": "b.stop", "match": MATCH}])
    data = msgspec.json.encode(either)
    assert msgspec.json.decode(data, type=WorkflowDef) == either
    old = msgspec.json.encode(msgspec.structs.replace(either, cancel_on=()))
    stripped = old.replace(b',"cancel_on":[]', b"")
    assert b"cancel_on" not in stripped  # a definition stored before cancel_on existed
    assert msgspec.json.decode(stripped, type=WorkflowDef).cancel_on == ()


_OPS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b,
    "ge": lambda a, b: a >= b,
}


@hypothesis_given(
    op=st.sampled_from(sorted(_OPS)),
    bound=st.integers(-3, 3),
    value=st.integers(-3, 3),
    seq=st.integers(1, 10**6),
)
def test_a_run_is_cancelled_exactly_when_its_condition_holds_and_once(
    op: str, bound: int, value: int, seq: int
) -> None:
    wf = cancellable({"event": "tick", "match": {"left": "n", "op": op, "right": "input.n"}})
    running = given(start(wf, {"n": bound}))
    when = running.when(event({"n": value}, name="tick", seq=seq))
    holds = _OPS[op](value, bound)
    assert (when.state.status == "cancelled") == holds, (value, op, bound, when.events)
    if holds:
        assert when.state.cancel_reason == f"cancel_on event 'tick' (event {seq})"
        again = decide(when.state, when.command)
        assert again == (), again  # a redelivered event decides nothing
    else:
        assert when.events == ()
