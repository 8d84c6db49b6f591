"""The simulator runs the engine's batch path under its faults (dagnats/sim).

A simulated engine step fetches up to `dagnats.sim.settings.command_batch_max` commands, so a
fan-out's results reach the engine together and are appended as one DecideAll (the trace
says so); with crashes, lost acks, redeliveries and conflicting engines injected, every
invariant of the simulator still holds and every run completes.
"""

from __future__ import annotations

from typing import Final

from dagnats.sim import SimCase, run_seed, run_seeds
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Retry, Workflow
from tests.sim_mutants import chain_worker

seeds: Final = 60
branches: Final = 8


def fan_out() -> WorkflowDef:
    builder = Workflow("sim-fan-out", timeout="1h")
    for index in range(branches):
        builder = builder.task(
            f"p{index}", task="work", retry=Retry(max_attempts=3, initial_delay="100ms"),
            timeout="30s",
        )  # fmt: skip
    depends = [f"p{index}" for index in range(branches)]
    return builder.task("join", task="work", depends_on=depends, timeout="30s").build()


def test_a_fan_outs_results_are_batched_and_every_invariant_holds_under_faults() -> None:
    case = SimCase(workflow=fan_out(), worker=chain_worker(), runs=2)
    report = run_seeds(case, range(seeds))
    assert report.ok, "\n".join(
        f"seed {failure.seed}: {violation.invariant}: {violation.message}"
        for failure in report.failures
        for violation in failure.violations
    )
    assert report.seeds == seeds and sum(report.faults.values()) > 0, report.faults
    batched = 0
    for seed in range(10):
        trace = run_seed(case, seed).trace
        batched += sum(": DecideAll -> " in line for line in trace)
    assert batched > 0, "no simulated fetch handed the engine several results of one run"
