"""Given/when/then for the `log` step type: a message recorded in history, the input passed on.

The `log` step type was added as the renovation's proof that a step type is one module in
`steps/` plus its formats, registry entry and tests, with nothing in `dagnats/`.
"""

from __future__ import annotations

import pytest

from kernel.effects import EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.events import LogRecorded, RunCompleted, StepCompleted, StepScheduled
from kernel.react import react, resume
from kernel.workflow import parse_workflow
from tests.kernel_dsl import complete, given, raw, start, step_of, task, workflow

NOTE = workflow(
    task("a"),
    step_of("note", "log", {"message": "a is done", "level": "warning"}, "a"),
    task("b", "note"),
)


def test_a_log_step_records_its_message_and_passes_its_input_on() -> None:
    when = given(start(NOTE)).when(complete("a", {"x": 1}))
    at = when.at_ms
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw({"x": 1}), at_ms=at),
        StepScheduled(step_id="note", attempt=1, input=raw({"x": 1}), at_ms=at),
        LogRecorded(step_id="note", attempt=1, level="warning", message="a is done", at_ms=at),
        StepCompleted(step_id="note", attempt=1, output=raw({"x": 1}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"x": 1}), at_ms=at),
    )
    when.then_state(steps={"a": "completed", "note": "completed", "b": "scheduled"})


def test_a_log_step_needs_no_worker_and_nothing_to_resume() -> None:
    when = given(start(NOTE)).when(complete("a", {"x": 1}))
    tasks = [e for e in when.effects if isinstance(e, EnqueueTask)]
    assert [t.step_id for t in tasks] == ["b"], "only the task after the log is enqueued"
    state = when.state
    for event in when.result if isinstance(when.result, tuple) else ():
        if isinstance(event, LogRecorded):
            assert react(state, event) == ()
    assert [e.step_id for e in resume(state) if isinstance(e, EnqueueTask)] == ["b"]


def test_a_run_of_log_steps_alone_completes_at_start() -> None:
    only = workflow(step_of("hello", "log", {"message": "hello"}))
    when = given().when(start(only, 7))
    when.then_includes(
        LogRecorded(step_id="hello", attempt=1, level="info", message="hello", at_ms=when.at_ms),
        RunCompleted(output=raw(7), at_ms=when.at_ms),  # one terminal step: its output
    )


@pytest.mark.parametrize(
    ("config", "path", "fragment"),
    [
        ({}, "steps[0].config.message", "is required"),
        ({"message": ""}, "steps[0].config.message", "is required"),
        ({"message": "x" * 8_193}, "steps[0].config.message", "8192 bytes"),
        ({"message": "hi", "level": "debug"}, "steps[0].config.level", "info, warning, error"),
        ({"message": "hi", "colour": "red"}, "steps[0].config.colour", "unknown field"),
    ],
)
def test_a_bad_log_config_is_refused_naming_the_field(
    config: dict[str, object], path: str, fragment: str
) -> None:
    document = {"name": "w", "steps": [{"id": "s", "type": "log", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as raised:
        parse_workflow(document)
    problems = [(p.path, p.rule) for p in raised.value.problems]
    assert any(p == path and fragment in rule for p, rule in problems), problems
