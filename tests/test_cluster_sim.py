"""Partition ownership in the simulator (dagnats/sim/ownership.py): the real engine under
partitions that move mid decision and engines paused past their lease, two engines believing
they own one partition, and the seed's invariants still hold (no step result twice, no
completed step re-run, every run ends), with the history append's expected sequence last."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagnats.sim import FaultPlan, SimCase
from dagnats.sim.ownership import (
    OwnedAppend,
    OwnershipPlan,
    OwnershipRecord,
    owner_violations,
    run_owned_seed,
)
from tests.sim_mutants import chain_worker, chain_workflow

SEEDS = range(24)


def _case(racing: float = 1.0) -> SimCase:
    faults = FaultPlan(racing_engine=racing)
    return SimCase(workflow=chain_workflow(), worker=chain_worker(), runs=3, faults=faults)


def test_a_seed_sweep_keeps_every_invariant_while_partitions_move_and_engines_pause() -> None:
    plan = OwnershipPlan(ownership_moves=0.1, pause_past_lease=0.1)
    totals: dict[str, int] = {}
    for seed in SEEDS:
        result, record = run_owned_seed(_case(), seed, plan)
        assert result.ok, f"seed {seed}: {[str(v) for v in result.violations]}"
        ended = set(result.runs.values()) <= {"completed", "failed", "cancelled"}
        assert ended, f"seed {seed}: a run did not end: {result.runs}"
        assert owner_violations(record) == [], f"seed {seed}"
        for name, count in record.counts.items():
            totals[name] = totals.get(name, 0) + count
    # The faults struck, and their consequences happened: refused appends (lost mid
    # decision, or not the owner) and appends by an engine whose lease had moved on.
    for name in ("ownership_moves", "pause_past_lease", "refused_not_owner", "stale_appended"):
        assert totals.get(name, 0) > 0, f"{name} never happened in {len(SEEDS)} seeds: {totals}"
    assert totals["appended"] > totals.get("stale_appended", 0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**31),
    moves=st.floats(min_value=0.0, max_value=0.3),
    pauses=st.floats(min_value=0.0, max_value=0.3),
    racing=st.sampled_from([0.0, 1.0]),
)
def test_drawn_ownership_fault_schedules_keep_every_invariant(
    seed: int, moves: float, pauses: float, racing: float
) -> None:
    plan = OwnershipPlan(ownership_moves=moves, pause_past_lease=pauses)
    result, record = run_owned_seed(_case(racing), seed, plan)
    assert result.ok, [str(v) for v in result.violations]
    assert owner_violations(record) == []


def test_a_seed_with_ownership_faults_replays_exactly() -> None:
    plan = OwnershipPlan(ownership_moves=0.2, pause_past_lease=0.2)
    first, first_record = run_owned_seed(_case(), 7, plan)
    second, second_record = run_owned_seed(_case(), 7, plan)
    assert first.digest == second.digest
    assert first_record.counts == second_record.counts
    assert first_record.appends == second_record.appends


def test_the_owner_rule_flags_a_fresh_append_under_an_older_term() -> None:
    record = OwnershipRecord(
        appends=[
            OwnedAppend(1, "run-1", "engine-1.1", 3, 2, stale=False),
            OwnedAppend(2, "run-1", "engine-2.1", 3, 1, stale=False),
        ]
    )
    problems = owner_violations(record)
    assert len(problems) == 1 and "term 1 after term 2" in problems[0]
    stale = OwnershipRecord(
        appends=[
            OwnedAppend(1, "run-1", "engine-1.1", 3, 2, stale=False),
            OwnedAppend(2, "run-1", "engine-2.1", 3, 1, stale=True),
        ]
    )
    assert owner_violations(stale) == []


def test_out_of_range_probabilities_are_refused_with_their_name() -> None:
    try:
        OwnershipPlan(pause_past_lease=1.5)
    except ValueError as error:
        assert "pause_past_lease=1.5" in str(error)
    else:
        raise AssertionError("a probability of 1.5 was accepted")
