"""Malformed workflow definitions: each gets the problem (path and rule) it deserves.

Every row of the table holds a bad document, a valid neighbour that differs only in the
fault, the exact JSON path of the expected problem and a substring of its rule. A row checks
both sides: the bad document fails with that problem, and the neighbour parses.
"""

from __future__ import annotations

import msgspec
import pytest

from kernel import limits
from kernel.errors import Problem, WorkflowInvalidError
from kernel.workflow import (
    RetryPolicy,
    StepDef,
    WorkflowDef,
    parse_workflow,
    validate_workflow,
)

Document = dict[str, object]


def step(step_id: object, **fields: object) -> Document:
    """A task step whose task is its id, plus `fields`."""
    return {"id": step_id, "task": str(step_id), **fields}


def flow(*steps: Document, **top: object) -> Document:
    """A workflow named "w" of `steps` (one step "a" if none), plus top-level `top`."""
    return {"name": "w", "steps": list(steps) or [step("a")], **top}


def with_top(document: Document, **fields: object) -> Document:
    return {**document, **fields}


def without(document: Document, key: str) -> Document:
    return {name: value for name, value in document.items() if name != key}


def retry(**fields: object) -> Document:
    return {"max_attempts": 3, **fields}


def problems_of(source: object) -> tuple[Problem, ...]:
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(source)
    return caught.value.problems


def padded_to(size: int) -> bytes:
    """A valid workflow in exactly `size` bytes (trailing whitespace is valid JSON)."""
    data = msgspec.json.encode(flow())
    return data + b" " * (size - len(data))


def many_steps(count: int) -> list[Document]:
    return [step(f"s{index}") for index in range(count)]


HANDLER_A = step("a", on_failure="h")
DEPS_MAX = limits.dependencies_per_step_max

# (name, bad, good neighbour, path, rule substring)
CASES: list[tuple[str, object, object, str, str]] = [
    ("no steps", {"name": "w"}, flow(), "steps", "is required"),
    ("steps empty", flow(steps=[]), flow(), "steps", "at least one step"),
    ("steps not a list", flow(steps="a"), flow(), "steps", "must be an array"),
    ("step not an object", flow(steps=["a"]), flow(), "steps[0]", "must be a JSON object"),
    ("top not an object", b"[1, 2]", b'{"name": "w", "steps": [{"id": "a", "task": "t"}]}',
     "$", "must be a JSON object"),
    ("empty id", flow(step("")), flow(step("a")), "steps[0].id", "must not be empty"),
    ("id missing", flow({"task": "t"}), flow(step("a")), "steps[0].id", "is required"),
    ("id as number", flow(step(7)), flow(step("7")), "steps[0].id", "must be a string"),
    ("id with a dot", flow(step("a.b")), flow(step("a-b")), "steps[0].id",
     "'.' is reserved for planner namespaces"),
    ("id too long", flow(step("a" * 129)), flow(step("a" * 128)), "steps[0].id",
     "longer than 128"),
    ("duplicate ids", flow(step("a"), step("a")), flow(step("a"), step("b")), "steps[1].id",
     "duplicates steps[0].id"),
    ("unknown dependency",
     flow(step("fetch"), step("process", depends_on=["fecth"])),
     flow(step("fetch"), step("process", depends_on=["fetch"])),
     "steps[1].depends_on[0]", "names no step of this workflow (known: fetch, process)"),
    ("self dependency", flow(step("a", depends_on=["a"])), flow(step("a", depends_on=[])),
     "steps[0].depends_on[0]", "cannot depend on itself"),
    ("depends_on a string", flow(step("a"), step("b", depends_on="a")),
     flow(step("a"), step("b", depends_on=["a"])), "steps[1].depends_on", "must be an array"),
    ("dependency repeated", flow(step("a"), step("b", depends_on=["a", "a"])),
     flow(step("a"), step("b", depends_on=["a"])), "steps[1].depends_on[1]",
     "repeats depends_on[0]"),
    ("2-step cycle", flow(step("a", depends_on=["b"]), step("b", depends_on=["a"])),
     flow(step("a", depends_on=["b"]), step("b")), "steps[0].depends_on[0]",
     "depends_on forms a cycle: a -> b -> a"),
    ("3-step cycle",
     flow(step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"])),
     flow(step("a"), step("b", depends_on=["a"]), step("c", depends_on=["b"])),
     "steps[0].depends_on[0]", "depends_on forms a cycle: a -> c -> b -> a"),
    ("unknown top-level field", flow(description="x"), flow(), "description",
     "unknown field (allowed: $schema, name, version, steps"),
    ("unknown step field", flow(step("a", retyr=3)), flow(step("a", retries=3)),
     "steps[0].retyr", "unknown field (allowed: id, type, task"),
    ("unknown retry field", flow(step("a", retry={"max_attempt": 3})),
     flow(step("a", retry={"max_attempts": 3})), "steps[0].retry.max_attempt", "unknown field"),
    ("unknown default_retry field", flow(default_retry={"tries": 2}),
     flow(default_retry={"max_attempts": 2}), "default_retry.tries", "unknown field"),
    ("unknown type", flow(step("a", type="nope")), flow(step("a", type="normal")),
     "steps[0].type", "is not a step type (known: "),
    ("type not a string", flow(step("a", type=1)), flow(step("a", type="task")),
     "steps[0].type", "must be a string"),
    ("task missing", flow({"id": "a"}), flow({"id": "a", "task": "t"}), "steps[0].task",
     "is required for a step of type 'task'"),
    ("task empty", flow({"id": "a", "task": ""}), flow({"id": "a", "task": "t"}),
     "steps[0].task", "is required"),
    ("skip_if step not among depends_on",
     flow(step("a"), step("b", skip_if={"step_id": "a", "field": "x", "op": "==", "value": 1})),
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "==", "value": 1})),
     "steps[1].skip_if.step_id", "must be among this step's depends_on (none)"),
    ("skip_if bad op",
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "=~", "value": 1})),
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": ">=", "value": 1})),
     "steps[1].skip_if.op", "must be one of == != < > <= >="),
    ("skip_if empty path part",
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x..y", "op": "==", "value": 1})),
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x.y", "op": "==", "value": 1})),
     "steps[1].skip_if.field", "no empty part"),
    ("skip_if value missing",
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "=="})),
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "==", "value": None})),
     "steps[1].skip_if.value", "is required"),
    ("skip_if order on an object",
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "<", "value": {}})),
     flow(step("a"), step("b", depends_on=["a"],
                          skip_if={"step_id": "a", "field": "x", "op": "<", "value": 3})),
     "steps[1].skip_if.value", "must be a number or a string for op '<'"),
    ("on_failure unknown", flow(step("a", on_failure="nope")), flow(step("a")),
     "steps[0].on_failure", "names no step of this workflow (known: a)"),
    ("on_failure itself", flow(step("a", on_failure="a")), flow(step("a")),
     "steps[0].on_failure", "names the step itself"),
    ("handler with depends_on",
     flow(HANDLER_A, step("b"), step("h", depends_on=["b"])),
     flow(HANDLER_A, step("b"), step("h")),
     "steps[2].depends_on", "must be empty: this step is a handler (named by steps[0].on_failure)"),
    ("handler depended on",
     flow(HANDLER_A, step("h"), step("b", depends_on=["h"])),
     flow(HANDLER_A, step("h"), step("b", depends_on=["a"])),
     "steps[2].depends_on[0]", "names a handler step (named by steps[0].on_failure)"),
    ("compensate unknown", flow(step("a", compensate="undo")),
     flow(step("a", compensate="undo"), step("undo")),
     "steps[0].compensate", "names no step of this workflow"),
    ("handler named twice",
     flow(HANDLER_A, step("b", compensate="h"), step("h")),
     flow(HANDLER_A, step("b", compensate="g"), step("h"), step("g")),
     "steps[1].compensate", "already the handler named by steps[0].on_failure"),
    ("max_attempts too big", flow(step("a", retry=retry(max_attempts=101))),
     flow(step("a", retry=retry(max_attempts=100))), "steps[0].retry.max_attempts",
     "must be an integer from 0 to 100"),
    ("max_attempts negative", flow(step("a", retry=retry(max_attempts=-1))),
     flow(step("a", retry=retry(max_attempts=0))), "steps[0].retry.max_attempts",
     "from 0 to 100"),
    ("max_attempts a float", flow(step("a", retry=retry(max_attempts=2.5))),
     flow(step("a", retry=retry(max_attempts=2))), "steps[0].retry.max_attempts",
     "must be an integer"),
    ("strategy unknown", flow(step("a", retry=retry(strategy="random"))),
     flow(step("a", retry=retry(strategy="linear"))), "steps[0].retry.strategy",
     "must be one of fixed, linear, exponential"),
    ("initial_delay too long", flow(step("a", retry=retry(initial_delay="169h"))),
     flow(step("a", retry=retry(initial_delay="168h"))), "steps[0].retry.initial_delay",
     "longer than the limit of 604800000 ms"),
    ("duration not a duration", flow(step("a", timeout="5 seconds")),
     flow(step("a", timeout="5s")), "steps[0].timeout", "must be a duration such as"),
    ("duration with unknown unit", flow(step("a", timeout="1d")),
     flow(step("a", timeout="24h")), "steps[0].timeout", "must be a duration"),
    ("duration negative", flow(step("a", timeout="-5s")), flow(step("a", timeout="5s")),
     "steps[0].timeout", "must not be negative"),
    ("duration fractional nanoseconds", flow(step("a", timeout=1.5)),
     flow(step("a", timeout=1.0)), "steps[0].timeout", "whole number of nanoseconds"),
    ("duration a boolean", flow(timeout=True), flow(timeout="1h"), "timeout",
     "must be a duration"),
    ("timeout zero", flow(step("a", timeout="0s")), flow(step("a", timeout="1ms")),
     "steps[0].timeout", "must be longer than zero"),
    ("run timeout too long", flow(timeout="8761h"), flow(timeout="8760h"), "timeout",
     "longer than the limit"),
    ("max_delay under initial_delay",
     flow(step("a", retry=retry(initial_delay="10s", max_delay="5s"))),
     flow(step("a", retry=retry(initial_delay="10s", max_delay="0s"))),
     "steps[0].retry.max_delay", "must be 0 (uncapped) or at least initial_delay (10s)"),
    ("multiplier under 1", flow(step("a", retry=retry(multiplier=0.5))),
     flow(step("a", retry=retry(multiplier=1))), "steps[0].retry.multiplier",
     "must be a number from 1 to 100"),
    ("jitter 2", flow(step("a", retry=retry(jitter=2))), flow(step("a", retry=retry(jitter=1))),
     "steps[0].retry.jitter", "must be a fraction from 0 to 1"),
    ("retries and retry", flow(step("a", retries=2, retry=retry())),
     flow(step("a", retries=2)), "steps[0].retries", "use either retries or retry"),
    ("retries negative", flow(step("a", retries=-1)), flow(step("a", retries=0)),
     "steps[0].retries", "must be an integer from 0 to 99"),
    ("too many steps", flow(*many_steps(limits.steps_per_workflow_max + 1)),
     flow(*many_steps(limits.steps_per_workflow_max)), "steps", "the limit is 1000"),
    ("too many dependencies",
     flow(*many_steps(DEPS_MAX + 1),
          step("z", depends_on=[f"s{index}" for index in range(DEPS_MAX + 1)])),
     flow(*many_steps(DEPS_MAX + 1),
          step("z", depends_on=[f"s{index}" for index in range(DEPS_MAX)])),
     f"steps[{DEPS_MAX + 1}].depends_on", "the limit is 100"),
    ("oversized source", padded_to(limits.workflow_bytes_max + 1),
     padded_to(limits.workflow_bytes_max), "$", "larger than the limit of 1048576 bytes"),
    ("oversized text", padded_to(limits.workflow_bytes_max + 1).decode(),
     padded_to(limits.workflow_bytes_max).decode(), "$", "larger than the limit"),
    ("invalid JSON", b'{"name": "w", "steps": [', msgspec.json.encode(flow()), "$",
     "is not valid JSON"),
    ("name missing", without(flow(), "name"), flow(), "name", "is required"),
    ("name empty", with_top(flow(), name=""), flow(), "name", "must not be empty"),
    ("name not a string", with_top(flow(), name=["w"]), flow(), "name", "must be a string"),
    ("name too long", with_top(flow(), name="n" * 129), with_top(flow(), name="n" * 128),
     "name", "longer than 128"),
    ("version a boolean", flow(version=True), flow(version=2), "version",
     "a non-empty string or an integer"),
    ("concurrency zero", flow(concurrency={"max_steps": 0}),
     flow(concurrency={"max_steps": 1, "max_runs": 5}), "concurrency.max_steps",
     "must be an integer from 1 to 1000"),
    ("concurrency unknown field", flow(concurrency={"steps": 2}),
     flow(concurrency={"max_steps": 2}), "concurrency.steps", "unknown field"),
    ("metadata value not a string", flow(metadata={"owner": 7}), flow(metadata={"owner": "7"}),
     "metadata.owner", "must be a string"),
    ("step metadata not an object", flow(step("a", metadata=["x"])),
     flow(step("a", metadata={"x": "y"})), "steps[0].metadata", "must be a JSON object"),
    ("config not an object", flow(step("a", config=[1])), flow(step("a", config=None)),
     "steps[0].config", "must be a JSON object"),
    ("config the task type refuses", flow(step("a", config={"x": 1})), flow(step("a", config={})),
     "steps[0].config", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "good", "path", "rule"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_definition_names_path_and_rule(
    bad: object, good: object, path: str, rule: str
) -> None:
    problems = problems_of(bad)
    matching = [problem for problem in problems if problem.path == path and rule in problem.rule]
    assert matching, f"no problem at {path!r} with {rule!r}; got: {[str(p) for p in problems]}"
    assert isinstance(parse_workflow(good), WorkflowDef)


def test_the_table_is_large_and_names_are_unique() -> None:
    names = [case[0] for case in CASES]
    assert len(names) >= 30
    assert len(set(names)) == len(names)


def test_every_problem_found_at_once() -> None:
    document = {
        "name": "",
        "extra": 1,
        "steps": [
            step("a", depends_on=["zz"], retry=retry(max_attempts=500, jitter=2)),
            step("a"),
            {"id": "b"},
        ],
    }
    problems = problems_of(document)
    assert [problem.path for problem in problems] == [
        "extra",
        "name",
        "steps[0].depends_on[0]",
        "steps[0].retry.max_attempts",
        "steps[0].retry.jitter",
        "steps[1].id",
        "steps[2].task",
    ]


def test_problems_are_bounded() -> None:
    document = flow(*[step(f"s{index}", bogus=1) for index in range(200)])
    problems = problems_of(document)
    assert len(problems) == limits.validation_problems_max
    assert problems[0].path == "steps[0].bogus"
    assert problems[-1].path == f"steps[{limits.validation_problems_max - 1}].bogus"


def test_one_problem_per_disjoint_cycle() -> None:
    document = flow(
        step("a", depends_on=["b"]),
        step("b", depends_on=["a"]),
        step("c", depends_on=["d"]),
        step("d", depends_on=["c"]),
    )
    rules = [problem.rule for problem in problems_of(document)]
    assert rules == [
        "depends_on forms a cycle: a -> b -> a",
        "depends_on forms a cycle: c -> d -> c",
    ]


def test_problem_values_are_repr_and_short() -> None:
    document = flow(step("a", depends_on=["x" * 500]))
    (problem,) = problems_of(document)
    assert problem.value.startswith("'xxx")
    assert problem.value.endswith("...")
    assert len(problem.value) <= 80
    assert "known: a" in problem.rule


def test_error_names_the_workflow_and_lists_problems() -> None:
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(flow(step("a", depends_on=["b"])))
    message = str(caught.value)
    assert caught.value.workflow == "w"
    assert "workflow 'w' is invalid (1 problem(s))" in message
    assert "steps[0].depends_on[0]: 'b'" in message


def test_invalid_json_is_one_problem_at_the_root() -> None:
    (problem,) = problems_of("{not json")
    assert problem.path == "$"
    assert problem.value == "'{not json'"
    assert problem.rule.startswith("is not valid JSON: ")


def test_deeply_nested_json_is_a_problem_not_a_crash() -> None:
    problems = problems_of(b"[" * 100_000)
    assert [problem.path for problem in problems] == ["$"]


def test_values_that_are_not_json_are_problems() -> None:
    document = flow(step("a", metadata={"k": "v"}), metadata={"when": object()})
    problems = problems_of(document)
    assert [problem.path for problem in problems] == ["metadata.when"]
    keyed: dict[object, object] = {"name": "w", "steps": [step("a")]}
    keyed[1] = "one"
    (problem,) = problems_of(keyed)
    assert (problem.path, problem.value, problem.rule) == (
        "$",
        "1",
        "has a key that is not a string",
    )
    huge = flow(step("b", skip_if={"step_id": "a", "field": "x", "op": "==", "value": 10**5000}))
    assert "steps[0].skip_if.value" in [problem.path for problem in problems_of(huge)]


def test_validate_workflow_checks_typed_values_by_the_same_rules() -> None:
    workflow = WorkflowDef(
        name="w",
        steps=(
            StepDef(id="a", task="t", depends_on=("zz",), retry=RetryPolicy(max_attempts=0)),
            StepDef(id="b", task="t", timeout_ms=-1, metadata=msgspec.Raw(b"{not json")),
        ),
    )
    problems = validate_workflow(workflow)
    assert [problem.path for problem in problems] == [
        "steps[0].depends_on[0]",
        "steps[1].timeout",
        "steps[1].metadata",
        "steps[0].retry.max_attempts",
    ]
    assert validate_workflow(parse_workflow(flow(step("a")))) == ()


@pytest.mark.parametrize("name", ["my order", "a*b", ".hidden", "trailing.", "a>b", "é"])
def test_a_workflow_name_must_be_a_store_key(name: str) -> None:
    document = {"name": name, "steps": [{"id": "a", "task": "t"}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["name"], paths
    assert "key of the store" in caught.value.problems[0].rule


@pytest.mark.parametrize("name", ["order", "order-v2", "team.order", "a_b=c"])
def test_a_store_key_name_is_accepted(name: str) -> None:
    document = {"name": name, "steps": [{"id": "a", "task": "t"}]}
    assert parse_workflow(document).name == name


@pytest.mark.parametrize("task", ["a b", "a..b", ".a", "a.", "a*", "a>b"])
def test_a_task_name_must_be_a_subject_token_path(task: str) -> None:
    document = {"name": "w", "steps": [{"id": "a", "task": task}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert [problem.path for problem in caught.value.problems] == ["steps[0].task"]
    assert parse_workflow({"name": "w", "steps": [{"id": "a", "task": "pay.charge-v2"}]})
