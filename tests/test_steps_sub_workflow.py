"""Given/when/then for the `sub_workflow` step type and the child side of sub-workflows."""

from __future__ import annotations

import re

import pytest
from hypothesis import given as hypothesis_given
from hypothesis import strategies as st

from kernel import limits
from kernel.commands import ChildStatus, RecordChild, StartRun
from kernel.effects import CancelChild, ReportToParent, StartChild
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
)
from kernel.react import resume
from kernel.run_links import repeat_start
from kernel.workflow import parse_workflow
from steps.sub_workflow import child_run_id
from tests.kernel_dsl import (
    RUN_ID,
    UNSTAMPED,
    cancel,
    complete,
    fail,
    fire_retry,
    fire_step_timeout,
    given,
    raw,
    retry,
    start,
    step_of,
    task,
    workflow,
)

PARENT = workflow(
    task("a"), step_of("child", "sub_workflow", {"workflow": "inner"}, "a"), task("b", "child")
)
DETACHED = workflow(step_of("child", "sub_workflow", {"workflow": "inner", "detach": True}))
INNER = workflow(task("x"), name="inner")


def report(
    status: ChildStatus,
    output: object = None,
    *,
    attempt: int = 1,
    error: str = "",
    retryable: bool = True,
    step_id: str = "child",
) -> RecordChild:
    return RecordChild(
        run_id=RUN_ID,
        at_ms=UNSTAMPED,
        step_id=step_id,
        child_run_id=child_run_id(RUN_ID, step_id, attempt),
        status=status,
        output=raw(output),
        error=error,
        retryable=retryable,
    )


def test_a_sub_workflow_step_records_the_child_and_starts_it_with_its_input() -> None:
    when = given(start(PARENT)).when(complete("a", {"n": 1}))
    at = when.at_ms
    when.then_includes(
        ChildStarted(
            step_id="child", attempt=1, child_run_id="r1-child-1", workflow="inner", at_ms=at
        )
    )
    starts = [e for e in when.effects if isinstance(e, StartChild)]
    assert starts == [
        StartChild(
            run_id="r1",
            step_id="child",
            child_run_id="r1-child-1",
            workflow="inner",
            input=raw({"n": 1}),
            depth=1,
            detached=False,
            at_ms=at,
            seed=starts[0].seed,
        )
    ]


def test_the_step_completes_with_the_child_output_and_the_run_goes_on() -> None:
    when = given(start(PARENT), complete("a")).when(report("completed", {"y": 2}))
    at = when.at_ms
    when.then(
        ChildCompleted(step_id="child", child_run_id="r1-child-1", output=raw({"y": 2}), at_ms=at),
        StepCompleted(step_id="child", attempt=1, output=raw({"y": 2}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"y": 2}), at_ms=at),
    )


def test_a_failed_child_fails_the_step_and_a_retry_starts_a_new_child() -> None:
    retried = workflow(
        step_of("child", "sub_workflow", {"workflow": "inner"}),
        default_retry=retry(2),
    )
    when = given(start(retried)).when(report("failed", error="x broke"))
    failed = when.events[0]
    assert isinstance(failed, ChildFailed) and failed.error.message == "x broke"
    when.then_includes(
        StepFailed(
            step_id="child", attempt=1, error=failed.error, will_retry=True, at_ms=when.at_ms
        )
    )
    again = given(start(retried), report("failed")).when(fire_retry("child", 2))
    again.then_includes(
        ChildStarted(
            step_id="child",
            attempt=2,
            child_run_id="r1-child-2",
            workflow="inner",
            at_ms=again.at_ms,
        )
    )
    # the first child's late report is stale: nothing happens
    given(start(retried), report("failed"), fire_retry("child", 2)).when(
        report("completed", attempt=1)
    ).then_nothing()


def test_a_cancelled_child_or_a_missing_workflow_fails_the_step_for_good() -> None:
    retried = workflow(step_of("c", "sub_workflow", {"workflow": "w"}), default_retry=retry(3))
    cancelled = given(start(retried)).when(report("cancelled", step_id="c"))
    failure = [e for e in cancelled.events if isinstance(e, StepFailed)]
    assert [(f.will_retry, f.error.kind) for f in failure] == [(False, "cancelled")]
    assert cancelled.state.status == "failed"
    missing = given(start(retried)).when(
        report("failed", step_id="c", error="workflow 'w' is not registered", retryable=False)
    )
    failure = [e for e in missing.events if isinstance(e, StepFailed)]
    assert [(f.will_retry, f.error.kind) for f in failure] == [(False, "non_retryable")]


def test_a_detached_child_completes_the_step_once_started_and_its_end_is_ignored() -> None:
    when = given(start(DETACHED)).when(report("started"))
    output = raw({"child_run_id": "r1-child-1"})
    when.then_includes(StepCompleted(step_id="child", attempt=1, output=output, at_ms=when.at_ms))
    assert when.state.status == "completed"
    assert [e.detached for e in given(start(DETACHED)).events if isinstance(e, ChildStarted)] == [
        True
    ]
    given(start(DETACHED)).when(report("completed")).then_nothing()


def test_cancelling_the_parent_cancels_attached_children_but_not_detached_ones() -> None:
    when = given(start(PARENT), complete("a")).when(cancel("stop"))
    assert [(e.run_id, e.child_run_id) for e in when.effects if isinstance(e, CancelChild)] == [
        ("r1", "r1-child-1")
    ]
    detached = given(start(DETACHED)).when(cancel("stop"))
    assert not [e for e in detached.effects if isinstance(e, CancelChild)]


def test_a_timed_out_attempt_cancels_its_child() -> None:
    timed = workflow(
        step_of("child", "sub_workflow", {"workflow": "inner"}, timeout_ms=5_000),
        default_retry=retry(2),
    )
    when = given(start(timed)).when(fire_step_timeout("child", 1))
    cancels = [e.child_run_id for e in when.effects if isinstance(e, CancelChild)]
    assert cancels == ["r1-child-1"]


def test_depth_is_bounded_with_an_error_naming_the_limit() -> None:
    deep = StartRun(
        run_id=RUN_ID,
        at_ms=UNSTAMPED,
        workflow=DETACHED,
        parent_run_id="p",
        parent_step_id="s",
        depth=limits.sub_workflow_depth_max,
    )
    when = given().when(deep)
    failures = [e for e in when.events if isinstance(e, StepFailed)]
    assert len(failures) == 1 and not failures[0].will_retry
    assert "sub_workflow_depth_max" in failures[0].error.message
    when.then_lacks(ChildStarted)


def child_start(*, detached: bool = False) -> StartRun:
    return StartRun(
        run_id="p-s-1",
        at_ms=UNSTAMPED,
        workflow=INNER,
        input=raw({"n": 1}),
        parent_run_id="p",
        parent_step_id="s",
        depth=1,
        detached=detached,
    )


def test_an_attached_child_reports_its_end_to_its_parent() -> None:
    when = given(child_start()).when(complete("x", {"done": 1}, run_id="p-s-1"))
    reports = [e for e in when.effects if isinstance(e, ReportToParent)]
    assert [(r.parent_run_id, r.parent_step_id, r.status, bytes(r.output)) for r in reports] == [
        ("p", "s", "completed", b'{"done":1}')
    ]
    failed = given(child_start()).when(fail("x", kind="non_retryable", run_id="p-s-1"))
    assert [(r.status, r.error) for r in failed.effects if isinstance(r, ReportToParent)] == [
        ("failed", "boom")
    ]
    assert given().when(child_start()).state.depth == 1
    assert not [e for e in given().when(child_start()).effects if isinstance(e, ReportToParent)]


def test_a_detached_child_reports_its_start_and_not_its_end() -> None:
    started = given().when(child_start(detached=True))
    assert [e.status for e in started.effects if isinstance(e, ReportToParent)] == ["started"]
    ended = given(child_start(detached=True)).when(complete("x", run_id="p-s-1"))
    assert not [e for e in ended.effects if isinstance(e, ReportToParent)]


def test_a_repeated_start_of_an_ended_child_reports_again_and_of_a_running_one_not() -> None:
    done = given(child_start(), complete("x", 5, run_id="p-s-1")).state
    again = repeat_start(done, child_start())
    assert [(e.status, bytes(e.output)) for e in again if isinstance(e, ReportToParent)] == [
        ("completed", b"5")
    ]
    running = given(child_start()).state
    assert repeat_start(running, child_start()) == ()
    stranger = StartRun(run_id="p-s-1", at_ms=1, workflow=INNER, parent_run_id="q")
    assert repeat_start(done, stranger) == ()


def test_resume_starts_a_live_attached_child_again_and_nothing_once_it_reported() -> None:
    waiting = given(start(PARENT), complete("a")).state
    assert [e.child_run_id for e in resume(waiting) if isinstance(e, StartChild)] == ["r1-child-1"]
    done = given(start(PARENT), complete("a"), report("completed")).state
    assert not [e for e in resume(done) if isinstance(e, StartChild)]


@pytest.mark.parametrize(
    ("config", "path", "rule"),
    [
        ({}, "steps[0].config.workflow", "is required"),
        ({"workflow": ""}, "steps[0].config.workflow", "is required"),
        ({"workflow": "w", "detach": "yes"}, "steps[0].config.detach", "must be true"),
        ({"workflow": "w", "wait": True}, "steps[0].config.wait", "unknown field"),
    ],
)
def test_bad_sub_workflow_configs_are_named_by_path(
    config: dict[str, object], path: str, rule: str
) -> None:
    document = {"name": "w", "steps": [{"id": "s", "type": "sub_workflow", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert any(p.path == path and rule in p.rule for p in caught.value.problems), (
        caught.value.problems
    )


SAFE = re.compile(r"[A-Za-z0-9_-]+")


@hypothesis_given(
    run_id=st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True),
    step_id=st.from_regex(r"[A-Za-z0-9_.-]{1,128}", fullmatch=True),
    attempt=st.integers(min_value=1, max_value=limits.attempts_max),
)
def test_child_run_ids_are_safe_bounded_and_distinct_per_attempt(
    run_id: str, step_id: str, attempt: int
) -> None:
    child = child_run_id(run_id, step_id, attempt)
    assert SAFE.fullmatch(child) and len(child) <= limits.run_id_length_max
    assert child == child_run_id(run_id, step_id, attempt)
    other = attempt + 1 if attempt < limits.attempts_max else attempt - 1
    assert child != child_run_id(run_id, step_id, other)


def test_child_run_ids_of_different_parents_and_steps_never_collide() -> None:
    assert child_run_id("a-b", "c", 1) != child_run_id("a", "b-c", 1)
    assert child_run_id("p", "x.y", 1) != child_run_id("p", "x_y", 1)
    assert child_run_id("r1", "child", 1) == "r1-child-1"
