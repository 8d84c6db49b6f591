"""Runs of one workflow definition share one value of it (kernel/definitions.py): keyed by the
definition's encoding, so two definitions never share; bounded; a replay folds to the same
state (the same bytes) whether the memo is cold, warm or full of others."""

from __future__ import annotations

from collections.abc import Iterator
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from kernel import definitions, limits
from kernel.codec import decode_event, encode
from kernel.dag_index import dag_index
from kernel.events import NULL, RunStarted
from kernel.reducer import evolve, fold
from kernel.state import INITIAL_STATE, RunState
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from tests.kernel_dsl import given as given_run
from tests.kernel_dsl import start
from tests.strategies import Run, runs

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def cold_memo() -> Iterator[None]:
    """Each test starts with no shared definition and leaves none behind."""
    with (
        patch.dict(definitions._definitions, clear=True),
        patch.dict(definitions._objects, clear=True),
    ):
        yield


def _workflow(name: str = "w", *, jitter: float = 0.0, second_depends: bool = True) -> WorkflowDef:
    retry = RetryPolicy(max_attempts=2, jitter=jitter)
    return WorkflowDef(
        name=name,
        steps=(
            StepDef(id="a", task="t", retry=retry),
            StepDef(id="b", task="t", depends_on=("a",) if second_depends else ()),
        ),
    )


def _copy(workflow: WorkflowDef) -> WorkflowDef:
    """An equal definition that is another object (as each run's decoded RunStarted has)."""
    copy = msgspec.json.decode(msgspec.json.encode(workflow), type=WorkflowDef)
    assert copy == workflow and copy is not workflow
    return copy


def _run_started(workflow: WorkflowDef, run_id: str) -> RunStarted:
    return RunStarted(run_id=run_id, workflow=workflow, input=NULL, at_ms=1, seed=0)


def _started(workflow: WorkflowDef, run_id: str = "r1") -> RunState:
    return given_run(start(workflow, run_id=run_id)).state


def test_runs_of_one_definition_share_its_value_and_its_index() -> None:
    first = definitions.shared(_workflow())
    second = definitions.shared(_copy(_workflow()))
    assert second is first, "an equal definition decoded anew shares the first value"
    assert second.workflow.steps is first.workflow.steps
    assert dag_index(second.workflow.steps) is dag_index(first.workflow.steps)
    assert second.step_ids == ("a", "b")
    assert [step.status for step in second.steps] == ["pending", "pending"]


def test_two_definitions_never_share() -> None:
    base = definitions.shared(_workflow())
    others = [
        _workflow(name="other"),
        _workflow(second_depends=False),  # the DAG differs, nothing else
        _workflow(jitter=-0.0),  # equal by ==, not by its bytes
    ]
    assert others[2] == _workflow(), "(why the key is the encoding, not equality)"
    for other in others:
        found = definitions.shared(other)
        assert found is not base, f"{other!r} shared {base.workflow!r}"
        assert found.workflow is other, "the first value met is kept"
        assert dag_index(found.workflow.steps) is not dag_index(base.workflow.steps)
    assert len(definitions._definitions) == 1 + len(others)


def test_the_memo_is_bounded_and_lets_the_oldest_go() -> None:
    count = limits.definitions_cached_max + 5
    kept = [definitions.shared(_workflow(name=f"w{index}")) for index in range(count)]
    assert len(definitions._definitions) == limits.definitions_cached_max
    assert definitions.shared(_copy(kept[-1].workflow)) is kept[-1], "the newest is kept"
    assert definitions.shared(_copy(kept[0].workflow)) is not kept[0], "the oldest went"
    assert len(definitions._definitions) == limits.definitions_cached_max
    assert len(definitions._objects) == limits.definitions_cached_max


class _CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0
        self.encoder = msgspec.json.Encoder()

    def encode(self, value: object) -> bytes:
        self.calls += 1
        return self.encoder.encode(value)


def test_a_definition_object_met_again_is_not_encoded_again() -> None:
    counting = _CountingEncoder()
    workflow = _workflow()
    with patch.object(definitions, "_encoder", counting):
        first = definitions.shared(workflow)
        assert definitions.shared(workflow) is first
        assert counting.calls == 1, "the same object: found by identity"
        assert definitions.shared(_copy(workflow)) is first
        assert counting.calls == 2, "an equal object decoded anew: found by its bytes"


def test_a_large_definition_is_not_kept_and_still_folds() -> None:
    metadata = msgspec.Raw(msgspec.json.encode({"x": "y" * limits.definition_bytes_cached_max}))
    large = msgspec.structs.replace(_workflow(), metadata=metadata)
    found = definitions.shared(large)
    assert found.workflow is large
    assert not definitions._definitions, "a definition over the byte bound is not kept"
    assert definitions.shared(_copy(large)) is not found
    state = _started(large)
    assert state.workflow == large


def test_a_run_state_holds_the_shared_value() -> None:
    workflow = _workflow()
    one = evolve(INITIAL_STATE, _run_started(workflow, "r1"))
    two = evolve(INITIAL_STATE, _run_started(_copy(workflow), "r2"))
    assert one.workflow is two.workflow
    assert one.step_defs is two.step_defs
    assert one.steps is two.steps, "the first state of the steps is shared too"
    assert _started(_copy(workflow), "r3").workflow is one.workflow


@PROPERTY
@given(runs())
def test_a_replay_folds_to_the_same_bytes_cold_warm_or_crowded(run: Run) -> None:
    """The fold of a history decoded from its bytes encodes alike with a cold memo, a warm
    one (the definition kept from an earlier run) and one full of other definitions."""
    stored = [encode(event) for event in run.events]
    assert stored, "a generated run starts"
    definitions._definitions.clear()
    cold = fold(decode_event(data) for data in stored)
    warm = fold(decode_event(data) for data in stored)
    assert warm.workflow is cold.workflow, "the second replay shares the first's definition"
    for index in range(limits.definitions_cached_max):
        definitions.shared(_workflow(name=f"crowd{index}"))
    crowded = fold(decode_event(data) for data in stored)
    assert encode(cold) == encode(run.final)
    assert encode(warm) == encode(run.final)
    assert encode(crowded) == encode(run.final)
    assert cold == warm == crowded == run.final
