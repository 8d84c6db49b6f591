"""Runs of one DAG share one index (kernel/dag_index.py): found by the DAG itself behind the
per-tuple memo, so two DAGs never share; bounded; the shared index answers as one built anew."""

from __future__ import annotations

from collections.abc import Iterator
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from kernel import dag_index as dag_index_module
from kernel import limits
from kernel.dag_index import DagIndex, dag_index
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from tests.strategies import workflows

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def cold_memos() -> Iterator[None]:
    """Each test starts with no index kept and leaves none behind."""
    with (
        patch.dict(dag_index_module._indexes, clear=True),
        patch.dict(dag_index_module._by_dag, clear=True),
    ):
        yield


def _steps(**changes: object) -> tuple[StepDef, ...]:
    a = StepDef(id="a", task="t", on_failure="h")
    b = StepDef(id="b", task="t", depends_on=("a",), compensate="undo")
    rest = (StepDef(id="h", task="t"), StepDef(id="undo", task="t"))
    return (a, msgspec.structs.replace(b, **changes), *rest)


def _copy(step_defs: tuple[StepDef, ...]) -> tuple[StepDef, ...]:
    """Equal steps in another tuple of other objects (as each run's decoded RunStarted has)."""
    data = msgspec.json.encode(WorkflowDef(name="w", steps=step_defs))
    copy = msgspec.json.decode(data, type=WorkflowDef).steps
    assert copy == step_defs and copy is not step_defs
    return copy


def _same(one: DagIndex, other: DagIndex) -> bool:
    return (
        one.dependencies == other.dependencies
        and one.dependents == other.dependents
        and one.roles == other.roles
        and one.handlers == other.handlers
        and one.body_reversed == other.body_reversed
    )


def test_runs_of_one_dag_share_one_index() -> None:
    first = _steps()
    index = dag_index(first)
    assert dag_index(_copy(first)) is index, "the same DAG decoded anew: the same index"
    retried = _steps(retry=RetryPolicy(max_attempts=3), task="other")
    assert dag_index(retried) is index, "what the index is not built from may differ"
    assert len(dag_index_module._by_dag) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"depends_on": ()},
        {"depends_on": ("a", "a")},
        {"compensate": None},
        {"compensate": "h"},
        {"on_failure": "h"},
        {"id": "c"},
    ],
)
def test_two_dags_never_share(changes: dict[str, object]) -> None:
    base = dag_index(_steps())
    other_steps = _steps(**changes)
    other = dag_index(other_steps)
    assert other is not base
    assert _same(other, DagIndex(other_steps)), "its own DAG's answers"


def test_the_order_of_the_steps_is_part_of_the_dag() -> None:
    steps = _steps()
    base = dag_index(steps)
    reordered = (steps[1], steps[0], *steps[2:])
    assert dag_index(reordered) is not base
    assert _same(dag_index(reordered), DagIndex(reordered))


def test_the_memo_is_bounded_and_lets_the_oldest_go() -> None:
    count = limits.dags_cached_max + 5
    chains = [
        tuple(StepDef(id=f"s{i}", task="t") for i in range(length)) for length in range(1, count)
    ]
    kept = [dag_index(steps) for steps in chains]
    assert len(dag_index_module._by_dag) == limits.dags_cached_max
    assert dag_index(_copy(chains[-1])) is kept[-1], "the newest is kept"
    assert dag_index(_copy(chains[0])) is not kept[0], "the oldest went"
    assert len(dag_index_module._by_dag) == limits.dags_cached_max


@PROPERTY
@given(workflows(), workflows())
def test_a_shared_index_answers_as_one_built_anew(first: WorkflowDef, second: WorkflowDef) -> None:
    """Whatever DAGs came before, the index found for a DAG is the one its own steps build."""
    dag_index(first.steps)
    for steps in (second.steps, _copy(second.steps), _copy(first.steps)):
        assert _same(dag_index(steps), DagIndex(steps)), steps
    same_dag = dag_index_module.dag_key(first.steps) == dag_index_module.dag_key(second.steps)
    assert (dag_index(second.steps) is dag_index(first.steps)) == same_dag
