"""Results carry the life tag of their task (kernel/commands `Life`): a result of a task of
another life of the run (its id purged and started again while the old task ran) decides
nothing; a result of this life, or one without a tag (a worker of before life tags), decides as
before."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given as hypothesis_given
from hypothesis import strategies as st

from kernel.commands import CompleteTask, FailTask, TaskStarted
from kernel.decide import decide
from kernel.effects import EnqueueTask, life_of, life_tag
from kernel.react import react
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from tests.kernel_dsl import RUN_ID, start, task, workflow

Result = TaskStarted | CompleteTask | FailTask


def _running(seed: int) -> tuple[RunState, EnqueueTask]:
    """A run of one task step `a`, started with `seed`: its state and the task it enqueued."""
    state = INITIAL_STATE
    enqueued: list[EnqueueTask] = []
    events = decide(INITIAL_STATE, start(workflow(task("a")), at_ms=1_000, seed=seed))
    assert isinstance(events, tuple)
    for event in events:
        state = evolve(state, event)
        enqueued.extend(e for e in react(state, event) if isinstance(e, EnqueueTask))
    assert len(enqueued) == 1
    return state, enqueued[0]


def _result(kind: str, life: str | msgspec.UnsetType) -> Result:
    if kind == "started":
        return TaskStarted(run_id=RUN_ID, at_ms=2_000, step_id="a", attempt=1, life=life)
    if kind == "complete":
        return CompleteTask(run_id=RUN_ID, at_ms=2_000, step_id="a", attempt=1, life=life,
                            output=msgspec.Raw(b"1"))  # fmt: skip
    return FailTask(run_id=RUN_ID, at_ms=2_000, step_id="a", attempt=1, life=life, error="x")


seeds = st.integers(0, 2**63 - 1)
kinds = st.sampled_from(["started", "complete", "fail"])


@hypothesis_given(seeds, seeds, kinds)
def test_a_result_of_another_life_decides_nothing(seed: int, other: int, kind: str) -> None:
    state, enqueued = _running(seed)
    own = enqueued.msg_id.partition("~")[2]
    assert own == life_tag(seed)
    assert decide(state, _result(kind, own)), "a result of this life decides"
    if life_tag(other) != own:
        assert decide(state, _result(kind, life_tag(other))) == ()


@pytest.mark.parametrize("kind", ["started", "complete", "fail"])
def test_a_result_without_a_life_tag_decides_as_before(kind: str) -> None:
    state, _ = _running(7)
    untagged = decide(state, _result(kind, msgspec.UNSET))
    assert untagged == decide(state, _result(kind, life_tag(7))) and untagged


def test_a_result_without_a_life_tag_is_stored_as_before() -> None:
    """An untagged result encodes without the field (histories of before life tags)."""
    encoded = msgspec.json.encode(_result("complete", msgspec.UNSET))
    assert b"life" not in encoded
    assert b'"life":"0000000b"' in msgspec.json.encode(_result("complete", life_tag(11)))


def test_a_task_message_ids_life_is_what_its_results_carry() -> None:
    state, enqueued = _running(0x1_2345_6789)
    assert life_of(enqueued.msg_id) == life_tag(state.seed) == "23456789"
    assert life_of("r1:a:1") is msgspec.UNSET  # (a task of before life tags)
