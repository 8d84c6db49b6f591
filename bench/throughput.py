"""Throughput across runs: RUNS runs of a STEPS-step no-op chain, all started at once.

An engine process with the built-in projections beside it (KV snapshots and SQLite query
tables, as `dagnats serve` runs them) and WORKERS worker processes on one embedded
nats-server; every StartRun is
published (pipelined) at once, then the bench waits for every run to complete. `value` is
steps per second across runs (RUNS * STEPS / wall time from the first start published to the
last run completed); `ratio` is that over the batched raw JetStream hop rate (`bench.floor`,
measured on the same server in this run). Target: >= 5,000 steps/s. Workers run with
`dagnats.Worker`'s defaults; the same RUNS are then run again with workers built with
`report_started=True` (`with_started_steps_per_s`).

Beside it: CPU per step of each process, JetStream API requests and stored messages per step
(`bench.metrics`), over the default workers' RUNS; and the engine's split between its event
loop's thread and its other threads (`engine_loop_cpu_ms_per_step`,
`engine_threads_cpu_ms_per_step`: the SQLite projection's batches run in a worker thread).

`python -m bench.throughput` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Final

from bench.common import (
    BenchServer,
    RunWatcher,
    bench_server,
    chain_workflow,
    emit,
    floor_fields,
    publish_starts,
    rounded,
)
from bench.metrics import CLOCK_TICKS_PER_S, STAT_UTIME_FIELD, cpu_ms
from bench.workers import NOOP_TASK
from kernel.workflow import WorkflowDef

RUNS: Final = 2_000
STEPS: Final = 5
WORKERS: Final = 2
WORKER_CONCURRENCY: Final = 256
WARMUP_RUNS: Final = 20
RUN_TIMEOUT_S: Final = 60.0


async def wave(
    bench: BenchServer, watcher: RunWatcher, workflow: WorkflowDef, prefix: str, count: int
) -> tuple[float, int]:
    """Start `count` runs at once and wait for all: (wall s, history appends seen)."""
    run_ids = [f"{prefix}-{index}" for index in range(count)]
    ended = [watcher.expect(run_id) for run_id in run_ids]
    appends_before = watcher.appends
    started = time.perf_counter()
    await publish_starts(bench.connection, workflow, run_ids)
    await watcher.wait_all(ended, RUN_TIMEOUT_S)
    wall_s = time.perf_counter() - started
    failed = [future.result() for future in ended if future.result() != "completed"]
    assert not failed, f"{len(failed)} runs did not complete: {failed[:3]}"
    return wall_s, watcher.appends - appends_before


def thread_cpu_ms(pid: int) -> tuple[float, float]:
    """(utime + stime of `pid`'s main thread, of the whole process) in ms; (0, 0) when gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0, 0.0
    fields = text.rsplit(")", 1)[1].split()  # (the layout of /proc/<pid>/stat)
    ticks = int(fields[STAT_UTIME_FIELD - 2]) + int(fields[STAT_UTIME_FIELD - 1])
    return ticks * 1000 / CLOCK_TICKS_PER_S, cpu_ms(pid)


def engine_split(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    """The engine's CPU per step of RUNS * STEPS steps: its loop's thread, its other threads."""
    steps = RUNS * STEPS
    loop_ms, all_ms = after[0] - before[0], after[1] - before[1]
    return {
        "engine_loop_cpu_ms_per_step": rounded(loop_ms / steps, 3),
        "engine_threads_cpu_ms_per_step": rounded(max(all_ms - loop_ms, 0.0) / steps, 3),
    }


async def measure(workers: int = WORKERS) -> dict[str, object]:
    async with bench_server("throughput") as bench:
        floor = await bench.floor()
        engine = await bench.engine(projections=True)
        workers_started = [
            await bench.worker(concurrency=WORKER_CONCURRENCY) for _ in range(workers)
        ]
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = chain_workflow("bench-throughput", STEPS, NOOP_TASK)
        tag = uuid.uuid4().hex[:8]
        await wave(bench, watcher, workflow, f"warm-{tag}", WARMUP_RUNS)
        metered = bench.metered()
        await metered.start()
        threads_before = thread_cpu_ms(engine.pid)
        wall_s, appends = await wave(bench, watcher, workflow, f"tp-{tag}", RUNS)
        split = engine_split(threads_before, thread_cpu_ms(engine.pid))
        per_step = await metered.per_step(RUNS * STEPS)
        stats = await engine.stats()
        # The same with workers that report TaskStarted (one command and append more per step).
        for worker in workers_started:
            await worker.stop()
        for _ in range(workers):
            await bench.worker(concurrency=WORKER_CONCURRENCY, report_started=True)
        with_started_s, _ = await wave(bench, watcher, workflow, f"started-{tag}", RUNS)
        await watcher.close()
    steps_per_s = RUNS * STEPS / wall_s
    started_steps_per_s = RUNS * STEPS / with_started_s
    return {
        "bench": "throughput",
        "value": rounded(steps_per_s, 1),
        "unit": "steps/s",
        "ratio": rounded(steps_per_s / floor["batched_hops_per_s"], 3),
        "ratio_of": "steps/s / floor batched hops/s (target >= 5000 steps/s)",
        "runs": RUNS,
        "steps_per_run": STEPS,
        "workers": workers,
        "worker_concurrency": WORKER_CONCURRENCY,
        "wall_s": rounded(wall_s, 3),
        "runs_per_s": rounded(RUNS / wall_s, 1),
        "history_appends_per_s": rounded(appends / wall_s, 1),
        "engine_counters": stats.get("counters", {}),
        **per_step,
        **split,
        "with_started_steps_per_s": rounded(started_steps_per_s, 1),
        **floor_fields(floor),
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
