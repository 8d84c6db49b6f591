"""An engine's resume after a start rolls its crash once, not at each of its calls (a resume
makes a few calls per run in the log, and each restart resumes every run again: rolled at each
call, a seed's restarts grew with the square of its runs)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from dagnats.sim import FaultPlan, SimCase, run_bound_ms
from dagnats.sim.faults import SWARM_SCALE_MAX, SeedFaults, SimulatedCrash
from dagnats.sim.loop import SimLoop
from dagnats.sim.memory import VirtualTime
from dagnats.sim.processes import ProcessGate
from dagnats.sim.runner import quiet
from dagnats.sim.scheduler import Simulation
from dagnats.sim.settings import resume_calls_per_run
from dagnats.sim.trace import Trace
from tests.sim_mutants import chain_worker, chain_workflow

RUNS = 3
RESUME_LINE = "starts (resume_all)"  # (the scheduler's trace: an engine starts, resumes)
FETCH_CRASH = "FAULT crash fetch"  # (its first step's fetch, after the resume)


@dataclass
class World:
    faults: SeedFaults
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    trace: Trace = field(default_factory=Trace)
    time: VirtualTime = field(default_factory=VirtualTime)


def _world(engine_crash: float) -> World:
    plan = FaultPlan.none()
    plan = FaultPlan.parse(f"none,engine_crash={engine_crash}") if engine_crash else plan
    rng = random.Random(3)
    return World(faults=SeedFaults(plan, rng, swarm=False), rng=rng)


def _calls_until_crash(gate: ProcessGate, calls_max: int) -> int | None:
    for call in range(calls_max):
        try:
            gate.check("read")
        except SimulatedCrash:
            return call
    return None


def test_a_resume_that_rolls_a_crash_strikes_once_within_its_calls() -> None:
    for _ in range(20):
        world = _world(1.0)
        gate = ProcessGate(world, "engine.1", "engine_crash")
        gate.resuming(RUNS)
        struck = _calls_until_crash(gate, resume_calls_per_run * RUNS)
        assert struck is not None and 0 <= struck < resume_calls_per_run * RUNS, struck
        assert world.faults.counts == {"engine_crash:read": 1}, world.faults.counts
        assert not gate.alive
        with pytest.raises(SimulatedCrash):
            gate.check("read")  # (dead: after its death)


def test_a_resume_whose_roll_misses_makes_every_call_and_then_each_call_rolls() -> None:
    world = _world(0.0)
    gate = ProcessGate(world, "engine.1", "engine_crash")
    gate.resuming(RUNS)
    assert _calls_until_crash(gate, 10 * RUNS * resume_calls_per_run) is None
    gate.resumed()
    assert gate.strike_in is None and gate.alive
    world = _world(1.0)
    gate = ProcessGate(world, "engine.1", "engine_crash")
    assert _calls_until_crash(gate, 1) == 0, "outside a resume the first call rolls and strikes"


def test_crashes_in_resumes_do_not_grow_with_the_runs_of_a_seed() -> None:
    """Seeds of 8 runs: crashes that strike within a resume, per engine start, stay under what
    one roll per resume gives (at most the plan's probability times the swarm's scale, twice
    over for luck); rolled at each of a resume's calls, they were ~0.4 per start (counts, no
    time)."""
    case = SimCase(workflow=chain_workflow(), worker=chain_worker(), faults=FaultPlan(), runs=8)
    crashes = starts = 0
    for seed in range(20):
        simulation = Simulation(case, seed, bound_ms=run_bound_ms(case.workflow), keep_trace=True)
        loop = SimLoop()  # type: ignore[abstract]
        try:
            with quiet():
                result = loop.run_until_complete(simulation.run())
        finally:
            loop.close()
        assert result.ok, result.violations
        last: dict[str, str] = {}  # actor -> its last trace line
        for _, actor, text in simulation.trace.entries:
            line = text if isinstance(text, str) else ""
            after_start = last.get(actor) == RESUME_LINE
            crashes += after_start and line.startswith("FAULT crash") and line != FETCH_CRASH
            starts += line == RESUME_LINE
            last[actor] = line
    assert starts >= 20, starts
    bound = starts * FaultPlan().engine_crash * SWARM_SCALE_MAX * 2
    assert crashes <= bound, (crashes, starts, bound)
