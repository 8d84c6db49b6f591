"""Benchmark: simulated runs per second, the order example first (what `dagnats sim` runs).

`value`: runs/s of `dagnats sim` on the order example (`dagnats/examples/order`: its workflow,
its worker's real handlers, its input), ORDER_SEEDS seeds of one run each with the default
fault plan, in one process, as `dagnats sim examples/order/workflow.json -w
examples.order.worker:worker --input-file examples/order/input.json --seeds N` runs them.
`ratio` is that over the target of 1,000 runs/s (`ratio_to: "target"`).

Beside it, a 10-step chain (each step retried up to 3 times, with a step timeout) through the
real engine and worker SDK with the default fault plan (crashes, duplicate and late
deliveries, lost heartbeats, racing engines, clock jumps, handler errors and hangs, lost
snapshots, client cancels, projector crashes). Every seed must pass its invariants, the
projections' among them (the SQLite query tables fed in batches and compared with a rebuild
from zero at the end of each seed; the snapshot projection's states with the fold):
`chain_runs_per_s` over one process per core (`run_seeds(jobs=...)`; a seed's result does not
depend on it), `runs_per_s_one_process` in one, `runs_per_s_one_process_without_tables` the
same without the SQLite projection (what its invariant costs); `fold_runs_per_s` is how fast
the pure kernel decodes and folds the same histories (what any replay costs at least).

The `*_per_cpu_s` figures divide by this process's CPU time instead of the wall clock: on a
machine shared with other work they move less (the ratio of two checkouts is steadier).

`python -m bench.sim` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from typing import Final

import msgspec

from dagnats.examples.order.worker import worker as order_worker
from dagnats.sim import FaultPlan, SimCase, run_bound_ms, run_seeds
from dagnats.sim.loop import SimLoop
from dagnats.sim.memory import HistoryMessage
from dagnats.sim.runner import quiet
from dagnats.sim.scheduler import Simulation
from dagnats.worker import TaskContext, Worker
from kernel.codec import decode_decision
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE
from kernel.workflow import WorkflowDef, parse_workflow
from kernel.workflow.builder import Retry, Workflow

STEPS: Final = 10
ORDER_SEEDS: Final = 1_000
SEEDS: Final = 2_000
SEEDS_ONE_PROCESS: Final = 500
SEEDS_WITHOUT_TABLES: Final = 250
JOBS_MAX: Final = 8
RUNS_PER_SEED: Final = 1
TARGET_RUNS_PER_S: Final = 1_000.0
FOLD_SEEDS: Final = 50


def chain(steps: int = STEPS) -> WorkflowDef:
    builder = Workflow("sim-chain", timeout="1h")
    for index in range(steps):
        depends = [f"s{index - 1}"] if index else []
        builder = builder.task(
            f"s{index}",
            task="work",
            depends_on=depends,
            retry=Retry(max_attempts=3, initial_delay="100ms"),
            timeout="30s",
        )
    return builder.build()


def order_case() -> SimCase:
    """The order example as `dagnats sim` loads it (workflow, worker, input; default faults)."""
    folder = resources.files("dagnats.examples") / "order"
    workflow = parse_workflow((folder / "workflow.json").read_bytes())
    run_input = msgspec.json.encode(msgspec.json.decode((folder / "input.json").read_bytes()))
    return SimCase(workflow=workflow, worker=order_worker, input=run_input, faults=FaultPlan())


def chain_worker() -> Worker:
    worker = Worker()

    @worker.task("work")
    async def work(context: TaskContext) -> dict[str, object]:
        return {"step": context.step_id, "attempt": context.attempt}

    return worker


def fold_rate(case: SimCase) -> float:
    """Runs/s at which the kernel decodes and folds the histories these seeds produce."""
    histories: list[list[HistoryMessage]] = []
    for seed in range(FOLD_SEEDS):
        simulation = Simulation(case, seed, bound_ms=run_bound_ms(case.workflow))
        loop = SimLoop()  # type: ignore[abstract]
        try:
            with quiet():  # (the worker's warnings about lost results, as run_seeds mutes them)
                loop.run_until_complete(simulation.run())
        finally:
            loop.close()
        for run_id in simulation.log.run_ids():
            histories.append(list(simulation.log.history(run_id)))
    started = time.perf_counter()
    for history in histories:
        state = INITIAL_STATE
        for message in history:
            for event in decode_decision(message.payload).events:
                state = evolve(state, event)
    return len(histories) / (time.perf_counter() - started)


def main() -> dict[str, object]:
    cpu_started = time.process_time()
    order = run_seeds(order_case(), range(ORDER_SEEDS), failures_max=ORDER_SEEDS)
    order_cpu_s = time.process_time() - cpu_started
    case = SimCase(workflow=chain(), worker=chain_worker(), faults=FaultPlan(), runs=RUNS_PER_SEED)
    cpu_started = time.process_time()
    one = run_seeds(case, range(SEEDS_ONE_PROCESS), failures_max=SEEDS)
    one_cpu_s = time.process_time() - cpu_started
    bare = SimCase(
        workflow=case.workflow, worker=case.worker, faults=case.faults, runs=RUNS_PER_SEED,
        projection=None,
    )  # fmt: skip
    without_tables = run_seeds(bare, range(SEEDS_WITHOUT_TABLES), failures_max=SEEDS)
    jobs = max(1, min(os.cpu_count() or 1, JOBS_MAX))
    report = run_seeds(case, range(SEEDS), failures_max=SEEDS, jobs=jobs)
    for done in (order, one, without_tables, report):
        assert done.ok, f"{len(done.failures)} failing seed(s), first {done.failures[0].seed}"
    runs_per_s = order.runs / order.elapsed_s
    faults = sum(report.faults.values())
    result: dict[str, object] = {
        "bench": "sim",
        "value": round(runs_per_s),
        "unit": "runs/s",
        "ratio": round(runs_per_s / TARGET_RUNS_PER_S, 4),
        "ratio_to": "target",
        "workload": "order example, one process, default faults",
        "order_seeds": order.seeds,
        "order_runs_per_cpu_s": round(order.runs / order_cpu_s),
        "chain_runs_per_s": round(report.runs / report.elapsed_s),
        "jobs": jobs,
        "runs_per_s_one_process": round(one.runs / one.elapsed_s),
        "runs_per_cpu_s_one_process": round(one.runs / one_cpu_s),
        "runs_per_s_one_process_without_tables": round(
            without_tables.runs / without_tables.elapsed_s
        ),
        "seeds_per_s": round(report.seeds / report.elapsed_s),
        "runs": report.runs,
        "seeds": report.seeds,
        "runs_per_seed": RUNS_PER_SEED,
        "steps_per_run": STEPS,
        "faults": faults,
        "virtual_hours": round(report.virtual_ms / 3_600_000, 1),
        "fold_runs_per_s": round(fold_rate(case)),
    }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return result


if __name__ == "__main__":
    main()
