"""Given/when/then for the `sleep` and `wait_signal` step types and run signals."""

from __future__ import annotations

import pytest

from kernel import limits
from kernel.commands import Rejection
from kernel.decide import decide
from kernel.effects import ArmTimer, CancelTimer
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    SignalConsumed,
    SignalReceived,
    StepCompleted,
    StepFailed,
    StepScheduled,
    TimerFired,
    TimerStarted,
)
from kernel.react import resume
from kernel.timers import step_timer_id
from kernel.workflow import parse_workflow
from steps.timestamps import parse_rfc3339_ms, parse_timestamp_ms
from tests.kernel_dsl import (
    cancel,
    complete,
    fire_step_timer,
    given,
    raw,
    signal,
    start,
    step_of,
    task,
    workflow,
)

NAP = workflow(task("a"), step_of("nap", "sleep", {"duration": "30s"}, "a"), task("b", "nap"))


def test_a_sleep_starts_a_durable_timer_and_arms_it() -> None:
    when = given(start(NAP)).when(complete("a", {"x": 1}))
    at = when.at_ms
    when.then_includes(
        TimerStarted(step_id="nap", timer_id="step.nap.1", fire_at_ms=at + 30_000, at_ms=at)
    )
    when.then_lacks(StepScheduled, step_id="b")
    armed = [e for e in when.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms, t.command.kind) for t in armed] == [
        ("step.nap.1", at + 30_000, "step")
    ]


def test_a_sleep_completes_when_its_timer_fires_and_passes_its_input_on() -> None:
    when = given(start(NAP), complete("a", {"x": 1})).when(fire_step_timer("nap"))
    at = when.at_ms
    when.then(
        TimerFired(step_id="nap", timer_id="step.nap.1", at_ms=at),
        StepCompleted(step_id="nap", attempt=1, output=raw({"x": 1}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"x": 1}), at_ms=at),
    )


def test_a_second_fire_of_the_sleep_timer_decides_nothing() -> None:
    given(start(NAP), complete("a"), fire_step_timer("nap")).when(
        fire_step_timer("nap")
    ).then_nothing()


def test_resume_arms_the_sleep_timer_again_and_nothing_once_it_fired() -> None:
    sleeping = given(start(NAP), complete("a")).state
    timers = [e for e in resume(sleeping) if isinstance(e, ArmTimer)]
    assert [t.timer_id for t in timers] == [step_timer_id("nap", 1)]
    woke = given(start(NAP), complete("a"), fire_step_timer("nap")).state
    assert not [e for e in resume(woke) if isinstance(e, ArmTimer)]


def test_a_cancel_while_sleeping_cancels_the_timer() -> None:
    cancelled = given(start(NAP), complete("a")).when(cancel("stop"))
    assert CancelTimer(run_id="r1", timer_id="step.nap.1") in cancelled.effects


def test_sleep_until_an_input_time_in_the_past_fires_at_once() -> None:
    wf = workflow(step_of("wait", "sleep", {"until_input_path": "due"}))
    when = given().when(start(wf, {"due": "1970-01-01T00:00:01Z"}))
    timers = [e for e in when.events if isinstance(e, TimerStarted)]
    assert [t.fire_at_ms for t in timers] == [1000]


def test_sleep_until_a_missing_input_field_fails_for_good_with_a_clear_error() -> None:
    wf = workflow(step_of("wait", "sleep", {"until_input_path": "due"}))
    when = given().when(start(wf, {"other": 1}))
    failures = [e for e in when.events if isinstance(e, StepFailed)]
    assert len(failures) == 1 and not failures[0].will_retry
    assert "'due'" in failures[0].error.message and "RFC 3339" in failures[0].error.message


@pytest.mark.parametrize(
    ("config", "rule"),
    [
        ({}, "exactly one of duration, cron, until_input_path"),
        ({"duration": "1s", "until_input_path": "x"}, "exactly one"),
        ({"duration": "soon"}, "must be a duration"),
        ({"duration": "9000h"}, "sleep_ms_max"),
        ({"duration": "1s", "cron": "* * * * *"}, "exactly one"),
        ({"every": "1s"}, "unknown field"),
        ({"until_input_path": ""}, "dotted path"),
    ],
)
def test_bad_sleep_configs_are_named(config: dict[str, object], rule: str) -> None:
    document = {"name": "w", "steps": [{"id": "s", "type": "sleep", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert any(
        rule in problem.rule and problem.path.startswith("steps[0].config")
        for problem in caught.value.problems
    ), caught.value.problems
    ok = {"name": "w", "steps": [{"id": "s", "type": "sleep", "config": {"duration": "1s"}}]}
    assert parse_workflow(ok).steps[0].type == "sleep"


# --- signals ----------------------------------------------------------------------------

APPROVE = workflow(
    task("a"), step_of("gate", "wait_signal", {"signal": "go"}, "a"), task("b", "gate")
)


def test_a_signal_completes_the_waiting_step_with_its_payload() -> None:
    when = given(start(APPROVE), complete("a")).when(signal("go", {"ok": True}))
    at = when.at_ms
    when.then(
        SignalReceived(name="go", payload=raw({"ok": True}), at_ms=at),
        SignalConsumed(step_id="gate", signal_index=0, at_ms=at),
        StepCompleted(step_id="gate", attempt=1, output=raw({"ok": True}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"ok": True}), at_ms=at),
    )


def test_a_signal_of_another_name_is_recorded_but_does_not_complete_the_step() -> None:
    when = given(start(APPROVE), complete("a")).when(signal("stop"))
    when.then(SignalReceived(name="stop", payload=raw(None), at_ms=when.at_ms))
    gate = when.state.step("gate")
    assert gate is not None and gate.status == "scheduled"


def test_a_signal_sent_before_the_step_started_waits_for_it_in_history() -> None:
    when = given(start(APPROVE), signal("go", 7)).when(complete("a"))
    when.then_includes(SignalConsumed(step_id="gate", signal_index=0, at_ms=when.at_ms))
    when.then_includes(StepCompleted(step_id="gate", attempt=1, output=raw(7), at_ms=when.at_ms))


def test_signals_are_kept_in_order_and_each_is_consumed_once() -> None:
    state = given(start(APPROVE), signal("go", 1), signal("go", 2), complete("a")).state
    assert [(s.name, bytes(s.payload), s.consumed_by) for s in state.signals] == [
        ("go", b"1", "gate"),
        ("go", b"2", None),
    ]


def test_a_signal_to_a_finished_or_unknown_run_is_refused_clearly() -> None:
    assert isinstance(decide(given().state, signal("go")), Rejection)
    unknown = decide(given().state, signal("go"))
    assert isinstance(unknown, Rejection) and unknown.code == "unknown_run"
    done = given(start(workflow(task("a"))), complete("a")).state
    assert decide(done, signal("go")) == ()


def test_an_oversized_signal_payload_is_rejected_naming_the_limit() -> None:
    big = "x" * (limits.signal_bytes_max + 1)
    result = given(start(APPROVE)).when(signal("go", big)).result
    assert isinstance(result, Rejection) and result.code == "invalid"
    assert str(limits.signal_bytes_max) in result.message


def test_rfc3339_and_epoch_ms_are_read_without_a_clock() -> None:
    assert parse_rfc3339_ms("1970-01-01T00:00:00Z") == 0
    assert parse_rfc3339_ms("2026-11-24T18:00:00.250+01:00") == 1_795_539_600_250
    assert parse_rfc3339_ms("2000-02-29T12:00:00Z") == 951_825_600_000
    assert parse_rfc3339_ms("2026-13-01T00:00:00Z") is None
    assert parse_rfc3339_ms("tomorrow") is None
    assert parse_timestamp_ms(1234) == 1234
    assert parse_timestamp_ms(True) is None and parse_timestamp_ms(-1) is None


def test_a_signal_sent_twice_with_its_id_is_recorded_once() -> None:
    sent = signal("go", {"ok": True}, signal_id="s-1")
    first = given(start(APPROVE)).when(sent)
    first.then(SignalReceived(name="go", payload=raw({"ok": True}), at_ms=first.at_ms,
                              signal_id="s-1"))  # fmt: skip
    again = given(start(APPROVE), sent)
    again.when(sent).then_nothing()  # a redelivery (its ack was lost after the append)
    again.when(signal("go", {"ok": True}, signal_id="s-2")).then(
        SignalReceived(name="go", payload=raw({"ok": True}), at_ms=again.next_at_ms,
                       signal_id="s-2")
    )  # fmt: skip
    consumed = given(start(APPROVE), complete("a"), sent)
    consumed.when(sent).then_nothing()  # taken by the step already: not offered again
    assert [s.signal_id for s in consumed.state.signals] == ["s-1"]


def test_signals_without_an_id_from_old_senders_are_each_recorded() -> None:
    twice = given(start(APPROVE), signal("go", 1)).when(signal("go", 1))
    twice.then(SignalReceived(name="go", payload=raw(1), at_ms=twice.at_ms))


def test_a_signal_id_over_its_bound_is_rejected_naming_the_limit() -> None:
    too_long = "x" * (limits.signal_id_length_max + 1)
    result = given(start(APPROVE)).when(signal("go", signal_id=too_long)).result
    assert isinstance(result, Rejection) and result.code == "invalid"
    assert "signal_id" in result.message and str(limits.signal_id_length_max) in result.message


def test_sleep_until_a_missing_field_records_the_same_text_on_every_replay() -> None:
    """Regression: the missing value was shown as `<object object at 0x7f…>` (an address), so
    an audit re-deciding the run reported a false divergence."""
    wf = workflow(step_of("wait", "sleep", {"until_input_path": "due.at"}))
    when = given().when(start(wf, {"due": {}}))
    [failed] = [e for e in when.events if isinstance(e, StepFailed)]
    assert failed.error.message == (
        "run input field 'due.at' is missing: expected an RFC 3339 time or epoch milliseconds"
    )
    assert " at 0x" not in failed.error.message
