"""The simulator end to end: determinism, the examples under faults, invariants, the real
engine only, stalls, user invariants, `dagnats.testing`.

`make test` runs 200 seeds of every example; `make sim` (DAGNATS_SIM_FULL=1) runs 10,000.
"""

from __future__ import annotations

import ast
import asyncio
import os
from pathlib import Path
from random import Random
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find

from dagnats.runtime.engine import Engine
from dagnats.sim import FaultPlan, RunView, SimCase, run_bound_ms, run_seed, run_seeds
from dagnats.sim.bounds import LostAttempts, attempt_bound_ms
from dagnats.sim.case import default_engine
from dagnats.sim.faults import SeedFaults
from dagnats.sim.loop import SimLoop, SimulationStalledError
from dagnats.sim.memory import HistoryMessage
from dagnats.sim.scheduler import Simulation
from dagnats.testing import SimCaseDraw, SimulationFailedError, sim_cases, simulate
from dagnats.worker import RetryAfter, TaskContext, Worker
from kernel.commands import FailTask
from kernel.events import Decision, ErrorInfo, StepFailed, StepLost
from kernel.workflow import parse_workflow
from kernel.workflow.builder import Retry, Workflow
from tests.sim_mutants import TimerFiresTwice, chain_worker, chain_workflow, factory

SLEEPY_STEPS_MAX: Final = 20  # scheduler steps (and folds) of the one-sleepy-step seed

ROOT: Final = Path(__file__).resolve().parent.parent
FULL: Final = os.environ.get("DAGNATS_SIM_FULL") == "1"
EXAMPLE_SEEDS: Final = 10_000 if FULL else 200
EXAMPLES: Final = sorted(
    path.parent
    for path in (ROOT / "examples").glob("*/workflow.json")
    if (path.parent / "worker.py").exists()
)


def example_case(directory: Path) -> SimCase:
    import importlib

    module = importlib.import_module(f"examples.{directory.name}.worker")
    worker = module.worker
    assert isinstance(worker, Worker)
    input_file = directory / "input.json"
    return SimCase(
        workflow=parse_workflow((directory / "workflow.json").read_bytes()),
        worker=worker,
        input=input_file.read_bytes().strip() if input_file.exists() else b"null",
    )


def test_there_are_examples_to_simulate() -> None:
    assert EXAMPLES, "no examples/*/workflow.json with a worker.py"


@pytest.mark.parametrize("directory", EXAMPLES, ids=lambda path: path.name)
def test_every_example_survives_the_default_faults(directory: Path) -> None:
    report = run_seeds(example_case(directory), range(EXAMPLE_SEEDS))
    assert report.ok, "\n".join(
        f"seed {failure.seed}: {violation.invariant}: {violation.message}"
        for failure in report.failures
        for violation in failure.violations
    )
    assert report.seeds == EXAMPLE_SEEDS
    assert sum(report.faults.values()) > EXAMPLE_SEEDS, report.faults


def test_a_seed_replays_byte_for_byte() -> None:
    case = SimCase(workflow=chain_workflow(), worker=chain_worker())
    first = [run_seed(case, seed) for seed in range(20)]
    again = [run_seed(case, seed) for seed in range(20)]
    for one, two in zip(first, again, strict=True):
        assert one.digest == two.digest, f"seed {one.seed}: histories differ"
        assert one.trace == two.trace, f"seed {one.seed}: traces differ"
        assert one.faults == two.faults and one.virtual_ms == two.virtual_ms
    assert len({result.digest for result in first}) == len(first), "seeds should differ"


def test_no_faults_means_no_faults_and_every_run_completes() -> None:
    case = SimCase(workflow=chain_workflow(), worker=chain_worker(), faults=FaultPlan.none())
    report = run_seeds(case, range(50))
    assert report.ok
    assert report.faults == {}
    assert report.statuses == {"completed": 50}


def test_several_runs_per_seed_share_engines_and_workers() -> None:
    case = SimCase(workflow=chain_workflow(), worker=chain_worker(), runs=4)
    report = run_seeds(case, range(50))
    assert report.ok
    assert report.runs == 200


def test_the_engine_that_runs_is_the_runtime_engine() -> None:
    case = SimCase(workflow=chain_workflow(), worker=chain_worker(), faults=FaultPlan.none())
    assert case.engine_factory is default_engine
    simulation = Simulation(case, 7, bound_ms=3_600_000)
    loop = SimLoop()  # type: ignore[abstract]
    try:
        result = loop.run_until_complete(simulation.run())
    finally:
        loop.close()
    assert result.ok and result.runs == {"run-1": "completed"}
    engines = [process.engine for process in simulation.engines]
    assert engines and all(type(engine) is Engine for engine in engines), engines


def test_no_second_implementation_of_the_engine_core_exists_in_the_simulator() -> None:
    """The simulator derives no effects and decides nothing itself: `kernel.react` is never
    imported, `decide` only by the oracle, and no class defines the engine's methods."""
    engine_methods = {"handle", "handle_batch", "resume_all", "resume_run", "execute", "load"}
    for path in sorted((ROOT / "dagnats" / "sim").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "kernel.react", f"{path.name} imports kernel.react"
                if node.module == "kernel.decide":
                    assert path.name == "invariants.py", f"{path.name} imports decide"
            if isinstance(node, ast.ClassDef):
                defined = {
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and not _delegates(item)
                }
                assert not defined & engine_methods, f"{path.name}:{node.name} {defined}"


def _delegates(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A method that wraps the engine's own (`super().<its name>(...)`) is no second
    implementation: it only marks what happens around it."""
    return any(
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == function.name
        and isinstance(call.func.value, ast.Call)
        and isinstance(call.func.value.func, ast.Name)
        and call.func.value.func.id == "super"
        for call in ast.walk(function)
    )


def test_a_user_invariant_is_checked_and_named() -> None:
    def never_completes(view: RunView) -> None:
        assert view.state.status != "completed", f"{view.run_id} completed"

    case = SimCase(
        workflow=chain_workflow(3),
        worker=chain_worker(),
        faults=FaultPlan.none(),
        invariants=(never_completes,),
    )
    report = run_seeds(case, range(5))
    assert not report.ok
    violation = report.failures[0].violations[0]
    assert violation.invariant == "user:never_completes"
    assert violation.run_id == "run-1" and "completed" in violation.message


def test_a_run_that_cannot_end_in_its_bound_is_reported() -> None:
    worker = Worker()

    @worker.task("slow")
    async def slow(context: TaskContext) -> None:
        raise RetryAfter(30 * 24 * 3600)  # a month: longer than the policy promises

    workflow = Workflow("slow").task("a", task="slow", retry=Retry(max_attempts=3)).build()
    report = run_seeds(SimCase(workflow=workflow, worker=worker, faults=FaultPlan.none()), [0])
    assert not report.ok
    violation = report.failures[0].violations[0]
    assert violation.invariant == "run_ends_in_bound", violation
    assert "still running" in violation.message


def test_a_handler_sleeping_takes_no_wall_time_and_one_waiting_forever_is_a_stall() -> None:
    worker = Worker()

    @worker.task("sleepy")
    async def sleepy(context: TaskContext) -> int:
        await asyncio.sleep(3600)  # on the simulator's loop clock: instant
        return 1

    workflow = Workflow("sleepy").task("a", task="sleepy").build()
    report = run_seeds(SimCase(workflow=workflow, worker=worker, faults=FaultPlan.none()), [0])
    # Counted, not timed: the hour's sleep is a few scheduler steps and folds (seen: 5 and 5);
    # waiting it out for real would never end (a hang, not a slow pass).
    assert report.ok and report.steps <= SLEEPY_STEPS_MAX and report.folds <= SLEEPY_STEPS_MAX

    stuck = Worker()

    @stuck.task("sleepy")
    async def forever(context: TaskContext) -> int:
        await asyncio.Event().wait()  # nothing simulated will ever set it
        return 1

    with pytest.raises(SimulationStalledError):
        run_seeds(SimCase(workflow=workflow, worker=stuck, faults=FaultPlan.none()), [0])


def test_simulate_returns_a_report_or_raises_with_the_reproduction() -> None:
    report = simulate(chain_workflow(3), chain_worker(), seeds=20, faults="none")
    assert report.ok and report.seeds == 20
    with pytest.raises(SimulationFailedError) as failed:
        simulate(
            chain_workflow(),
            chain_worker(),
            seeds=200,
            engine_factory=factory(TimerFiresTwice),
        )
    text = str(failed.value)
    assert "attempt_dispatched_once" in text and "reproduce: simulate(" in text
    assert failed.value.result.seed in range(200)


def test_simulate_takes_a_workflow_file_and_an_input() -> None:
    from examples.order.worker import worker

    report = simulate(
        str(ROOT / "examples" / "order" / "workflow.json"),
        worker,
        seeds=10,
        input={"order_id": "A-1", "amount": 3.0, "gift": True, "items": ["x"]},
    )
    assert report.ok and report.seeds == 10


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sim_cases())
def test_the_real_engine_passes_drawn_fault_schedules(draw: SimCaseDraw) -> None:
    simulate(chain_workflow(4), chain_worker(), seeds=[draw.seed], faults=draw.faults, swarm=False)


def test_a_failure_shrinks_to_a_small_fault_schedule() -> None:
    def fails(draw: SimCaseDraw) -> bool:
        report = simulate(
            chain_workflow(4),
            chain_worker(),
            seeds=[draw.seed],
            faults=draw.faults,
            swarm=False,
            engine_factory=factory(TimerFiresTwice),
            raise_on_failure=False,
        )
        return not report.ok

    smallest = hypothesis_find(
        sim_cases(),
        fails,
        settings=settings(max_examples=300, database=None, deadline=None, derandomize=True),
    )
    kinds = [kind for kind, p in smallest.faults.probabilities().items() if p > 0]
    assert len(kinds) <= 2, f"did not shrink: {smallest}"
    assert fails(smallest), f"{smallest} does not fail again"  # a draw replays exactly


def test_a_runs_bound_grows_by_one_attempt_bound_per_lost_attempt_its_history_records() -> None:
    """A lost attempt does not consume the retry policy, so the bound a run gets at its start
    does not hold it; each lost attempt recorded extends it (and nothing else does)."""
    workflow = chain_workflow(2)  # (steps with a 30 s timeout)
    lost = LostAttempts(workflow)
    base = run_bound_ms(workflow)
    error = ErrorInfo(message="worker lost", kind="lost")
    command = FailTask(run_id="run-1", at_ms=5, step_id="s0", attempt=1, error="x", kind="lost")
    events = (
        StepLost(step_id="s0", attempt=1, error=error, at_ms=5),
        StepFailed(step_id="s1", attempt=1, error=error, will_retry=True, at_ms=5),
    )
    message = HistoryMessage(seq=3, run_id="run-1", payload=b"", msg_id="m", at_ms=5)
    lost.on_decision(message, Decision(command=command, events=events))
    lost.on_decision(message, Decision(command=command, events=events[:1]))
    assert lost.bound_ms(base, "run-1") == base + 2 * attempt_bound_ms(30_000)
    assert lost.bound_ms(base, "run-2") == base and lost.most_ms == 2 * attempt_bound_ms(30_000)
    assert attempt_bound_ms(30_000) < attempt_bound_ms(None)


def test_switching_off_a_fault_kind_that_never_struck_changes_nothing_else() -> None:
    """Every roll draws, a kind switched off too: the shrinking of a fault schedule relies on
    it (a plan with one kind fewer replays the same seed, up to that kind's strikes)."""
    on = SeedFaults(
        FaultPlan.parse("none,engine_crash=0.1,handler_hang=1e-9"), Random(3), swarm=False
    )
    off = SeedFaults(FaultPlan.parse("none,engine_crash=0.1"), Random(3), swarm=False)
    rolls = [(on.hit("engine_crash"), on.hit("handler_hang")) for _ in range(200)]
    again = [(off.hit("engine_crash"), off.hit("handler_hang")) for _ in range(200)]
    assert rolls == again and any(crash for crash, _hang in rolls)
