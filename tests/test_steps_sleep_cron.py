"""Given/when/then for `sleep` steps with a `cron` expression (steps.cron does the dates)."""

from __future__ import annotations

import pytest

from kernel import limits
from kernel.effects import ArmTimer
from kernel.errors import WorkflowInvalidError
from kernel.events import StepCompleted, StepFailed, TimerFired, TimerStarted
from kernel.workflow import parse_workflow
from steps.timestamps import parse_rfc3339_ms
from tests.kernel_dsl import complete, fire_step_timer, given, raw, start, step_of, task, workflow


def ms(text: str) -> int:
    value = parse_rfc3339_ms(text)
    assert value is not None
    return value


def test_a_cron_sleep_wakes_at_the_next_fire_time_after_the_step_starts() -> None:
    wf = workflow(task("a"), step_of("nap", "sleep", {"cron": "30 2 * * 1-5"}, "a"))
    at = ms("2026-11-27T03:00:00Z")  # a Friday, after 02:30
    when = given(start(wf, at_ms=at - 5_000)).when(complete("a", {"k": 1}, at_ms=at))
    due = ms("2026-11-30T02:30:00Z")  # the next weekday is Monday
    when.then_includes(TimerStarted(step_id="nap", timer_id="step.nap.1", fire_at_ms=due, at_ms=at))
    armed = [e for e in when.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms) for t in armed] == [("step.nap.1", due)]


def test_a_cron_sleep_completes_with_its_input_when_the_timer_fires() -> None:
    wf = workflow(task("a"), step_of("nap", "sleep", {"cron": "*/5 * * * *"}, "a"))
    when = given(start(wf), complete("a", {"k": 1})).when(fire_step_timer("nap"))
    at = when.at_ms
    when.then_includes(
        TimerFired(step_id="nap", timer_id="step.nap.1", at_ms=at),
        StepCompleted(step_id="nap", attempt=1, output=raw({"k": 1}), at_ms=at),
    )


def test_a_cron_sleep_with_no_fire_time_within_the_horizon_fails_for_good() -> None:
    wf = workflow(task("a"), step_of("nap", "sleep", {"cron": "0 12 29 2 *"}, "a"))
    at = ms("2028-03-01T00:00:00Z")  # the next 29 February is in 2032
    when = given(start(wf, at_ms=at - 1)).when(complete("a", at_ms=at))
    failures = [e for e in when.events if isinstance(e, StepFailed)]
    assert len(failures) == 1 and not failures[0].will_retry
    message = failures[0].error.message
    assert "'0 12 29 2 *'" in message and str(limits.sleep_ms_max) in message, message
    when.then_state(status="failed")


@pytest.mark.parametrize(
    ("expression", "rule"),
    [
        ("* * * *", "has 4 fields"),
        ("61 * * * *", "minute field '61'"),
        ("0 0 31 2 *", "never fires"),
        ("@hourly", "has 1 fields"),
        (5, "must be a cron expression"),
    ],
)
def test_a_bad_cron_is_named_by_path_value_and_rule(expression: object, rule: str) -> None:
    step = {"id": "nap", "type": "sleep", "config": {"cron": expression}}
    document = {"name": "w", "steps": [{"id": "a", "task": "a"}, step]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    [problem] = caught.value.problems
    assert problem.path == "steps[1].config.cron", problem
    assert rule in problem.rule, problem
    assert repr(expression) in problem.value or str(expression) in problem.value, problem


def test_exactly_one_of_duration_cron_until_input_path() -> None:
    config = {"cron": "* * * * *", "until_input_path": "due"}
    document = {"name": "w", "steps": [{"id": "s", "type": "sleep", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    [problem] = caught.value.problems
    assert problem.path == "steps[0].config"
    assert "exactly one of duration, cron, until_input_path" in problem.rule
    good = {"name": "w", "steps": [{"id": "s", "type": "sleep", "config": {"cron": "0 * * * *"}}]}
    assert parse_workflow(good).steps[0].type == "sleep"
