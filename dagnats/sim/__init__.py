"""Deterministic simulation: the real engine and worker SDK over in-memory protocols.

`dagnats sim WORKFLOW --worker MODULE:ATTR` and `dagnats.testing.simulate(...)` run a
workflow with its real handlers under a seeded scheduler that injects faults and checks
invariants after every step; a failing seed replays exactly. See docs/simulation.md.

Modules: `memory` and `memory_queue` (the protocols in memory, over virtual time), `faults`
(kinds, plans, dice), `invariants` (the oracle), `model` (a reference model of the run's
rules, written apart from the kernel) and `model_check` (its invariant, `model_matches`),
`case` (what to simulate, what a seed gives), `processes` (the simulated engines, workers and
their gates), `scheduler` (one seed), `bounds` (each run's bound of virtual time), `runner`
(many seeds, reports), `loop`, `projector`, `stores`
(the projection's in-memory databases), `trace`, `settings` (every bound of the simulator).
The `dagnats sim` command lives in `dagnats/cli/sim.py`.

sim/ may import `dagnats.runtime` (the engine and its protocols), `dagnats.worker`, `kernel`
and `projections`; it is imported by `dagnats.testing` and `dagnats.cli`. Nothing under
`kernel/`, `steps/` or `projections/` imports it, and it never imports `dagnats.cli`.
"""

from dagnats.sim.case import EngineFactory, SeedResult, SimCase
from dagnats.sim.faults import FAULT_KINDS, FaultPlan, InjectedHandlerError, SimulatedCrash
from dagnats.sim.invariants import RunView, UserInvariant, Violation
from dagnats.sim.runner import SimReport, run_bound_ms, run_seed, run_seeds

__all__ = [
    "FAULT_KINDS",
    "EngineFactory",
    "FaultPlan",
    "InjectedHandlerError",
    "RunView",
    "SeedResult",
    "SimCase",
    "SimReport",
    "SimulatedCrash",
    "UserInvariant",
    "Violation",
    "run_bound_ms",
    "run_seed",
    "run_seeds",
]
