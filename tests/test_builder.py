"""The fluent builder: the same `WorkflowDef` and the same errors as the equivalent JSON."""

from __future__ import annotations

import importlib
import sys

import msgspec
import pytest

from kernel.errors import WorkflowInvalidError
from kernel.workflow import RetryPolicy, WorkflowDef, parse_workflow
from kernel.workflow.builder import Retry, Skip, Workflow

ORDER_JSON = b"""{
  "name": "order",
  "version": "2",
  "timeout": "1h",
  "concurrency": {"max_steps": 4},
  "default_retry": {"max_attempts": 2, "initial_delay": "500ms"},
  "metadata": {"team": "payments"},
  "steps": [
    {"id": "fetch", "task": "http.fetch", "timeout": "30s",
     "retry": {"max_attempts": 3, "initial_delay": "1s", "max_delay": "1m", "jitter": true}},
    {"id": "charge", "task": "payments.charge", "depends_on": ["fetch"], "compensate": "refund",
     "skip_if": {"step_id": "fetch", "field": "order.paid", "op": "==", "value": true}},
    {"id": "refund", "type": "normal", "task": "payments.refund", "metadata": {"k": "v"}}
  ]
}"""


def order_builder() -> Workflow:
    return (
        Workflow(
            "order",
            version="2",
            timeout="1h",
            max_concurrent_steps=4,
            default_retry=Retry(max_attempts=2, initial_delay=500),
            metadata={"team": "payments"},
        )
        .task(
            "fetch",
            task="http.fetch",
            timeout=30_000,
            retry=Retry(max_attempts=3, initial_delay="1s", max_delay="1m", jitter=True),
        )
        .task(
            "charge",
            task="payments.charge",
            depends_on=["fetch"],
            compensate="refund",
            on_failure=None,
            skip_if=Skip(step_id="fetch", field="order.paid", op="==", value=True),
        )
        .step("refund", type="task", task="payments.refund", metadata={"k": "v"})
    )


def problems_of(builder: Workflow) -> list[str]:
    with pytest.raises(WorkflowInvalidError) as caught:
        builder.build()
    return [str(problem) for problem in caught.value.problems]


def test_builder_equals_the_equivalent_json() -> None:
    built = order_builder().build()
    assert isinstance(built, WorkflowDef)
    assert built == parse_workflow(ORDER_JSON)
    assert built.steps[0].retry == RetryPolicy(
        max_attempts=3, initial_delay_ms=1_000, max_delay_ms=60_000, jitter=0.2
    )
    assert built.steps[0].timeout_ms == 30_000  # an int in the builder means milliseconds


def test_builder_document_is_the_json_document() -> None:
    document = order_builder().to_document()
    assert parse_workflow(msgspec.json.encode(document)) == parse_workflow(ORDER_JSON)
    assert document["timeout"] == "1h"
    assert document is not order_builder().to_document()


def test_each_call_returns_a_new_builder() -> None:
    base = Workflow("w").task("a", task="t")
    left = base.task("b", task="t", depends_on=["a"])
    right = base.task("c", task="t")
    assert [step.id for step in base.build().steps] == ["a"]
    assert [step.id for step in left.build().steps] == ["a", "b"]
    assert [step.id for step in right.build().steps] == ["a", "c"]


def test_builder_copies_the_mappings_it_is_given() -> None:
    metadata = {"k": "v"}
    builder = Workflow("w").task("a", task="t", metadata=metadata)
    metadata["k"] = "changed"
    assert bytes(builder.build().steps[0].metadata) == b'{"k":"v"}'


def test_builder_fails_exactly_as_the_json_would() -> None:
    builder = (
        Workflow("w")
        .task("a", task="t", depends_on=["b"], retry=Retry(max_attempts=500))
        .task("b", task="t", depends_on=["a"])
        .step("x", type="task", task="t", config={"anything": 1})
    )
    problems = problems_of(builder)
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(msgspec.json.encode(builder.to_document()))
    assert problems == [str(problem) for problem in caught.value.problems]
    paths = [problem.split(":")[0] for problem in problems]
    assert paths == [
        "steps[0].retry.max_attempts",
        "steps[2].config",  # the task step type takes no config
        "steps[0].depends_on[0]",
    ]
    assert "depends_on forms a cycle: a -> b -> a" in problems[-1]


def test_builder_passes_bad_values_on_for_the_parser_to_name() -> None:
    problems = problems_of(
        Workflow("w", timeout=-5).task("a", task="t", depends_on="b").task("b", task="t")
    )
    assert problems[0].startswith("timeout: -5 — must not be negative")
    assert problems[1].startswith("steps[0].depends_on: 'b' — must be an array")


def test_handlers_through_the_builder() -> None:
    built = (
        Workflow("w")
        .task("charge", task="pay", on_failure="alert", compensate="refund")
        .task("refund", task="refund")
        .task("alert", task="alert")
        .build()
    )
    assert built.steps[0].on_failure == "alert"
    assert built.steps[0].compensate == "refund"
    bad = Workflow("w").task("a", task="t", on_failure="h").task("h", task="t", depends_on=["a"])
    assert any(problem.startswith("steps[1].depends_on: ") for problem in problems_of(bad))


def test_the_old_builder_module_warns_and_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "kernel.builder", raising=False)  # import it afresh
    expected = r"kernel\.builder is deprecated; use `from dagnats import Workflow`"
    with pytest.warns(DeprecationWarning, match=expected):
        old = importlib.import_module("kernel.builder")
    assert (old.Workflow, old.Retry, old.Skip) == (Workflow, Retry, Skip)
    built = old.Workflow("w").task("a", task="t", retry=old.Retry(max_attempts=2)).build()
    assert built == Workflow("w").task("a", task="t", retry=Retry(max_attempts=2)).build()


def test_the_builder_is_public_as_dagnats_workflow() -> None:
    import dagnats
    from kernel.workflow import builder

    assert dagnats.Workflow is builder.Workflow
    assert dagnats.Retry is builder.Retry and dagnats.Skip is builder.Skip
    assert {"Workflow", "Retry", "Skip"} <= set(dagnats.__all__)
