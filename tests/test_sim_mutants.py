"""Proving the simulator finds bugs: each planted engine bug, projection bug and worker bug is
caught within 200 seeds, and the real engine passes 2,000 seeds of the same workflow with the
same faults. The bugs only the reference model sees (a retry dropped, a result lost) are also
caught by the default seeds of `make test` on the order example, with and without its run
timeout."""

from __future__ import annotations

import dataclasses
from typing import Final

import msgspec
import pytest

from dagnats.sim import SimCase, run_seeds
from tests.sim_mutants import (
    MUTANTS,
    PROJECTION_MUTANTS,
    WORKER_MUTANTS,
    DropRetry,
    chain_worker,
    chain_workflow,
    factory,
)
from tests.test_sim import EXAMPLE_SEEDS, ROOT, example_case

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
    "drop_retry": {"model_matches"},  # the chain's runs time out (1 h) within their bound
}


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


def order_case(*, run_timeout: bool) -> SimCase:
    case = example_case(ROOT / "examples" / "order")
    if run_timeout:
        assert case.workflow.timeout_ms is not None
        return case
    return dataclasses.replace(
        case, workflow=msgspec.structs.replace(case.workflow, timeout_ms=None)
    )


@pytest.mark.parametrize("run_timeout", [True, False], ids=["run_timeout", "no_run_timeout"])
def test_a_dropped_retry_is_caught_by_the_default_seeds_of_the_order_example(
    run_timeout: bool,
) -> None:
    """With its run timeout the run fails by it, within its bound: only the model sees that a
    retry was due long before; without one the run never ends."""
    case = dataclasses.replace(
        order_case(run_timeout=run_timeout), engine_factory=factory(DropRetry)
    )
    report = run_seeds(case, range(EXAMPLE_SEEDS))
    assert report.failures, f"a dropped retry survived {EXAMPLE_SEEDS} seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    expected = {"model_matches"} if run_timeout else {"model_matches", "run_ends_in_bound"}
    assert broken & expected, broken
    if run_timeout:
        message = report.failures[0].violations[0].message
        assert "(a retry) was due by" in message and "what the model was fed" in message, message


@pytest.mark.parametrize("run_timeout", [True, False], ids=["run_timeout", "no_run_timeout"])
@pytest.mark.parametrize("name", sorted(WORKER_MUTANTS))
def test_a_planted_worker_bug_is_caught_by_the_default_seeds_of_the_order_example(
    name: str, run_timeout: bool
) -> None:
    case = dataclasses.replace(
        order_case(run_timeout=run_timeout), worker_type=WORKER_MUTANTS[name]
    )
    report = run_seeds(case, range(EXAMPLE_SEEDS))
    assert report.failures, f"worker mutant {name} survived {EXAMPLE_SEEDS} seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    expected = {"model_matches"} if run_timeout else {"model_matches", "run_ends_in_bound"}
    assert broken & expected, broken


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
        "lost_result",
    }, struck
