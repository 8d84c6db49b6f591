"""The run's advance through the reverse-dependency index (kernel/dag_index.py): the same
decisions as a scan of every step, on random DAGs and reachable runs, and O(1) work per event."""

from __future__ import annotations

from unittest.mock import patch

import msgspec
from hypothesis import HealthCheck, given, settings

import kernel.decide as decide_module
from kernel.commands import CompleteTask
from kernel.dag_index import DagIndex, dag_index
from kernel.decide import decide
from kernel.lifecycle import Builder
from kernel.queries import handler_role
from kernel.reducer import evolve
from kernel.state import DONE_STEP_STATUSES, RunState, StepState
from kernel.workflow import StepDef, WorkflowDef
from tests.kernel_dsl import complete, start, task, workflow
from tests.kernel_dsl import given as given_run
from tests.strategies import Run, handler_ids, runs, workflows

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _scanned_role(step_defs: tuple[StepDef, ...], step_id: str) -> tuple[str, str] | None:
    """handler_role as it was: the first step naming it, on_failure before compensate."""
    for step_def in step_defs:
        if step_def.on_failure == step_id:
            return ("on_failure", step_def.id)
        if step_def.compensate == step_id:
            return ("compensate", step_def.id)
    return None


def _ready(state: RunState) -> list[str]:
    """The O(n) answer: pending steps outside the handlers whose dependencies are all done."""
    handlers = {s.on_failure for s in state.step_defs} | {s.compensate for s in state.step_defs}
    by_id = dict(zip(state.step_ids, state.steps, strict=True))
    return [
        step_def.id
        for step_def in state.step_defs
        if by_id[step_def.id].status == "pending"
        and step_def.id not in handlers
        and all(by_id[dep].status in DONE_STEP_STATUSES for dep in step_def.depends_on)
    ]


@PROPERTY
@given(workflows())
def test_the_index_answers_as_a_scan_of_the_steps(wf: WorkflowDef) -> None:
    index = dag_index(wf.steps)
    assert dag_index(wf.steps) is index, "one index per step_defs tuple"
    assert index.handlers == handler_ids(wf)
    positions = {step_def.id: position for position, step_def in enumerate(wf.steps)}
    for position, step_def in enumerate(wf.steps):
        deps = [positions[dep] for dep in step_def.depends_on]
        assert list(index.dependencies[position]) == deps
        dependents = [i for i, other in enumerate(wf.steps) if step_def.id in other.depends_on]
        assert list(index.dependents[position]) == dependents
        assert index.roles.get(step_def.id) == _scanned_role(wf.steps, step_def.id)
    body = [i for i, s in enumerate(wf.steps) if s.id not in index.handlers]
    assert list(index.body_reversed) == body[::-1]


@PROPERTY
@given(runs())
def test_advancing_the_touched_steps_decides_as_a_scan_of_every_step(run: Run) -> None:
    """Every decision equals the one a full scan makes, and no running run without a
    concurrency limit is left with a ready step (what lets a decision look only at the steps
    its events touched)."""
    for record in run.records:
        with patch.object(decide_module, "_touched", lambda *_: None):
            scanned = decide(record.before, record.command)
        assert record.decided == scanned, f"{record.command!r}"
        after = record.after
        assert after.workflow is not None
        if after.status == "running" and after.workflow.max_concurrent_steps is None:
            assert _ready(after) == [], f"ready steps left after {record.command!r}"
        for step_id in after.step_ids:
            assert handler_role(after, step_id) == _scanned_role(after.step_defs, step_id)


def test_the_index_can_tell_a_wrong_answer() -> None:
    wf = workflow(task("a"), task("b", "a"), task("c", "a", "b"))
    index = DagIndex(wf.steps)
    assert index.dependents == ((1, 2), (2,), ())
    assert index.dependencies == ((), (0,), (0, 1))
    state = given_run(start(wf)).state
    pending = [s for s in state.steps if s.status == "pending"]
    assert [s.step_id for s in pending] == ["b", "c"] and _ready(state) == []
    forced = _with_status(state, "a", "completed")
    assert _ready(forced) == ["b"], "the O(n) answer sees a ready step"


def _with_status(state: RunState, step_id: str, status: str) -> RunState:
    index = state.index_of(step_id)
    step: StepState = msgspec.structs.replace(state.steps[index], status=status)
    steps = (*state.steps[:index], step, *state.steps[index + 1 :])
    return msgspec.structs.replace(state, steps=steps)


def _fan_out_calls(width: int, *, scan: bool = False) -> int:
    """How many steps the advance looked at over a fan-out of `width` + join (`scan`: as a
    scan of every step would)."""
    wf = workflow(
        task("root"), *(task(f"s{i}", "root") for i in range(width)),
        task("join", *(f"s{i}" for i in range(width))),
    )  # fmt: skip
    state = given_run(start(wf), complete("root", 0)).state
    looked = 0
    original = decide_module._advance_once

    def counted(builder: Builder, candidates: list[int] | None = None) -> bool:
        nonlocal looked
        if scan:
            candidates = None
        looked += len(builder.state.steps) if candidates is None else len(candidates)
        return original(builder, candidates)

    with patch.object(decide_module, "_advance_once", counted):
        commands: list[CompleteTask] = [complete(f"s{i}", i) for i in range(width)]
        for command in (*commands, complete("join", 0)):
            decided = decide(state, command)
            assert isinstance(decided, tuple) and decided, f"{command!r} decided {decided!r}"
            for event in decided:
                state = evolve(state, event)
    assert state.status == "completed", state.status
    return looked


def test_a_fan_out_looks_at_a_bounded_number_of_steps_per_event() -> None:
    """Each completion looks at its step and the join, not at every step: linear, not
    quadratic, in the fan-out's width (a scan of every step would be)."""
    narrow, wide = _fan_out_calls(10), _fan_out_calls(100)
    assert wide <= 3 * 101, f"{wide} steps looked at for 101 completions"
    assert wide <= 11 * narrow, f"{narrow} looked at, width 10; {wide}, width 100"
    scanned = _fan_out_calls(100, scan=True)
    assert scanned > 100 * 100 and scanned > 20 * wide, "the count tells a scan"
