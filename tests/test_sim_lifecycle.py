"""Reopen and terminate at random points in the simulator (dagnats/sim/lifecycle.py): racing,
crashing real engines and an operator who terminates and reopens runs (`dagnats run
terminate`, `dagnats run retry`). Steps kept by a reopen never run again, a terminated run
ends with no compensation, every run ends; and the checker catches a log that breaks them."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.sim.lifecycle import check_lifecycle, simulate_lifecycle
from dagnats.sim.memory import MemoryEventLog, VirtualTime
from kernel import codec
from kernel.commands import TerminateRun
from kernel.event_base import NULL, ErrorInfo
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    RunReopened,
    RunStarted,
    RunTerminated,
    StepCompleted,
    StepScheduled,
)
from kernel.workflow import WorkflowDef, parse_workflow

WORKFLOW = parse_workflow({"name": "lifecycle", "steps": [
    {"id": "a", "task": "t", "compensate": "undo"},
    {"id": "b", "task": "t", "depends_on": ["a"]},
    {"id": "c", "task": "t", "depends_on": ["b"]},
    {"id": "undo", "task": "t"},
]})  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), runs=st.integers(min_value=1, max_value=4))
def test_reopen_and_terminate_at_random_points_keep_the_invariants(seed: int, runs: int) -> None:
    report = simulate_lifecycle(seed, WORKFLOW, runs)
    assert report.violations == [], (seed, report.violations)


def test_the_operator_reopens_and_terminates_runs_in_the_seeds() -> None:
    reports = [simulate_lifecycle(seed, WORKFLOW, 3) for seed in range(30)]
    assert all(r.violations == [] for r in reports), [r.violations for r in reports]
    assert sum(r.reopened for r in reports) > 0  # reopens that went through, not only sent
    assert sum(r.terminated for r in reports) > 0
    assert sum(r.crashes for r in reports) > 0


def forged(*messages: tuple[AnyEvent, ...]) -> MemoryEventLog:
    log = MemoryEventLog(VirtualTime())
    command = TerminateRun(run_id="r0", at_ms=1, reason="forged")
    for seq, events in enumerate(messages):
        payload = codec.encode_decision(command, events)
        log.append_now("r0", payload, f"m{seq}", seq)
    return log


def started(workflow: WorkflowDef) -> tuple[AnyEvent, ...]:
    return (RunStarted(run_id="r0", workflow=workflow, input=msgspec.Raw(b"null"), at_ms=1),)


def ran(step_id: str, attempt: int) -> tuple[AnyEvent, ...]:
    return (
        StepScheduled(step_id=step_id, attempt=attempt, input=NULL, at_ms=2),
        StepCompleted(step_id=step_id, attempt=attempt, output=NULL, at_ms=3),
    )


def test_the_checker_sees_a_kept_step_that_runs_again() -> None:
    log = forged(
        started(WORKFLOW), ran("a", 1),
        (RunTerminated(reason="stuck", at_ms=4),),
        (RunReopened(from_steps=("b",), reset=("b", "c"), at_ms=5),),
        ran("a", 2),
    )  # fmt: skip
    violations = check_lifecycle(log, ["r0"], 0).violations
    assert any("kept step a scheduled again" in v for v in violations), violations


def test_the_checker_sees_a_compensation_after_terminate() -> None:
    error = ErrorInfo(message="late", kind="non_retryable")
    log = forged(
        started(WORKFLOW), ran("a", 1),
        (RunTerminated(reason="stuck", at_ms=4),),
        (CompensationStarted(steps=("a",), outcome="failed", error=error, at_ms=5),),
    )  # fmt: skip
    violations = check_lifecycle(log, ["r0"], 0).violations
    assert any("compensation after run.terminated" in v for v in violations), violations


def test_the_simulation_is_the_same_for_the_same_seed() -> None:
    first = simulate_lifecycle(7, WORKFLOW, 3)
    again = simulate_lifecycle(7, WORKFLOW, 3)
    assert first == again
