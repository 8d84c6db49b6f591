"""W1: a chain of no-op steps, one run at a time: the per-step cost of the engine's loop.

RUNS runs of a STEPS-step chain (`bench.noop` tasks), each started after the previous one
ended, with an engine process and a worker process on one embedded nats-server (history kept
in full). `value` is milliseconds per step over all runs (wall time / steps, including each
run's start); `ratio` is that over the raw serial JetStream hop (`bench.floor`, measured on
the same server in this run). Target: ratio <= 1.2. The worker runs with `dagnats.Worker`'s
defaults; the same RUNS are then run again with a worker built with `report_started=True` (a
TaskStarted command, so one history append more per step), reported as `with_started_*`.

Beside it (`bench.metrics`): CPU ms per step of the engine, nats-server, worker and bench
(client) processes, JetStream API requests and stored messages per step, over the default
worker's RUNS (the warm-up runs excluded). This is an engine-only microbench: no projections,
and runs are started and watched by the bench itself, not through `dagnats.Client`.

`python -m bench.chain` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Final

from bench.common import (
    BenchServer,
    RunWatcher,
    bench_server,
    chain_workflow,
    emit,
    floor_fields,
    percentile,
    publish_starts,
    rounded,
)
from bench.metrics import CpuMeter, JsMeter
from bench.workers import NOOP_TASK
from kernel.workflow import WorkflowDef

RUNS: Final = 100
STEPS: Final = 10
WARMUP_RUNS: Final = 3
RUN_TIMEOUT_S: Final = 30.0
WORKER_CONCURRENCY: Final = 16


async def sequential_runs(
    bench: BenchServer, watcher: RunWatcher, workflow: WorkflowDef, prefix: str, count: int
) -> tuple[float, list[float], int]:
    """Run `count` runs one after the other: (wall s, each run's s, history appends seen)."""

    async def one_run(index: int) -> float:
        run_id = f"{prefix}-{index}"
        ended = watcher.expect(run_id)
        started = time.perf_counter()
        await publish_starts(bench.connection, workflow, [run_id])
        status = await asyncio.wait_for(ended, RUN_TIMEOUT_S)
        assert status == "completed", f"run {run_id} ended {status}"
        return time.perf_counter() - started

    for index in range(WARMUP_RUNS):
        await one_run(-1 - index)
    appends_before = watcher.appends
    started = time.perf_counter()
    durations = [await one_run(index) for index in range(count)]
    return time.perf_counter() - started, durations, watcher.appends - appends_before


async def measure() -> dict[str, object]:
    async with bench_server("chain") as bench:
        floor = await bench.floor()
        engine = await bench.engine()
        worker = await bench.worker(concurrency=WORKER_CONCURRENCY)
        assert bench.nats.pid is not None
        pids = {"engine": engine.pid, "nats_server": bench.nats.pid, "worker": worker.pid}
        cpu, js = CpuMeter({**pids, "client": os.getpid()}), JsMeter(bench.connection.js)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = chain_workflow("bench-chain", STEPS, NOOP_TASK)
        tag = uuid.uuid4().hex[:8]
        await js.start()
        cpu.start()
        wall_s, durations, appends = await sequential_runs(
            bench, watcher, workflow, f"chain-{tag}", RUNS
        )
        per_step = {
            "cpu_ms_per_step": cpu.per_step(RUNS * STEPS),
            **await js.per_step(RUNS * STEPS),
        }
        # The same with a worker that reports TaskStarted (one command and append more per step).
        await worker.stop()
        await bench.worker(concurrency=WORKER_CONCURRENCY, report_started=True)
        with_started_s, _, started_appends = await sequential_runs(
            bench, watcher, workflow, f"started-{tag}", RUNS
        )
        await watcher.close()
    ms_per_step = wall_s * 1000 / (RUNS * STEPS)
    started_ms_per_step = with_started_s * 1000 / (RUNS * STEPS)
    return {
        "bench": "chain_engine",
        "value": rounded(ms_per_step),
        "unit": "ms/step",
        "ratio": rounded(ms_per_step / floor["serial_ms_per_hop"], 3),
        "ratio_of": "ms/step / floor serial ms/hop (target <= 1.2)",
        "runs": RUNS,
        "steps_per_run": STEPS,
        "runs_per_s": rounded(RUNS / wall_s, 2),
        "run_ms_p50": rounded(percentile(durations, 0.5) * 1000, 3),
        "run_ms_p90": rounded(percentile(durations, 0.9) * 1000, 3),
        "history_appends_per_step": rounded(appends / (RUNS * STEPS), 3),
        **per_step,
        "with_started_ms_per_step": rounded(started_ms_per_step),
        "with_started_ratio": rounded(started_ms_per_step / floor["serial_ms_per_hop"], 3),
        "with_started_appends_per_step": rounded(started_appends / (RUNS * STEPS), 3),
        **floor_fields(floor),
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
