"""Given/when/then examples of the `task` step type and of commands that do not apply.

Duplicates, stale attempts, anything for a finished run and a repeated StartRun decide to
nothing; a run or step that does not exist is a Rejection; an output over the payload limit
fails the step with kind `invalid_output`.
"""

from __future__ import annotations

import msgspec
import pytest

from kernel import limits
from kernel.events import (
    ErrorInfo,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepStarted,
)
from tests.kernel_dsl import (
    cancel,
    complete,
    fail,
    fire_retry,
    fire_step_timeout,
    given,
    raw,
    retry,
    start,
    started,
    task,
    workflow,
)

ONE = workflow(task("a"))
CHAIN = workflow(task("a"), task("b", "a"))


def test_start_run_records_the_workflow_and_schedules_the_root_with_the_run_input() -> None:
    command = start(CHAIN, {"n": 1}, at_ms=500, seed=9)
    given().when(command).then(
        RunStarted(run_id="r1", workflow=CHAIN, input=raw({"n": 1}), at_ms=500, seed=9),
        StepScheduled(step_id="a", attempt=1, input=raw({"n": 1}), at_ms=500),
    ).then_lacks(StepScheduled, step_id="b").then_state(
        status="running", steps={"a": "scheduled", "b": "pending"}
    )


def test_task_started_marks_the_attempt_running_with_its_worker() -> None:
    when = given(start(ONE)).when(started("a", worker_id="w7"))
    when.then(StepStarted(step_id="a", attempt=1, worker_id="w7", at_ms=when.at_ms))
    when.then_state(steps={"a": "running"}, status="running")
    assert when.state.steps[0].worker_id == "w7"


def test_task_started_twice_decides_nothing() -> None:
    given(start(ONE), started("a")).when(started("a", worker_id="w2")).then_nothing()


def test_task_started_for_another_attempt_decides_nothing() -> None:
    given(start(ONE)).when(started("a", attempt=2)).then_nothing()


def test_completing_the_last_step_completes_the_run_with_its_output() -> None:
    when = given(start(ONE), started("a")).when(complete("a", {"ok": True}))
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw({"ok": True}), at_ms=when.at_ms),
        RunCompleted(output=raw({"ok": True}), at_ms=when.at_ms),
    ).then_state(status="completed", ended_at_ms=when.at_ms, output=raw({"ok": True}))


def test_completing_a_scheduled_step_without_task_started_is_accepted() -> None:
    when = given(start(CHAIN)).when(complete("a", 1))
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw(1), at_ms=when.at_ms),
        StepScheduled(step_id="b", attempt=1, input=raw(1), at_ms=when.at_ms),
    ).then_lacks(RunCompleted)


def test_a_second_completion_decides_nothing() -> None:
    given(start(CHAIN), complete("a", 1)).when(complete("a", 2)).then_nothing()


def test_a_completion_for_a_stale_attempt_decides_nothing() -> None:
    wf = workflow(task("a", retry=retry(3)))
    state = given(start(wf), fail("a"), fire_retry("a", 2))
    assert state.state.steps[0].attempt == 2
    state.when(complete("a", "late", attempt=1)).then_nothing()
    state.when(fail("a", attempt=1)).then_nothing()
    state.when(complete("a", "now", attempt=2)).then_includes(
        StepCompleted(step_id="a", attempt=2, output=raw("now"), at_ms=state.next_at_ms)
    )


def test_a_completion_for_an_attempt_not_yet_scheduled_decides_nothing() -> None:
    given(start(ONE)).when(complete("a", attempt=2)).then_nothing()


def test_a_completion_while_waiting_for_a_retry_decides_nothing() -> None:
    wf = workflow(task("a", retry=retry(3)))
    given(start(wf), fail("a")).when(complete("a", attempt=1)).then_nothing().then_state(
        steps={"a": "retry_wait"}
    )


def test_anything_for_a_terminal_run_decides_nothing() -> None:
    done = given(start(ONE), complete("a"))
    assert done.state.status == "completed"
    for command in (
        complete("a"),
        fail("a"),
        started("a"),
        fire_retry("a", 2),
        fire_step_timeout("a"),
        complete("nope"),
    ):
        done.when(command).then_nothing()


def test_start_run_twice_with_the_same_workflow_and_input_decides_nothing() -> None:
    given(start(ONE, {"x": 1})).when(start(ONE, {"x": 1})).then_nothing()
    given(start(ONE), complete("a")).when(start(ONE)).then_nothing()


def test_start_run_with_another_workflow_or_input_is_rejected_as_run_exists() -> None:
    given(start(ONE)).when(start(CHAIN)).then_rejected("run_exists")
    given(start(ONE, {"x": 1})).when(start(ONE, {"x": 2})).then_rejected("run_exists")


def test_start_run_with_an_input_over_the_limit_is_rejected_as_invalid() -> None:
    big = "x" * limits.payload_bytes_max
    given().when(start(ONE, big)).then_rejected("invalid")
    given().when(start(ONE, "x" * (limits.payload_bytes_max - 2))).then_includes(
        StepScheduled(
            step_id="a", attempt=1, input=raw("x" * (limits.payload_bytes_max - 2)), at_ms=1000
        )
    )


def test_commands_for_an_unknown_run_are_rejected_as_unknown_run() -> None:
    for command in (complete("a"), fail("a"), started("a"), cancel(), fire_retry("a", 2)):
        given().when(command).then_rejected("unknown_run")


def test_commands_for_an_unknown_step_are_rejected_as_unknown_step() -> None:
    running = given(start(ONE))
    for command in (complete("zz"), fail("zz"), started("zz")):
        when = running.when(command).then_rejected("unknown_step")
        assert isinstance(when.result, msgspec.Struct)
    running.when(complete("a")).then_includes(
        StepCompleted(step_id="a", attempt=1, output=raw(None), at_ms=running.next_at_ms)
    )


def test_an_output_over_the_payload_limit_fails_the_step_with_invalid_output() -> None:
    wf = workflow(task("a", retry=retry(3)))
    big = "y" * limits.payload_bytes_max  # encoded with its quotes: 2 bytes over
    when = given(start(wf)).when(complete("a", big))
    message = (
        f"output is {limits.payload_bytes_max + 2} bytes; "
        f"the limit is {limits.payload_bytes_max} bytes"
    )
    error = ErrorInfo(message=message, kind="invalid_output")
    when.then(
        StepFailed(step_id="a", attempt=1, error=error, will_retry=False, at_ms=when.at_ms),
        RunFailed(error=error, failed_step_id="a", at_ms=when.at_ms),
    ).then_lacks(StepCompleted).then_state(status="failed", steps={"a": "failed"})


def test_an_output_exactly_at_the_payload_limit_completes() -> None:
    exact = "y" * (limits.payload_bytes_max - 2)
    when = given(start(ONE)).when(complete("a", exact))
    when.then_includes(StepCompleted(step_id="a", attempt=1, output=raw(exact), at_ms=when.at_ms))
    when.then_lacks(StepFailed).then_state(status="completed")


def test_a_worker_error_message_is_truncated_to_the_limit() -> None:
    long_message = "e" * (limits.error_message_bytes_max + 100)
    when = given(start(ONE)).when(fail("a", long_message))
    failed = when.events[0]
    assert isinstance(failed, StepFailed)
    assert len(failed.error.message.encode()) == limits.error_message_bytes_max
    assert failed.error.message.endswith("…") and failed.error.message.startswith("eee")
    short = given(start(ONE)).when(fail("a", "short")).events[0]
    assert isinstance(short, StepFailed) and short.error.message == "short"


# --- the given/when/then helper itself ----------------------------------------------------


def test_given_events_and_given_commands_reach_the_same_state() -> None:
    by_commands = given(start(CHAIN, {"x": 1}), started("a"), complete("a", 2))
    by_events = given(*by_commands.events)
    assert by_events.state == by_commands.state
    assert by_events.next_at_ms == by_commands.next_at_ms == 4000
    times = [command.at_ms for command, _ in by_commands.history if command is not None]
    assert times == [1000, 2000, 3000]


def test_given_refuses_a_rejected_command() -> None:
    with pytest.raises(AssertionError, match="was rejected: unknown_run"):
        given(complete("a"))


def test_then_names_the_index_and_both_values() -> None:
    when = given(start(CHAIN)).when(complete("a", 1))
    wrong = StepCompleted(step_id="a", attempt=1, output=raw(2), at_ms=when.at_ms)
    with pytest.raises(AssertionError, match=r"events\[0\] differs") as caught:
        when.then(wrong)
    assert '"output":2' in str(caught.value) and '"output":1' in str(caught.value)
    with pytest.raises(AssertionError, match=r"2 events decided, 1 expected\n  unexpected"):
        when.then(when.events[0])
    with pytest.raises(AssertionError, match="expected no StepScheduled"):
        when.then_lacks(StepScheduled, step_id="b")
    with pytest.raises(AssertionError, match="expected Rejection"):
        when.then_rejected("unknown_step")
    with pytest.raises(AssertionError, match=r"step 'b' is 'scheduled', expected 'pending'"):
        when.then_state(steps={"b": "pending"})
    with pytest.raises(AssertionError, match="does not satisfy the predicate"):
        when.then_state(lambda state: state.status == "completed")
    when.then_state(lambda state: state.completions == 1, status="running")
