"""The simulator runs the engine's batch path under its faults (dagnats/sim).

A simulated engine step fetches up to `dagnats.sim.settings.command_batch_max` commands, so a
fan-out's results reach the engine together and are appended as one DecideAll (the trace
says so); with crashes, lost acks, redeliveries and conflicting engines injected, every
invariant of the simulator still holds and every run completes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pytest

from dagnats.runtime import batched
from dagnats.sim import SimCase, run_seed, run_seeds
from kernel import batch as kernel_batch
from kernel.batch import Decided
from kernel.commands import AnyCommand, Rejection
from kernel.events import AnyEvent
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Retry, Workflow
from tests.sim_mutants import chain_worker

seeds: Final = 60
Kept = tuple[tuple[AnyCommand, ...], tuple[AnyEvent, ...]]
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


def test_a_batch_path_that_acks_a_result_it_left_out_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = kernel_batch.kept

    def drop_last(commands: Sequence[AnyCommand], decisions: Sequence[Decided]) -> Kept:
        commands, events = kept(commands, decisions)
        if len(commands) < 3:
            return commands, events
        last = _last_events(decisions)  # the last command's events, left out
        assert not isinstance(last, Rejection)
        return commands[:-1], events[: len(events) - len(last)]  # acked all the same

    monkeypatch.setattr(batched, "kept", drop_last)
    case = SimCase(workflow=fan_out(), worker=chain_worker(), runs=2)
    report = run_seeds(case, range(seeds), failures_max=1)
    assert not report.ok, "a lost result went unnoticed"


def _last_events(decisions: Sequence[Decided]) -> Decided:
    return next(d for d in reversed(decisions) if not isinstance(d, Rejection) and d)
