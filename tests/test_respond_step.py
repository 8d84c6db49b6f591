"""Given/when/then for the `respond` step type: the HTTP answer recorded, the run goes on."""

from __future__ import annotations

import pytest

from kernel.effects import EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.events import ResponseRecorded, StepCompleted, StepFailed, StepScheduled
from kernel.workflow import parse_workflow
from steps.respond import first_response, respond_warnings
from tests.kernel_dsl import complete, given, raw, start, step_of, task, workflow

ANSWER = workflow(
    task("a"),
    step_of("answer", "respond", {"status": 201, "headers": {"X-A": "1"}, "body_from": "out"}, "a"),
    task("b", "answer"),
)


def test_respond_records_the_answer_and_the_run_goes_on() -> None:
    when = given(start(ANSWER)).when(complete("a", {"out": {"k": 1}}))
    at = when.at_ms
    when.then(
        StepCompleted(step_id="a", attempt=1, output=raw({"out": {"k": 1}}), at_ms=at),
        StepScheduled(step_id="answer", attempt=1, input=raw({"out": {"k": 1}}), at_ms=at),
        ResponseRecorded(step_id="answer", attempt=1, status=201, headers=(("X-A", "1"),),
                         body=raw({"k": 1}), at_ms=at),
        StepCompleted(step_id="answer", attempt=1, output=raw({"out": {"k": 1}}), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw({"out": {"k": 1}}), at_ms=at),
    )  # fmt: skip
    when.then_state(steps={"a": "completed", "answer": "completed", "b": "scheduled"})
    assert [e.step_id for e in when.effects if isinstance(e, EnqueueTask)] == ["b"]
    recorded = first_response(tuple(when.events))
    assert recorded is not None and recorded.status == 201


def test_a_missing_body_path_fails_the_step_without_retry() -> None:
    when = given(start(ANSWER)).when(complete("a", {"other": 1}))
    failed = [event for event in when.events if isinstance(event, StepFailed)]
    assert [event.step_id for event in failed] == ["answer"]
    assert "body_from 'out'" in failed[0].error.message
    assert not any(isinstance(event, ResponseRecorded) for event in when.events)


def test_without_body_from_the_whole_input_is_the_body() -> None:
    flow = workflow(task("a"), step_of("answer", "respond", {}, "a"))
    when = given(start(flow)).when(complete("a", [1, 2]))
    recorded = first_response(tuple(when.events))
    assert recorded is not None and recorded.status == 200 and bytes(recorded.body) == b"[1,2]"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"status": 99}, "status"),
        ({"status": True}, "status"),
        ({"headers": {"Bad Name": "x"}}, "headers.Bad Name"),
        ({"headers": {"X": "a\r\nb"}}, "headers.X"),
        ({"body_from": "a..b"}, "body_from"),
        ({"extra": 1}, "extra"),
    ],
)
def test_config_problems_name_their_field(config: dict[str, object], field: str) -> None:
    document = {"name": "w", "steps": [{"id": "r", "type": "respond", "config": config}]}
    with pytest.raises(WorkflowInvalidError) as raised:
        parse_workflow(document)
    assert f"steps[0].config.{field}" in [problem.path for problem in raised.value.problems]


def _http_workflow(*steps: dict[str, object]) -> object:
    return parse_workflow({
        "name": "w", "steps": list(steps),
        "triggers": [{"id": "h", "http": {"path": "/h"}}],
    })  # fmt: skip


def test_an_http_trigger_without_respond_or_with_two_on_one_path_warns() -> None:
    from kernel.workflow import WorkflowDef

    none = _http_workflow({"id": "a", "task": "t"})
    two = _http_workflow(
        {"id": "r1", "type": "respond"},
        {"id": "a", "task": "t", "depends_on": ["r1"]},
        {"id": "r2", "type": "respond", "depends_on": ["a"]},
    )
    branches = _http_workflow(
        {"id": "a", "task": "t"},
        {"id": "r1", "type": "respond", "depends_on": ["a"]},
        {"id": "r2", "type": "respond", "depends_on": ["a"]},
    )
    assert isinstance(none, WorkflowDef) and isinstance(two, WorkflowDef)
    assert isinstance(branches, WorkflowDef)
    assert "no respond step" in respond_warnings(none)[0]
    assert "'r1' and 'r2' are on one path" in respond_warnings(two)[0]
    assert respond_warnings(branches) == ()  # either branch answers: one per path
