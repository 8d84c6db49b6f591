"""The simulator's work is counted, so a blow-up shows as a count, never as a timed assertion:
the oracle decodes each history message once and folds each event once for all the invariants
(the snapshot check and the reference model reuse them); the counts add up in the report; and
freezing the heap while seeds run changes no seed's history or verdict."""

from __future__ import annotations

import gc

from dagnats.sim import FaultPlan, SimCase, run_bound_ms, run_seeds
from dagnats.sim.case import SeedResult
from dagnats.sim.loop import SimLoop
from dagnats.sim.scheduler import Simulation
from kernel import codec
from kernel.admission import is_gate_id
from tests.sim_mutants import chain_worker, chain_workflow

SEEDS = range(8)


def _case() -> SimCase:
    return SimCase(workflow=chain_workflow(), worker=chain_worker(), faults=FaultPlan())


def _simulate(case: SimCase, seed: int) -> tuple[Simulation, SeedResult]:
    simulation = Simulation(case, seed, bound_ms=run_bound_ms(case.workflow))
    loop = SimLoop()  # type: ignore[abstract]
    try:
        result = loop.run_until_complete(simulation.run())
    finally:
        loop.close()
    return simulation, result


def test_the_oracle_decodes_each_message_once_and_folds_each_event_once() -> None:
    case = _case()
    for seed in SEEDS:
        simulation, result = _simulate(case, seed)
        assert result.ok, result.violations
        runs = [m for m in simulation.log.messages if not is_gate_id(m.run_id)]
        events = sum(len(codec.decode_decision(m.payload).events) for m in runs)
        assert runs and events > len(runs)
        assert (result.decodes, result.folds) == (len(runs), events), seed


def test_the_report_adds_up_the_counts_of_its_seeds() -> None:
    case = _case()
    results: list[SeedResult] = []
    report = run_seeds(case, SEEDS, on_result=results.append, failures_max=len(SEEDS))
    assert report.ok and len(results) == len(SEEDS)
    assert report.folds == sum(r.folds for r in results) > 0
    assert report.decodes == sum(r.decodes for r in results) > 0
    assert report.steps == sum(r.steps for r in results) > 0


def test_seeds_give_the_same_histories_with_the_heap_frozen_or_not() -> None:
    case = _case()
    frozen = {r.seed: r for r in _results(case)}
    gc.freeze()  # (run_seeds then leaves the caller's freeze alone)
    try:
        assert gc.get_freeze_count() > 0
        again = {r.seed: r for r in _results(case)}
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0, "run_seeds left the heap frozen"
    for seed in SEEDS:
        first, second = frozen[seed], again[seed]
        assert (first.digest, first.violations, first.runs, first.steps, first.folds) == (
            second.digest,
            second.violations,
            second.runs,
            second.steps,
            second.folds,
        )


def _results(case: SimCase) -> list[SeedResult]:
    results: list[SeedResult] = []
    run_seeds(case, SEEDS, on_result=results.append, failures_max=len(SEEDS))
    return results
