"""Given/when/then for the `planner` step type: a handler's plan runs in the same run."""

from __future__ import annotations

import msgspec
import pytest

from kernel import limits
from kernel.commands import AnyCommand
from kernel.effects import CancelTimer, EnqueueTask
from kernel.events import (
    PlannerMaterialized,
    PlannerRejected,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepRecovered,
    StepScheduled,
    StepSkipped,
)
from kernel.react import resume
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from steps.planner import PlannerEnvelope
from tests.kernel_dsl import (
    complete,
    fail,
    fire_retry,
    fire_step_timeout,
    given,
    raw,
    retry,
    start,
    task,
    workflow,
)


def planner(
    step_id: str = "p",
    *depends_on: str,
    config: object = None,
    retry_policy: RetryPolicy | None = None,
    timeout_ms: int | None = None,
    on_failure: str | None = None,
) -> StepDef:
    return StepDef(
        id=step_id,
        type="planner",
        task="plan",
        depends_on=depends_on,
        config=raw(config if config is not None else {}),
        retry=retry_policy,
        timeout_ms=timeout_ms,
        on_failure=on_failure,
    )


WF = workflow(task("a"), planner("p", "a", retry_policy=retry(3)), task("b", "p"))
PLAN = {
    "steps": [
        {"id": "x", "task": "t.x"},
        {"id": "y", "task": "t.y", "depends_on": ["x"]},
        {"id": "z", "task": "t.z"},
    ]
}


def planned(wf: WorkflowDef = WF, plan: object = PLAN) -> tuple[AnyCommand, ...]:
    return (start(wf), complete("a", {"goal": "g"}), complete("p", plan))


def test_a_valid_plan_is_recorded_namespaced_and_its_roots_start_with_the_planner_input() -> None:
    when = given(start(WF), complete("a", {"goal": "g"})).when(complete("p", PLAN))
    materialized = [e for e in when.events if isinstance(e, PlannerMaterialized)]
    assert len(materialized) == 1
    steps = materialized[0].steps
    assert [(s.id, s.task, s.depends_on) for s in steps] == [
        ("p.x", "t.x", ()),
        ("p.y", "t.y", ("p.x",)),
        ("p.z", "t.z", ()),
    ]
    when.then_includes(
        StepScheduled(step_id="p.x", attempt=1, input=raw({"goal": "g"}), at_ms=when.at_ms),
        StepScheduled(step_id="p.z", attempt=1, input=raw({"goal": "g"}), at_ms=when.at_ms),
    )
    when.then_lacks(StepScheduled, step_id="p.y").then_lacks(StepScheduled, step_id="b")
    when.then_lacks(StepCompleted, step_id="p")
    tasks = [(e.step_id, e.msg_id) for e in when.effects if isinstance(e, EnqueueTask)]
    assert tasks == [("p.x", "r1:p.x:1~00000000"), ("p.z", "r1:p.z:1~00000000")]


def test_downstream_waits_for_the_whole_plan_then_gets_its_terminal_outputs() -> None:
    partial = given(*planned(), complete("p.x", 1)).when(complete("p.z", 3))
    partial.then_lacks(StepScheduled, step_id="b").then_state(steps={"p": "scheduled"})
    done = given(*planned(), complete("p.x", 1), complete("p.z", 3)).when(complete("p.y", 2))
    at = done.at_ms
    done.then(
        StepCompleted(step_id="p.y", attempt=1, output=raw(2), at_ms=at),
        StepCompleted(step_id="p", attempt=1, output=raw({"y": 2, "z": 3}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"y": 2, "z": 3}), at_ms=at),
    )
    finished = given(*planned(), complete("p.x", 1), complete("p.z", 3), complete("p.y", 2))
    end = finished.when(complete("b", "B"))
    end.then_includes(RunCompleted(output=raw("B"), at_ms=end.at_ms))  # plan steps not in it


def test_an_empty_plan_completes_the_planner_with_an_empty_object() -> None:
    when = given(start(WF), complete("a", {})).when(complete("p", {"steps": []}))
    at = when.at_ms
    when.then(
        PlannerMaterialized(step_id="p", attempt=1, steps=(), at_ms=at),
        StepCompleted(step_id="p", attempt=1, output=raw({}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({}), at_ms=at),
    )


INVALID_PLANS = [
    ("not a plan", ["$: 'not a plan' — must be {\"steps\": [...]}"]),
    ({"steps": [{"id": "x", "task": "t.x"}], "notes": 1}, ["notes: 1 — unknown field"]),
    ({}, ["steps: (missing) — is required"]),
    (
        {"steps": [{"id": "x", "task": "t.x", "depends_on": ["nope"]}]},
        ["steps[0].depends_on[0]: 'nope' — names no step of this workflow (known: x)"],
    ),
    (
        {
            "steps": [
                {"id": "x", "task": "t.x", "depends_on": ["y"]},
                {"id": "y", "task": "t.y", "depends_on": ["x"]},
            ]
        },
        ["depends_on forms a cycle"],
    ),
    (
        {"steps": [{"id": "x", "type": "sleep", "config": {"duration": "1s"}}]},
        ["steps[0].type: 'sleep' — is not allowed in this plan (allowed: task)"],
    ),
    (
        {"steps": [{"id": "x", "task": "rm.rf"}]},
        ["steps[0].task: 'rm.rf' — is not allowed in this plan (allowed: t.x, t.y, t.z)"],
    ),
    (
        {"steps": [{"id": f"s{i}", "task": "t.x"} for i in range(4)]},
        ["steps: [... 4 steps] — holds 4 steps; this planner's max_steps is 3"],
    ),
    (
        {
            "steps": [
                {"id": "x.y", "task": "t.x"},
                {"id": "q", "task": "t.x"},
                {"id": "q", "task": "t.y"},
            ]
        },
        ["steps[0].id: 'x.y' — must use only letters", "steps[2].id: 'q' — duplicates"],
    ),
    (
        {"steps": [{"id": "x"}]},
        ["steps[0].task: (missing) — is required for a step of type 'task'"],
    ),
]


@pytest.mark.parametrize(("plan", "problems"), INVALID_PLANS)
def test_an_invalid_plan_fails_the_attempt_listing_every_problem(
    plan: object, problems: list[str]
) -> None:
    config = {"max_steps": 3, "allowed_tasks": ["t.x", "t.y", "t.z"]}
    wf = workflow(task("a"), planner("p", "a", config=config, retry_policy=retry(2)))
    when = given(start(wf), complete("a", {})).when(complete("p", plan))
    rejected = [e for e in when.events if isinstance(e, PlannerRejected)]
    assert len(rejected) == 1, when.events
    for expected in problems:
        assert any(expected in found for found in rejected[0].problems), rejected[0].problems
    assert len(rejected[0].problems) == len(problems), rejected[0].problems
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert [(e.step_id, e.will_retry) for e in failed] == [("p", True)]
    assert all(problem in failed[0].error.message for problem in rejected[0].problems)
    when.then_lacks(PlannerMaterialized)


def test_the_next_attempt_sees_the_previous_attempts_problems() -> None:
    bad = {"steps": [{"id": "x", "task": "t", "depends_on": ["nope"]}]}
    retried = given(start(WF), complete("a", {}), complete("p", bad)).when(fire_retry("p", 2))
    tasks = [e for e in retried.effects if isinstance(e, EnqueueTask)]
    assert len(tasks) == 1 and tasks[0].attempt == 2
    envelope = msgspec.json.decode(bytes(tasks[0].envelope), type=PlannerEnvelope)
    assert len(envelope.previous_errors) == 1
    assert "steps[0].depends_on[0]: 'nope'" in envelope.previous_errors[0]
    first = given(start(WF)).when(complete("a", {}))
    assert [bytes(e.envelope) for e in first.effects if isinstance(e, EnqueueTask)] == [b"null"]
    fixed = given(start(WF), complete("a", {}), complete("p", bad), fire_retry("p", 2)).when(
        complete("p", PLAN, attempt=2)
    )
    fixed.then_includes(StepScheduled(step_id="p.x", attempt=1, input=raw({}), at_ms=fixed.at_ms))


def test_an_invalid_plan_on_the_last_attempt_fails_the_run() -> None:
    wf = workflow(planner("p"))
    when = given(start(wf)).when(complete("p", {"steps": "x"}))
    assert any(isinstance(e, RunFailed) and e.failed_step_id == "p" for e in when.events)


def test_a_repeated_plan_result_decides_nothing() -> None:
    given(*planned()).when(complete("p", PLAN)).then_nothing()


NESTED = workflow(
    planner("p", config={"allowed_types": ["task", "planner"], "max_depth": 2}),
    task("after", "p"),
)
INNER_PLAN = {
    "steps": [
        {"id": "q", "type": "planner", "task": "plan.inner"},
        {"id": "w", "task": "t.w", "depends_on": ["q"]},
    ]
}


def test_a_nested_planner_runs_its_plan_and_every_level_waits_for_the_one_below() -> None:
    inner = given(start(NESTED), complete("p", INNER_PLAN)).when(
        complete("p.q", {"steps": [{"id": "leaf", "task": "t.leaf"}]})
    )
    inner.then_includes(
        StepScheduled(step_id="p.q.leaf", attempt=1, input=raw(None), at_ms=inner.at_ms)
    )
    done = given(
        start(NESTED),
        complete("p", INNER_PLAN),
        complete("p.q", {"steps": [{"id": "leaf", "task": "t.leaf"}]}),
    ).when(complete("p.q.leaf", "L"))
    at = done.at_ms
    done.then(
        StepCompleted(step_id="p.q.leaf", attempt=1, output=raw("L"), at_ms=at),
        StepCompleted(step_id="p.q", attempt=1, output=raw({"leaf": "L"}), at_ms=at),
        StepScheduled(step_id="p.w", attempt=1, input=raw({"leaf": "L"}), at_ms=at),
    )


def test_a_nested_planner_deeper_than_max_depth_is_refused() -> None:
    shallow = workflow(planner("p", config={"allowed_types": ["task", "planner"]}))
    when = given(start(shallow)).when(complete("p", INNER_PLAN))
    rejected = [e for e in when.events if isinstance(e, PlannerRejected)]
    assert rejected and "max_depth" in rejected[0].problems[0], rejected
    deep = given(start(NESTED), complete("p", INNER_PLAN)).when(complete("p.q", INNER_PLAN))
    rejected = [e for e in deep.events if isinstance(e, PlannerRejected)]
    assert rejected and "steps[0].type: 'planner'" in rejected[0].problems[0], rejected


def test_the_per_run_total_of_dynamic_steps_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "dynamic_steps_per_run_max", 4)
    when = given(*planned()[:2]).when(
        complete("p", {"steps": [{"id": f"s{i}", "task": "t"} for i in range(5)]})
    )
    rejected = [e for e in when.events if isinstance(e, PlannerRejected)]
    assert rejected and "dynamic_steps_per_run_max" in rejected[0].problems[0]


def test_a_plan_step_failing_for_good_fails_the_planner_and_skips_the_rest_of_the_plan() -> None:
    when = given(*planned()).when(fail("p.x", "broke", kind="non_retryable"))
    at = when.at_ms
    when.then_includes(StepSkipped(step_id="p.y", reason="step 'p.x' of its plan failed", at_ms=at))
    failed = [e for e in when.events if isinstance(e, StepFailed) and e.step_id == "p"]
    assert len(failed) == 1 and not failed[0].will_retry
    assert failed[0].error.message == "step 'x' of the plan failed: broke"
    assert any(isinstance(e, RunFailed) and e.failed_step_id == "p" for e in when.events)


def test_the_planners_on_failure_recovers_a_failed_plan() -> None:
    wf = workflow(planner("p", on_failure="h"), task("h"), task("b", "p"))
    failing = given(start(wf), complete("p", PLAN)).when(fail("p.z", "no", kind="non_retryable"))
    failing.then_includes(
        StepScheduled(
            step_id="h",
            attempt=1,
            input=raw(
                {
                    "failed_step": "p",
                    "error": {
                        "message": "step 'z' of the plan failed: no",
                        "kind": "non_retryable",
                    },
                }
            ),
            at_ms=failing.at_ms,
        )
    )
    recovered = given(
        start(wf), complete("p", PLAN), fail("p.z", "no", kind="non_retryable"), complete("p.x", 1)
    ).when(complete("h", "fallback"))
    recovered.then_includes(
        StepRecovered(
            step_id="p", handler_step_id="h", output=raw("fallback"), at_ms=recovered.at_ms
        )
    )
    # p.y was skipped, so the run finishes once the handler's result flowed on.
    end = given(
        start(wf),
        complete("p", PLAN),
        fail("p.z", "no", kind="non_retryable"),
        complete("p.x", 1),
        complete("h", "fallback"),
    ).when(complete("b", "B"))
    end.then_includes(RunCompleted(output=raw("B"), at_ms=end.at_ms))


def test_the_planner_timeout_bounds_planning_not_the_plan() -> None:
    wf = workflow(planner("p", timeout_ms=5_000))
    when = given(start(wf)).when(complete("p", PLAN))
    cancels = [e.timer_id for e in when.effects if isinstance(e, CancelTimer)]
    assert cancels == ["step_timeout.p.1"]
    given(start(wf), complete("p", PLAN)).when(fire_step_timeout("p", 1)).then_nothing()


def test_resume_issues_the_planners_task_until_its_plan_runs_then_the_plans_tasks() -> None:
    waiting = given(start(WF), complete("a", {})).state
    assert [e.step_id for e in resume(waiting) if isinstance(e, EnqueueTask)] == ["p"]
    running = given(*planned()).state
    resumed = sorted(e.step_id for e in resume(running) if isinstance(e, EnqueueTask))
    assert resumed == ["p.x", "p.z"]


def test_plan_steps_keep_their_retry_skip_if_and_handlers_namespaced() -> None:
    plan = {
        "steps": [
            {"id": "x", "task": "t.x", "retry": {"max_attempts": 2}, "on_failure": "h"},
            {"id": "h", "task": "t.h"},
            {"id": "y", "task": "t.y", "depends_on": ["x"],
             "skip_if": {"step_id": "x", "field": "skip", "op": "==", "value": True}},
        ]
    }  # fmt: skip
    when = given(start(WF), complete("a", {})).when(complete("p", plan))
    (materialized,) = [e for e in when.events if isinstance(e, PlannerMaterialized)]
    x, _handler, y = materialized.steps
    assert (x.on_failure, y.skip_if and y.skip_if.step_id) == ("p.h", "p.x")
    skipped = given(start(WF), complete("a", {}), complete("p", plan)).when(
        complete("p.x", {"skip": True})
    )
    at = skipped.at_ms
    skipped.then_includes(StepCompleted(step_id="p", attempt=1, output=raw({"y": None}), at_ms=at))
    assert msgspec.json.decode(bytes(skipped.state.steps[-1].output)) is None
