"""What the seeds of one call share is set up once and changes no seed's outcome: the engines'
memo of valid workflows (a valid workflow is validated once per call, an invalid one by every
engine that meets it), the wrapped handlers; each task message is decoded once (the oracle's
decoding is the attempt log's)."""

from __future__ import annotations

import sys

import msgspec
import pytest

from dagnats.sim import SimCase, run_seed, run_seeds
from dagnats.sim import invariants as invariants_module
from dagnats.sim import model_check as model_check_module
from dagnats.sim.case import SeedResult
from dagnats.sim.faults import FaultPlan
from dagnats.sim.shared import case_shared
from dagnats.worker import decode_task
from kernel.effects import EnqueueTask
from kernel.workflow import WorkflowDef
from kernel.workflow.rules import validate_workflow
from tests.sim_mutants import chain_worker, chain_workflow

SEEDS = 6


def _case(workflow: WorkflowDef | None = None) -> SimCase:
    return SimCase(workflow=workflow or chain_workflow(3), worker=chain_worker())


def _counting_validation(monkeypatch: pytest.MonkeyPatch) -> list[WorkflowDef]:
    """Count the calls of `validate_workflow` in the runtime modules that import it."""
    seen: list[WorkflowDef] = []

    def counting(workflow: WorkflowDef) -> object:
        seen.append(workflow)
        return validate_workflow(workflow)

    importers = [
        module
        for name, module in sorted(sys.modules.items())
        if name.startswith("dagnats.runtime")
        and getattr(module, "validate_workflow", None) is validate_workflow
    ]
    assert importers, "no runtime module imports validate_workflow"
    for module in importers:
        monkeypatch.setattr(module, "validate_workflow", counting)
    return seen


def test_a_valid_workflow_is_validated_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting_validation(monkeypatch)
    plan = FaultPlan(engine_crash=0.02, racing_engine=1.0)  # (two engines a seed, restarts)
    case = SimCase(workflow=chain_workflow(3), worker=chain_worker(), faults=plan, swarm=False)
    report = run_seeds(case, range(SEEDS), failures_max=SEEDS)
    assert report.ok and report.seeds == SEEDS, report.failures[:1]
    crashes = sum(n for kind, n in report.faults.items() if kind.startswith("engine_crash"))
    assert crashes >= 1, "no engine restarted: the seeds ran one incarnation each"
    assert len(seen) == 1, f"validated {len(seen)} times over {SEEDS} seeds"


def test_an_invalid_workflow_is_refused_by_every_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = chain_workflow(3)
    broken = msgspec.structs.replace(workflow.steps[1], depends_on=("no-such-step",))
    invalid = msgspec.structs.replace(workflow, steps=(workflow.steps[0], broken))
    seen = _counting_validation(monkeypatch)
    results: list[SeedResult] = []
    case = SimCase(workflow=invalid, worker=chain_worker(), faults=FaultPlan.none())
    run_seeds(case, range(3), on_result=results.append, failures_max=3)
    assert len(seen) >= 3, "an invalid workflow was memoized as valid"
    assert all(set(result.runs.values()) == {"new"} for result in results), results[0].runs


def test_a_seed_gives_the_same_outcome_alone_or_after_others() -> None:
    case = _case()
    together: list[SeedResult] = []
    run_seeds(case, range(SEEDS), on_result=together.append, failures_max=SEEDS)
    for result in together:
        alone = run_seed(case, result.seed, keep_trace=False)
        assert (alone.digest, alone.faults, alone.runs, alone.steps, alone.violations) == (
            result.digest,
            result.faults,
            result.runs,
            result.steps,
            result.violations,
        ), f"seed {result.seed}"


def test_the_handlers_are_wrapped_once_per_case() -> None:
    case = _case()
    shared = case_shared(case)
    assert set(shared.handlers) == set(case.worker.handlers)
    assert all(shared.handlers[n] is not h for n, h in case.worker.handlers.items())


def test_each_task_message_is_decoded_once_by_the_oracle_and_the_attempt_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[bytes] = []

    def counting(data: bytes) -> EnqueueTask:
        decoded.append(data)
        return decode_task(data)

    for module in (model_check_module, invariants_module):
        monkeypatch.setattr(module, "decode_task", counting)
    result = run_seed(_case(), 3, keep_trace=False)
    assert result.ok, result.violations
    assert decoded, "no task was published"
    assert len(decoded) == len(set(decoded)), "a task message was decoded twice"
