"""The codec: round trips, typed decode errors that name what was found, and the upcaster of
`step.failed` v1 against the golden bytes of the old version."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from kernel.codec import (
    CURRENT_VERSIONS,
    decode_command,
    decode_decision,
    decode_event,
    decode_state,
    encode,
    encode_decision,
)
from kernel.commands import (
    COMMAND_TYPES,
    AnyCommand,
    ChildStatus,
    DecideAll,
)
from kernel.errors import DecodeError, UnknownEventTypeError, UnknownEventVersionError
from kernel.events import (
    EVENT_TYPES,
    AnyEvent,
    ErrorInfo,
    RunFailed,
    StepFailed,
    StepRetryScheduled,
    event_tag,
)
from kernel.reducer import fold
from kernel.state import RunState
from steps.sub_workflow import child_run_id
from tests.agent_histories import agent_history, resumed_agent_history
from tests.control_tree import tree_history
from tests.histories.make_golden import SCENARIOS, history
from tests.kernel_dsl import (
    complete,
    fail,
    fire_retry,
    fire_run_timeout,
    fire_step_timeout,
    fire_step_timer,
    given,
    retry,
    signal,
    skip_if,
    start,
    step_of,
    task,
    workflow,
)

V1_FILE = Path(__file__).parent / "histories" / "v1_step_failed.jsonl"


def _dynamic_history() -> tuple[tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...]:
    """A planner rejecting a plan, then running one with a map (planner and map events)."""
    from kernel.workflow import StepDef

    planner = StepDef(id="p", type="planner", task="plan", retry=retry(2))
    plan = {"steps": [{"id": "m", "type": "map", "task": "w", "depends_on": ["x"]},
                      {"id": "x", "task": "x"}]}  # fmt: skip
    map_types = {"allowed_types": ["task", "map"]}
    planner = msgspec.structs.replace(planner, config=msgspec.Raw(msgspec.json.encode(map_types)))
    return given(
        start(workflow(planner)),
        complete("p", {"steps": "nope"}),
        fire_retry("p", 2),
        complete("p", plan, attempt=2),
        complete("p.x", [1, 2]),
        complete("p.m.0", 1),
        fail("p.m.1", "bad", kind="non_retryable"),
    ).history


def _composition_history() -> tuple[tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...]:
    """A sub-workflow step (child started, completed), another failing, and an external event
    taken by a wait_for_event step (the child and event events and commands)."""
    from kernel.commands import DeliverEvent, RecordChild

    def report(step_id: str, status: ChildStatus) -> RecordChild:
        child = child_run_id("r1", step_id, 1)
        return RecordChild(
            run_id="r1", at_ms=-1, step_id=step_id, child_run_id=child, status=status
        )

    paid = DeliverEvent(run_id="r1", at_ms=-1, name="paid", payload=msgspec.Raw(b"1"), event_seq=1)
    return given(
        start(
            workflow(
                step_of("c", "sub_workflow", {"workflow": "w"}),
                step_of("d", "sub_workflow", {"workflow": "w"}),
                step_of("e", "wait_for_event", {"event": "paid"}),
            )
        ),
        report("c", "completed"),
        paid,
        report("d", "failed"),
    ).history


def _approval_and_continuation_history() -> tuple[
    tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...
]:
    """An approval asked and resolved, then a continue_as_new step ending the run."""
    from kernel.commands import ResolveApproval
    from kernel.workflow import StepDef

    gate = StepDef(id="gate", type="approval", config=msgspec.Raw(b'{"question": "ok?"}'))
    decision = ResolveApproval(
        run_id="r1", at_ms=-1, step_id="gate", decision="approve", by="ana", data=msgspec.Raw(b"1")
    )
    return given(
        start(workflow(gate, step_of("again", "continue_as_new", {}, "gate"))), decision
    ).history


def _lifecycle_history() -> tuple[tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...]:
    """A run failing, its dead letter discarded, reopened in place, then terminated."""
    from tests.lifecycle_dsl import discard, reopen, terminate

    return given(
        start(workflow(task("a"), task("b", "a"))),
        complete("a", 1),
        fail("b", "bad", kind="non_retryable"),
        discard("b", 1),
        reopen(),
        terminate("stuck"),
    ).history


def _reachable() -> tuple[tuple[AnyCommand, tuple[AnyEvent, ...]], ...]:
    """Decisions of the golden scenarios and a few more, so every type appears."""
    extra = given(
        start(
            workflow(
                task("a", timeout_ms=10),
                task("b", "a", skip_if=skip_if("a", "x", "==", 1)),
                task("c"),
                timeout_ms=100,
            )
        ),
        fire_step_timeout("a", 1),
    ).history
    more = given(
        start(
            workflow(
                task("a"),
                task("b", "a", skip_if=skip_if("a", "x", "==", 1)),
                task("c"),
                timeout_ms=100,
            )
        ),
        complete("a", {"x": 1}),
        fire_run_timeout(),
    ).history
    step_types = given(
        start(
            workflow(
                step_of("nap", "sleep", {"duration": "1s"}),
                step_of("gate", "wait_signal", {"signal": "go"}, "nap"),
            )
        ),
        fire_step_timer("nap"),
        signal("go", {"ok": True}),
    ).history
    decisions: list[tuple[AnyCommand, tuple[AnyEvent, ...]]] = []
    for scenes in SCENARIOS.values():  # (a DecideAll's commands one by one: test_batch.py)
        for stored, decided in history(scenes):
            if not isinstance(stored, DecideAll):
                decisions.append((stored, decided))
    for command, events in (
        *extra,
        *more,
        *step_types,
        *_dynamic_history(),
        *_composition_history(),
        *agent_history(),
        *resumed_agent_history(),
        *_approval_and_continuation_history(),
        *_lifecycle_history(),
        *tree_history(),
    ):
        assert command is not None
        if events:
            decisions.append((command, events))
    return tuple(decisions)


DECISIONS = _reachable()
EVENTS = tuple(event for _, events in DECISIONS for event in events)
COMMANDS = tuple(command for command, _ in DECISIONS)


def test_the_examples_cover_every_event_and_command_type() -> None:
    assert {type(e) for e in EVENTS} == set(EVENT_TYPES)
    assert {type(c) for c in COMMANDS} == set(COMMAND_TYPES)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: event_tag(type(e)))
def test_every_event_round_trips(event: AnyEvent) -> None:
    data = encode(event)
    assert decode_event(data) == event
    assert encode(decode_event(data)) == data
    assert msgspec.json.decode(data)["type"] == event_tag(type(event))
    assert msgspec.json.decode(data)["v"] == CURRENT_VERSIONS[event_tag(type(event))]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_round_trips(command: AnyCommand) -> None:
    data = encode(command)
    assert decode_command(data) == command
    assert encode(decode_command(data)) == data


def test_every_decision_round_trips() -> None:
    for command, events in DECISIONS:
        data = encode_decision(command, events)
        decision = decode_decision(data)
        assert decision.command == command and decision.events == events
        assert encode(decision) == data


def test_the_initial_run_state_round_trips() -> None:
    assert decode_state(encode(RunState())) == RunState()


def test_run_state_round_trips_after_every_decision() -> None:
    for commands in SCENARIOS.values():
        events: list[AnyEvent] = []
        for _, decided in history(commands):
            events.extend(decided)
            state = fold(events)
            data = encode(state)
            assert decode_state(data) == state
            assert encode(decode_state(data)) == data


def test_a_decision_must_hold_an_event() -> None:
    with pytest.raises(AssertionError):
        encode_decision(COMMANDS[0], ())


# --- typed decode errors ------------------------------------------------------------------


def _decision_with(event: dict[str, object]) -> bytes:
    command, _ = DECISIONS[0]
    return msgspec.json.encode({"command": command, "events": [event]})


@pytest.mark.parametrize("garbage", [b"\xff\x00not json", b"{", b"", b"[1, 2]", b'{"events": 3}'])
def test_garbage_bytes_raise_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError, match="not a valid history message") as caught:
        decode_decision(garbage)
    assert not isinstance(caught.value, UnknownEventTypeError | UnknownEventVersionError)
    with pytest.raises(DecodeError, match="not a valid command"):
        decode_command(garbage)
    if garbage[:1] != b"{" or garbage == b"{":
        with pytest.raises(DecodeError, match="not a valid run state"):
            decode_state(garbage)


def test_an_unknown_event_tag_raises_unknown_event_type_naming_it() -> None:
    data = _decision_with({"type": "step.teleported", "v": 1, "at_ms": 1})
    with pytest.raises(UnknownEventTypeError, match=r"step\.teleported") as caught:
        decode_decision(data)
    assert caught.value.tag == "step.teleported"
    with pytest.raises(UnknownEventTypeError, match=r"step\.teleported"):
        decode_event(msgspec.json.encode({"type": "step.teleported", "v": 1}))


def test_an_unknown_event_version_raises_unknown_event_version_naming_it() -> None:
    scheduled_doc = msgspec.json.decode(encode(EVENTS[1]))
    assert isinstance(scheduled_doc, dict)
    tag = scheduled_doc["type"]
    assert isinstance(tag, str)
    data = _decision_with({**scheduled_doc, "v": 99})
    with pytest.raises(UnknownEventVersionError, match="99") as caught:
        decode_decision(data)
    assert (caught.value.tag, caught.value.version) == (tag, 99)
    assert caught.value.current == CURRENT_VERSIONS[tag]
    assert tag in str(caught.value)
    with pytest.raises(UnknownEventVersionError):
        decode_decision(_decision_with({**scheduled_doc, "v": 0}))
    with pytest.raises(UnknownEventVersionError, match="99"):
        decode_event(msgspec.json.encode({**scheduled_doc, "v": 99}))
    # The same event at its own version decodes.
    assert decode_decision(_decision_with(scheduled_doc)).events == (EVENTS[1],)


def test_a_version_that_is_not_an_integer_raises_decode_error() -> None:
    scheduled_doc = msgspec.json.decode(encode(EVENTS[1]))
    assert isinstance(scheduled_doc, dict)
    with pytest.raises(DecodeError, match="not an integer"):
        decode_decision(_decision_with({**scheduled_doc, "v": "2"}))


def test_an_event_with_a_missing_field_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="not a valid history message") as caught:
        decode_decision(_decision_with({"type": "step.completed", "v": 1, "step_id": "a"}))
    assert not isinstance(caught.value, UnknownEventTypeError | UnknownEventVersionError)


def test_unknown_fields_of_a_current_event_are_skipped() -> None:
    scheduled_doc = msgspec.json.decode(encode(EVENTS[1]))
    assert isinstance(scheduled_doc, dict)
    decision = decode_decision(_decision_with({**scheduled_doc, "added_later": [1, 2]}))
    assert decision.events == (EVENTS[1],)


# --- the step.failed v1 upcaster ----------------------------------------------------------


def test_the_v1_golden_file_holds_version_1_step_failed_events() -> None:
    lines = V1_FILE.read_bytes().splitlines()
    assert len(lines) == 2
    for line in lines:
        raw_events = msgspec.json.decode(line)["events"]
        failed = [e for e in raw_events if e["type"] == "step.failed"]
        assert len(failed) == 1 and failed[0]["v"] == 1
        assert isinstance(failed[0]["error"], str) and isinstance(failed[0]["retryable"], bool)
    assert CURRENT_VERSIONS["step.failed"] == 2


def test_decode_decision_upcasts_step_failed_v1_to_the_structured_error() -> None:
    retryable, final = (decode_decision(line) for line in V1_FILE.read_bytes().splitlines())
    assert retryable.events == (
        StepFailed(
            step_id="fetch",
            attempt=1,
            error=ErrorInfo(message="connection reset", kind="error"),
            will_retry=True,
            at_ms=2000,
        ),
        StepRetryScheduled(step_id="fetch", attempt=2, delay_ms=1000, due_at_ms=3000, at_ms=2000),
    )
    assert retryable.command == fail("fetch", "connection reset", at_ms=2000)
    assert final.events == (
        StepFailed(
            step_id="fetch",
            attempt=2,
            error=ErrorInfo(message="404 not found", kind="non_retryable"),
            will_retry=False,
            at_ms=4000,
        ),
        RunFailed(
            error=ErrorInfo(message="404 not found", kind="non_retryable"),
            failed_step_id="fetch",
            at_ms=4000,
        ),
    )
    for decision in (retryable, final):
        failed = decision.events[0]
        assert isinstance(failed, StepFailed) and failed.v == 2
        assert b'"retryable"' not in encode(failed)


def test_decode_event_upcasts_a_single_v1_event() -> None:
    line = V1_FILE.read_bytes().splitlines()[1]
    document = msgspec.json.decode(line)["events"][0]
    event = decode_event(msgspec.json.encode(document))
    assert event == StepFailed(
        step_id="fetch",
        attempt=2,
        error=ErrorInfo(message="404 not found", kind="non_retryable"),
        will_retry=False,
        at_ms=4000,
    )


def test_a_v1_history_folds_like_the_current_one() -> None:
    wf = workflow(task("fetch", retry=retry(2)))
    started = given(start(wf)).events
    retryable = decode_decision(V1_FILE.read_bytes().splitlines()[0])
    state = fold((*started, *retryable.events))
    assert state.steps[0].status == "retry_wait"
    assert state.steps[0].error == ErrorInfo(message="connection reset", kind="error")
