"""Proving the simulator finds bugs: each planted engine bug and each planted projection bug is
caught within 200 seeds, and the real engine passes 2,000 seeds of the same workflow with the
same faults."""

from __future__ import annotations

from typing import Final

import pytest

from dagnats.runtime.engine import Engine
from dagnats.runtime.protocols import DeadLetters, EventLog, TaskPublisher, Timers
from dagnats.sim import SimCase, run_seeds
from dagnats.sim.case import EngineFactory
from tests.sim_mutants import MUTANTS, PROJECTION_MUTANTS, chain_worker, chain_workflow

SEEDS_TO_CATCH: Final = 200
SEEDS_CORRECT: Final = 2_000
# The invariants each planted bug must break one of (others may break too). An append over a
# message the engine did not see either does not fold, or folds (evolve trusts) into a state
# that is not the engine's.
EXPECTED: Final = {
    "ack_before_append": {"acked_command_absorbed"},
    "ignore_expected_sequence": {"history_folds", "engine_state_is_fold"},
    "redispatch_completed_on_resume": {"completed_step_not_dispatched"},
    "timer_fires_twice": {"attempt_dispatched_once"},
    "trust_stale_cache": {"acked_command_absorbed"},
}


def factory(engine_type: type[Engine]) -> EngineFactory:
    def build(history: EventLog, tasks: TaskPublisher, timers: Timers, dead: DeadLetters) -> Engine:
        return engine_type(history, tasks, timers, dead)

    return build


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_planted_bug_is_caught_within_200_seeds(name: str) -> None:
    case = SimCase(
        workflow=chain_workflow(), worker=chain_worker(), engine_factory=factory(MUTANTS[name])
    )
    report = run_seeds(case, range(SEEDS_TO_CATCH))
    assert report.failures, f"mutant {name} survived {SEEDS_TO_CATCH} seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    assert EXPECTED[name] & broken, f"mutant {name} broke {broken}, not {EXPECTED[name]}"


@pytest.mark.parametrize("name", sorted(PROJECTION_MUTANTS))
def test_a_planted_projection_bug_is_caught_within_200_seeds(name: str) -> None:
    case = SimCase(
        workflow=chain_workflow(), worker=chain_worker(), projection=PROJECTION_MUTANTS[name]
    )
    report = run_seeds(case, range(SEEDS_TO_CATCH))
    assert report.failures, f"mutant {name} survived {SEEDS_TO_CATCH} seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    assert broken == {"projections_equal_rebuild"}, f"mutant {name} broke {broken}"


def test_the_real_engine_passes_2000_seeds_of_the_same_case() -> None:
    case = SimCase(workflow=chain_workflow(), worker=chain_worker())
    report = run_seeds(case, range(SEEDS_CORRECT))
    assert report.ok, [violation for failure in report.failures for violation in failure.violations]
    assert report.seeds == SEEDS_CORRECT
    assert report.statuses.get("completed", 0) > SEEDS_CORRECT // 2, report.statuses
    # The faults really struck: every kind, many times over.
    struck = {name.split(":")[0] for name in report.faults}
    assert struck >= {
        "engine_crash",
        "worker_crash",
        "duplicate_delivery",
        "late_delivery",
        "lost_heartbeat",
        "racing_engine",
        "clock_jump",
        "handler_error",
        "handler_hang",
        "snapshot_lost",
        "client_cancel",
        "projector_crash",
    }, struck
