"""Racing, crashing engines on one admission gate (dagnats/sim/admission.py), over seeds: never
more running runs than max_runs, no skipped run started, none left pending at the end."""

from __future__ import annotations

import msgspec
import pytest

from dagnats.sim.admission import simulate_gate
from kernel.workflow import parse_workflow

SEEDS = range(12)


def workflow(**admission: object):  # type: ignore[no-untyped-def]
    return parse_workflow({"name": "raced", "steps": [{"id": "a", "task": "t"}], **admission})


@pytest.mark.parametrize("seed", SEEDS)
def test_racing_engines_never_admit_over_the_limit(seed: int) -> None:
    inputs = [msgspec.json.encode({"n": n}) for n in range(12)]
    report = simulate_gate(seed, workflow(concurrency={"max_runs": 2}), inputs, engines=3)
    assert report.violations == [], report
    assert report.max_running == 2, report  # the limit was reached (the test can fail)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_skipped_singleton_run_never_starts(seed: int) -> None:
    inputs = [msgspec.json.encode({"k": "same", "n": n}) for n in range(8)]
    chosen = workflow(singleton={"key": "k", "mode": "skip"})
    report = simulate_gate(seed, chosen, inputs, engines=2, crash_rate=0.15)
    assert report.violations == [], report
    assert report.max_running == 1, report


def test_crashes_happen_between_admission_and_start() -> None:
    inputs = [msgspec.json.encode({"n": n}) for n in range(10)]
    reports = [
        simulate_gate(seed, workflow(concurrency={"max_runs": 1}), inputs, crash_rate=0.3)
        for seed in SEEDS
    ]
    assert sum(report.crashes for report in reports) > 0
    assert all(report.violations == [] for report in reports), reports
