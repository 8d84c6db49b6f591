"""Parsing valid workflow definitions: durations, aliases, defaults, round trips, seed files.

Also the properties: `parse_workflow` raises nothing but `WorkflowInvalidError` on any input,
and every valid definition survives `workflow_to_document` and back unchanged.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import limits
from kernel.errors import Problem, WorkflowInvalidError
from kernel.workflow import (
    EMPTY_OBJECT,
    RetryPolicy,
    SkipIf,
    StepDef,
    WorkflowDef,
    parse_workflow,
    validate_workflow,
    workflow_to_document,
)
from kernel.workflow.durations import format_duration, parse_duration

SEED_RETRY_ERRORS = (
    b'{"$schema":"../../docs/workflow-schema.json","name":"retry-errors","version":"1.0",'
    b'"steps":[{"id":"fetch","task":"fetch","type":"normal","depends_on":[],"retry":'
    b'{"max_attempts":3,"strategy":"exponential","initial_delay":1000000000,'
    b'"max_delay":10000000000,"multiplier":2.0},"on_failure":"report-error"},'
    b'{"id":"process","task":"process","type":"normal","depends_on":["fetch"]},'
    b'{"id":"report-error","task":"report-error","type":"normal","depends_on":[]}]}'
)

DURATIONS = [
    ("500ms", 500),
    ("30s", 30_000),
    ("1m30s", 90_000),
    ("2h", 7_200_000),
    ("1h2m3.5s", 3_723_500),
    ("1.5h", 5_400_000),
    (".5s", 500),
    ("+5s", 5_000),
    ("0", 0),
    ("0s", 0),
    ("2500us", 2),
    ("250us", 1),  # a non-zero duration under 1 ms rounds up to 1 ms
    ("250\u00b5s", 1),
    ("250\u03bcs", 1),
    ("1500000ns", 1),
    ("1ns", 1),
    ("1ms999us", 1),
    (1_000_000_000, 1_000),  # integers are nanoseconds, as in the seed's files
    (10_000_000_000, 10_000),
    (1_999_999, 1),
    (1, 1),
    (0, 0),
    (1e9, 1_000),
]

BAD_DURATIONS = [
    ("-5s", "must not be negative"),
    (-1, "must not be negative"),
    (True, "must be a duration"),
    (1.5, "whole number of nanoseconds"),
    (float("nan"), "whole number of nanoseconds"),
    ("5", "must be a duration"),
    ("5 s", "must be a duration"),
    ("", "must be a duration"),
    ("s", "must be a duration"),
    (".s", "must be a duration"),
    ("1d", "must be a duration"),
    ("1.2.3s", "must be a duration"),
    ("9" * 70 + "s", "must be a duration"),
    (2**63, "out of range"),
    (None, "must be a duration"),
    ([1], "must be a duration"),
]


@pytest.mark.parametrize(("text", "expected_ms"), DURATIONS)
def test_parse_duration(text: object, expected_ms: int) -> None:
    assert parse_duration(text, "timeout") == expected_ms


@pytest.mark.parametrize(("value", "rule"), BAD_DURATIONS)
def test_parse_duration_refuses(value: object, rule: str) -> None:
    problem = parse_duration(value, "steps[1].timeout")
    assert isinstance(problem, Problem)
    assert problem.path == "steps[1].timeout"
    assert rule in problem.rule
    assert problem.value.startswith(repr(value)[:20])


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (1, "1ms"), (500, "500ms"), (1_000, "1s"), (1_500, "1.5s"), (90_000, "1m30s"),
     (7_200_000, "2h"), (3_723_500, "1h2m3.5s"), (3_600_001, "1h0.001s"), (61_010, "1m1.01s")],
)  # fmt: skip
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert parse_duration(text, "x") == ms


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10 * limits.timeout_ms_max))
def test_format_then_parse_duration_is_identity(ms: int) -> None:
    assert parse_duration(format_duration(ms), "x") == ms


def test_seed_file_parses() -> None:
    workflow = parse_workflow(SEED_RETRY_ERRORS)
    assert workflow == WorkflowDef(
        name="retry-errors",
        version="1.0",
        steps=(
            StepDef(
                id="fetch",
                task="fetch",
                retry=RetryPolicy(
                    max_attempts=3,
                    strategy="exponential",
                    initial_delay_ms=1_000,
                    max_delay_ms=10_000,
                    multiplier=2.0,
                ),
                on_failure="report-error",
            ),
            StepDef(id="process", task="process", depends_on=("fetch",)),
            StepDef(id="report-error", task="report-error"),
        ),
    )
    assert parse_workflow(SEED_RETRY_ERRORS.decode()) == workflow
    assert parse_workflow(msgspec.json.decode(SEED_RETRY_ERRORS)) == workflow


def test_normal_is_an_alias_of_task_and_task_is_the_default() -> None:
    document = {"name": "w", "steps": [{"id": "a", "task": "t", "type": "normal"},
                                       {"id": "b", "task": "t"}]}  # fmt: skip
    steps = parse_workflow(document).steps
    assert [step.type for step in steps] == ["task", "task"]


def test_defaults() -> None:
    workflow = parse_workflow({"name": "w", "steps": [{"id": "a", "task": "t"}]})
    assert workflow == WorkflowDef(name="w", version="1", steps=(StepDef(id="a", task="t"),))
    (step,) = workflow.steps
    assert step.retry is None and step.timeout_ms is None and step.skip_if is None
    assert bytes(step.config) == b"{}" and bytes(workflow.metadata) == b"{}"


def test_retry_defaults_and_readings() -> None:
    document = {
        "name": "w",
        "default_retry": {"max_attempts": 0, "jitter": True},
        "steps": [
            {"id": "a", "task": "t", "retry": {"max_attempts": 3}},
            {"id": "b", "task": "t", "retries": 2},
            {"id": "c", "task": "t", "retry": {"multiplier": 3, "jitter": False}},
        ],
    }
    workflow = parse_workflow(document)
    assert workflow.default_retry == RetryPolicy(max_attempts=1, jitter=0.2)
    a, b, c = (step.retry for step in workflow.steps)
    assert a == RetryPolicy(max_attempts=3, strategy="exponential", initial_delay_ms=1_000,
                            max_delay_ms=0, multiplier=2.0, jitter=0.0)  # fmt: skip
    assert b == RetryPolicy(max_attempts=3)
    assert c == RetryPolicy(multiplier=3.0, jitter=0.0)
    assert c is not None and isinstance(c.multiplier, float)


def test_top_level_fields() -> None:
    document = {
        "$schema": "whatever.json",
        "name": "w",
        "version": 7,
        "timeout": "1h",
        "concurrency": {"max_steps": 4, "max_runs": 100},
        "metadata": {"team": "b", "owner": "a"},
        "steps": [{"id": "a", "task": "t"}],
    }
    workflow = parse_workflow(document)
    assert workflow.version == "7"
    assert workflow.timeout_ms == 3_600_000
    assert workflow.max_concurrent_steps == 4
    assert bytes(workflow.metadata) == b'{"owner":"a","team":"b"}'  # canonical: keys sorted


def test_null_reads_as_left_out() -> None:
    step = {"id": "a", "task": "t", "type": None, "depends_on": None, "retry": None,
            "timeout": None, "skip_if": None, "on_failure": None, "metadata": None}  # fmt: skip
    workflow = parse_workflow({"name": "w", "version": None, "steps": [step]})
    assert workflow == WorkflowDef(name="w", steps=(StepDef(id="a", task="t"),))


def test_skip_if_value_is_canonical_json() -> None:
    skip = {"step_id": "a", "field": "result.count", "op": "==", "value": {"b": 1, "a": [2]}}
    document = {"name": "w", "steps": [{"id": "a", "task": "t"},
                                       {"id": "b", "task": "t", "depends_on": ["a"],
                                        "skip_if": skip}]}  # fmt: skip
    condition = parse_workflow(document).steps[1].skip_if
    assert condition == SkipIf(
        step_id="a", field="result.count", op="==", value=msgspec.Raw(b'{"a":[2],"b":1}')
    )


def rich_workflow() -> WorkflowDef:
    return parse_workflow(
        {
            "name": "orders",
            "version": "3",
            "timeout": "2h30m",
            "concurrency": {"max_steps": 2},
            "default_retry": {"max_attempts": 5, "strategy": "linear", "initial_delay": "250ms",
                              "max_delay": "1m", "multiplier": 1.5, "jitter": 0.1},
            "metadata": {"team": "payments"},
            "steps": [
                {"id": "fetch", "task": "http.fetch", "timeout": "30s",
                 "retry": {"max_attempts": 3, "initial_delay": 1_500_000_000}},
                {"id": "charge", "task": "pay", "depends_on": ["fetch"], "compensate": "refund",
                 "on_failure": "alert", "metadata": {"k": "v"},
                 "skip_if": {"step_id": "fetch", "field": "paid", "op": "==", "value": True}},
                {"id": "refund", "task": "refund"},
                {"id": "alert", "task": "alert", "retries": 1},
            ],
        }
    )  # fmt: skip


def test_round_trip_through_the_document() -> None:
    workflow = rich_workflow()
    document = workflow_to_document(workflow)
    assert parse_workflow(document) == workflow
    assert parse_workflow(msgspec.json.encode(document)) == workflow
    assert document["timeout"] == "2h30m"
    assert validate_workflow(workflow) == ()


def test_document_of_a_struct_built_by_hand() -> None:
    workflow = WorkflowDef(name="w", steps=(StepDef(id="a", task="t", metadata=EMPTY_OBJECT),))
    assert workflow_to_document(workflow) == {
        "name": "w",
        "version": "1",
        "steps": [{"id": "a", "type": "task", "task": "t"}],
    }


# Properties.

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
STEP_KEYS = st.sampled_from(
    ["id", "type", "task", "depends_on", "retry", "retries", "timeout", "skip_if", "on_failure",
     "compensate", "metadata", "config", "bogus"]
)  # fmt: skip
NAMES = st.sampled_from(["a", "b", "c", "normal", "task", "", "a.b"])
SHAPED_VALUES = (
    JSON_VALUES
    | NAMES
    | st.lists(NAMES, max_size=3)
    | st.sampled_from(["1s", "-1s", "1x", 1_000_000, {"max_attempts": 3}, {"step_id": "a"}])
)
STEPS = st.dictionaries(STEP_KEYS, SHAPED_VALUES, max_size=6)
DOCUMENTS = st.fixed_dictionaries(
    {"name": st.one_of(st.just("w"), JSON_VALUES), "steps": st.lists(STEPS, max_size=4)},
    optional={"version": JSON_VALUES, "timeout": SHAPED_VALUES, "default_retry": JSON_VALUES,
              "concurrency": JSON_VALUES, "metadata": JSON_VALUES},
)  # fmt: skip


def parses_or_reports(source: object) -> None:
    """Parse `source`: a valid result validates again, an invalid one lists its problems."""
    try:
        workflow = parse_workflow(source)
    except WorkflowInvalidError as error:
        assert 1 <= len(error.problems) <= limits.validation_problems_max
        assert all(isinstance(problem, Problem) for problem in error.problems)
        return
    assert validate_workflow(workflow) == ()
    assert parse_workflow(workflow_to_document(workflow)) == workflow


@given(JSON_VALUES)
def test_any_json_value_parses_or_is_reported(value: object) -> None:
    parses_or_reports(value)


@given(st.dictionaries(st.sampled_from(["name", "steps", "version", "x"]), JSON_VALUES))
def test_any_top_level_object_parses_or_is_reported(value: object) -> None:
    parses_or_reports(value)


@settings(max_examples=300)
@given(DOCUMENTS)
def test_any_workflow_shaped_document_parses_or_is_reported(document: object) -> None:
    parses_or_reports(document)
    parses_or_reports(msgspec.json.encode(document))


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_reported(data: bytes) -> None:
    parses_or_reports(data)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_reported(text: str) -> None:
    parses_or_reports(text)


DURATION_TEXT = st.builds(format_duration, st.integers(min_value=0, max_value=limits.delay_ms_max))


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, object]:
    """Valid workflow documents: a random DAG (dependencies only on earlier steps)."""
    count = draw(st.integers(min_value=1, max_value=8))
    steps: list[dict[str, object]] = []
    for index in range(count):
        step: dict[str, object] = {"id": f"s{index}", "task": draw(st.sampled_from(["t", "u"]))}
        earlier = [f"s{before}" for before in range(index)]
        if earlier:
            step["depends_on"] = draw(st.lists(st.sampled_from(earlier), unique=True))
        if draw(st.booleans()):
            initial = draw(st.integers(min_value=0, max_value=60_000))
            step["retry"] = {
                "max_attempts": draw(st.integers(min_value=1, max_value=limits.attempts_max)),
                "strategy": draw(st.sampled_from(["fixed", "linear", "exponential"])),
                "initial_delay": format_duration(initial),
                "max_delay": draw(st.sampled_from([0, initial * 1_000_000])),
                "multiplier": draw(st.floats(min_value=1, max_value=limits.retry_multiplier_max)),
                "jitter": draw(st.floats(min_value=0, max_value=1)),
            }
        if draw(st.booleans()):
            step["timeout"] = draw(DURATION_TEXT.filter(lambda text: text != "0s"))
        steps.append(step)
    return {"name": "generated", "version": draw(st.integers(0, 99)), "steps": steps}


@given(valid_documents())
def test_valid_documents_round_trip(document: dict[str, object]) -> None:
    workflow = parse_workflow(document)
    assert len(workflow.steps) == len(document["steps"])  # type: ignore[arg-type]
    assert validate_workflow(workflow) == ()
    assert parse_workflow(workflow_to_document(workflow)) == workflow
    assert parse_workflow(msgspec.json.encode(workflow_to_document(workflow))) == workflow
