"""Given/when/then examples of the DAG rules: readiness, inputs, skip_if, concurrency, output.

Each example asserts both what happens and what does not (b is scheduled and c is not).
"""

from __future__ import annotations

import pytest

from kernel.events import (
    ErrorInfo,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepRecovered,
    StepScheduled,
    StepSkipped,
)
from kernel.workflow import SkipOp
from tests.kernel_dsl import (
    complete,
    fail,
    given,
    raw,
    retry,
    skip_if,
    start,
    task,
    workflow,
)

# a -> b, a -> c, (b, c) -> d
DIAMOND = workflow(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"))


# --- readiness ----------------------------------------------------------------------------


def test_roots_are_scheduled_at_start_and_dependents_are_not() -> None:
    wf = workflow(task("a"), task("b"), task("c", "a"))
    given().when(start(wf, 5)).then_includes(
        StepScheduled(step_id="a", attempt=1, input=raw(5), at_ms=1000),
        StepScheduled(step_id="b", attempt=1, input=raw(5), at_ms=1000),
    ).then_lacks(StepScheduled, step_id="c").then_state(steps={"c": "pending"})


def test_a_step_waits_until_every_dependency_is_done() -> None:
    running = given(start(DIAMOND), complete("a", 1))
    running.when(complete("b", 2)).then(
        StepCompleted(step_id="b", attempt=1, output=raw(2), at_ms=running.next_at_ms)
    ).then_lacks(StepScheduled, step_id="d").then_state(steps={"d": "pending", "c": "scheduled"})
    after_b = given(start(DIAMOND), complete("a", 1), complete("b", 2))
    when = after_b.when(complete("c", 3))
    when.then(
        StepCompleted(step_id="c", attempt=1, output=raw(3), at_ms=when.at_ms),
        StepScheduled(step_id="d", attempt=1, input=raw({"b": 2, "c": 3}), at_ms=when.at_ms),
    )


def test_completing_a_step_schedules_all_its_ready_dependents_at_once() -> None:
    when = given(start(DIAMOND)).when(complete("a", "x"))
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw("x"), at_ms=when.at_ms),
        StepScheduled(step_id="b", attempt=1, input=raw("x"), at_ms=when.at_ms),
        StepScheduled(step_id="c", attempt=1, input=raw("x"), at_ms=when.at_ms),
    ).then_lacks(StepScheduled, step_id="d")


def test_a_skipped_dependency_counts_as_done_and_gives_null() -> None:
    wf = workflow(
        task("a"), task("b", "a", skip_if=skip_if("a", "go", "==", False)), task("c", "b")
    )
    when = given(start(wf)).when(complete("a", {"go": False}))
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw({"go": False}), at_ms=when.at_ms),
        StepSkipped(step_id="b", reason="skip_if a.go == false", at_ms=when.at_ms),
        StepScheduled(step_id="c", attempt=1, input=raw(None), at_ms=when.at_ms),
    ).then_lacks(StepScheduled, step_id="b")


def test_a_recovered_dependency_counts_as_done_and_gives_the_fallback_output() -> None:
    wf = workflow(task("a", on_failure="fix"), task("b", "a"), task("fix"))
    failed = given(start(wf), fail("a"))
    # While the fallback runs, the failed step is not done: b waits.
    assert failed.state.step("a") is not None and failed.state.steps[0].status == "failed"
    assert failed.state.steps[1].status == "pending"
    when = failed.when(complete("fix", {"fixed": 1}))
    when.then_includes(
        StepRecovered(
            step_id="a", handler_step_id="fix", output=raw({"fixed": 1}), at_ms=when.at_ms
        ),
        StepScheduled(step_id="b", attempt=1, input=raw({"fixed": 1}), at_ms=when.at_ms),
    ).then_state(steps={"a": "recovered", "b": "scheduled"})


def test_a_failed_dependency_never_makes_its_dependent_ready() -> None:
    wf = workflow(task("a"), task("x"), task("b", "a"))
    given(start(wf)).when(fail("a")).then_lacks(StepScheduled, step_id="b").then_includes(
        RunFailed(
            error=ErrorInfo(message="boom"),
            failed_step_id="a",
            at_ms=2000,
        )
    ).then_state(steps={"b": "pending"}, status="failed")


# --- input resolution ---------------------------------------------------------------------


def test_a_root_gets_the_run_input_and_null_when_there_is_none() -> None:
    given().when(start(workflow(task("a")), {"in": [1, 2]})).then_includes(
        StepScheduled(step_id="a", attempt=1, input=raw({"in": [1, 2]}), at_ms=1000)
    )
    given().when(start(workflow(task("a")))).then_includes(
        StepScheduled(step_id="a", attempt=1, input=raw(None), at_ms=1000)
    )


def test_one_dependency_gives_its_output_as_is() -> None:
    when = given(start(workflow(task("a"), task("b", "a")), "run-input")).when(
        complete("a", [1, {"k": "v"}])
    )
    when.then_includes(
        StepScheduled(step_id="b", attempt=1, input=raw([1, {"k": "v"}]), at_ms=when.at_ms)
    ).then_lacks(StepScheduled, input=raw("run-input"))


def test_several_dependencies_give_an_object_keyed_by_step_id_in_depends_on_order() -> None:
    wf = workflow(task("a"), task("b"), task("c", "b", "a"))
    when = given(start(wf), complete("a", 1)).when(complete("b", {"two": 2}))
    scheduled = [e for e in when.events if isinstance(e, StepScheduled)]
    assert len(scheduled) == 1 and scheduled[0].step_id == "c"
    assert bytes(scheduled[0].input) == b'{"b":{"two":2},"a":1}'


# --- skip_if ------------------------------------------------------------------------------


def _skip_case(output: object, field: str, op: SkipOp, value: object) -> bool:
    """Whether b (skip_if on a's output) is skipped when a completes with `output`."""
    wf = workflow(task("a"), task("b", "a", skip_if=skip_if("a", field, op, value)))
    events = given(start(wf)).when(complete("a", output)).events
    skipped = any(isinstance(e, StepSkipped) and e.step_id == "b" for e in events)
    scheduled = any(isinstance(e, StepScheduled) and e.step_id == "b" for e in events)
    assert skipped != scheduled, "b is either skipped or scheduled, never both or neither"
    return skipped


@pytest.mark.parametrize(
    ("output", "op", "value", "skipped"),
    [
        # numbers compare as floats, int against float included
        ({"v": 3}, "==", 3.0, True),
        ({"v": 3.0}, "==", 3, True),
        ({"v": 3}, "!=", 3.0, False),
        ({"v": 3}, "<", 3.5, True),
        ({"v": 4}, "<", 3.5, False),
        ({"v": 3}, "<=", 3, True),
        ({"v": 2.5}, ">", 2, True),
        ({"v": 2}, ">", 2, False),
        ({"v": 2}, ">=", 2.0, True),
        ({"v": -1}, ">=", 0, False),
        # strings compare lexicographically
        ({"v": "apple"}, "<", "banana", True),
        ({"v": "banana"}, "<", "apple", False),
        ({"v": "b"}, ">", "abc", True),
        ({"v": "10"}, "<", "9", True),
        ({"v": "x"}, "==", "x", True),
        ({"v": "x"}, "!=", "x", False),
        # booleans: only == and !=
        ({"v": True}, "==", True, True),
        ({"v": True}, "!=", False, True),
        ({"v": True}, "==", False, False),
        ({"v": True}, ">", False, False),
        ({"v": False}, "<", True, False),
        ({"v": True}, ">=", True, False),
        # a type mismatch never skips, whatever the operator
        ({"v": "3"}, "==", 3, False),
        ({"v": 3}, "!=", "3", False),
        ({"v": 1}, "==", True, False),
        ({"v": True}, "==", 1, False),
        ({"v": None}, "!=", 0, False),
        ({"v": [1]}, "!=", 1, False),
        # null only == and !=
        ({"v": None}, "==", None, True),
        ({"v": None}, "<=", None, False),
    ],
)
def test_skip_if_comparison_rules(output: object, op: SkipOp, value: object, skipped: bool) -> None:
    assert _skip_case(output, "v", op, value) is skipped


@pytest.mark.parametrize(
    ("output", "field"),
    [
        ({"other": 1}, "v"),  # missing field
        (None, "v"),  # null output
        ([1, 2], "v"),  # not an object
        ("text", "v"),
        ({"v": {"w": 1}}, "v.x"),  # missing nested field
        ({"v": 1}, "v.w"),  # path through a number
    ],
)
def test_skip_if_a_missing_field_never_skips(output: object, field: str) -> None:
    assert _skip_case(output, field, "!=", 123) is False
    assert _skip_case(output, field, "==", None) is False


def test_skip_if_follows_a_dotted_path_into_objects_and_lists() -> None:
    assert _skip_case({"r": {"s": {"t": 5}}}, "r.s.t", "==", 5) is True
    assert _skip_case({"r": {"s": {"t": 5}}}, "r.s.t", "==", 6) is False
    assert _skip_case({"r": [{"t": 1}, {"t": 2}]}, "r.1.t", ">", 1) is True
    assert _skip_case({"r": [{"t": 1}]}, "r.1.t", ">", 0) is False


def test_a_skip_cascade_can_complete_the_run_in_one_decision() -> None:
    wf = workflow(
        task("a"),
        task("b", "a", skip_if=skip_if("a", "done", "==", True)),
        task("c", "a", "b", skip_if=skip_if("a", "done", "==", True)),
    )
    when = given(start(wf)).when(complete("a", {"done": True}))
    output = raw({"done": True})
    when.then(
        StepCompleted(step_id="a", attempt=1, output=output, at_ms=when.at_ms),
        StepSkipped(step_id="b", reason="skip_if a.done == true", at_ms=when.at_ms),
        StepSkipped(step_id="c", reason="skip_if a.done == true", at_ms=when.at_ms),
        RunCompleted(output=raw(None), at_ms=when.at_ms),
    ).then_lacks(StepScheduled).then_state(status="completed")
    not_done = given(start(wf)).when(complete("a", {"done": False}))
    not_done.then_lacks(StepSkipped).then_lacks(RunCompleted).then_includes(
        StepScheduled(step_id="b", attempt=1, input=raw({"done": False}), at_ms=not_done.at_ms)
    ).then_lacks(StepScheduled, step_id="c")


def test_a_skip_condition_on_a_skipped_step_does_not_skip() -> None:
    # b is skipped (output null), so c's condition on b's field is missing: c runs.
    wf = workflow(
        task("a"),
        task("b", "a", skip_if=skip_if("a", "x", "==", 1)),
        task("c", "b", skip_if=skip_if("b", "x", "==", None)),
    )
    when = given(start(wf)).when(complete("a", {"x": 1}))
    when.then_includes(
        StepSkipped(step_id="b", reason="skip_if a.x == 1", at_ms=when.at_ms),
        StepScheduled(step_id="c", attempt=1, input=raw(None), at_ms=when.at_ms),
    ).then_lacks(StepSkipped, step_id="c")


# --- concurrency.max_steps ----------------------------------------------------------------


def test_ready_steps_beyond_the_concurrency_limit_wait() -> None:
    wf = workflow(task("a"), task("b"), task("c"), max_concurrent_steps=2)
    given().when(start(wf)).then_includes(
        StepScheduled(step_id="a", attempt=1, input=raw(None), at_ms=1000),
        StepScheduled(step_id="b", attempt=1, input=raw(None), at_ms=1000),
    ).then_lacks(StepScheduled, step_id="c").then_state(steps={"c": "pending"})


def test_a_finished_step_frees_a_slot() -> None:
    wf = workflow(task("a"), task("b"), task("c"), task("d"), max_concurrent_steps=2)
    when = given(start(wf)).when(complete("b", 2))
    when.then(
        StepCompleted(step_id="b", attempt=1, output=raw(2), at_ms=when.at_ms),
        StepScheduled(step_id="c", attempt=1, input=raw(None), at_ms=when.at_ms),
    ).then_lacks(StepScheduled, step_id="d").then_state(steps={"d": "pending", "a": "scheduled"})


def test_a_step_waiting_for_a_retry_holds_its_slot() -> None:
    wf = workflow(task("a", retry=retry(2)), task("b"), max_concurrent_steps=1)
    when = given(start(wf)).when(fail("a"))
    when.then_lacks(StepScheduled, step_id="b").then_state(steps={"a": "retry_wait"})


def test_skipped_steps_do_not_take_slots() -> None:
    wf = workflow(
        task("a"),
        task("b", "a", skip_if=skip_if("a", "s", "==", 1)),
        task("c", "a"),
        max_concurrent_steps=1,
    )
    when = given(start(wf)).when(complete("a", {"s": 1}))
    when.then_includes(
        StepSkipped(step_id="b", reason="skip_if a.s == 1", at_ms=when.at_ms),
        StepScheduled(step_id="c", attempt=1, input=raw({"s": 1}), at_ms=when.at_ms),
    )


# --- run output ---------------------------------------------------------------------------


def test_the_run_output_is_the_terminal_steps_outputs_keyed_when_several() -> None:
    wf = workflow(task("a"), task("b", "a"), task("c", "a"))
    when = given(start(wf), complete("a", 0), complete("b", "B")).when(complete("c", "C"))
    when.then_includes(RunCompleted(output=raw({"b": "B", "c": "C"}), at_ms=when.at_ms))
    assert when.state.output is not None and bytes(when.state.output) == b'{"b":"B","c":"C"}'


def test_a_run_of_no_steps_completes_at_once() -> None:
    given().when(start(workflow())).then_includes(
        RunCompleted(output=raw({}), at_ms=1000)
    ).then_state(status="completed")
