"""W2: fan-out and join: WIDTH parallel no-op steps, then one `join` step after all of them.

An engine process and a worker process (concurrency above WIDTH, so every parallel step can
run at once) on one embedded nats-server. `value` is the median wall time of one run (start
command published -> run completed) over RUNS runs after a warm-up run; `per_task_ms` is that
over the WIDTH + 1 tasks; `ratio` is per_task_ms over the batched raw JetStream hop
(1000 / floor batched hops/s, measured on the same server in this run).

`python -m bench.fanout` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

from bench.common import (
    RunWatcher,
    bench_server,
    emit,
    fanout_workflow,
    floor_fields,
    percentile,
    publish_starts,
    rounded,
)
from bench.workers import NOOP_TASK

WIDTH: Final = 100
RUNS: Final = 5
WARMUP_RUNS: Final = 1
RUN_TIMEOUT_S: Final = 30.0
WORKER_CONCURRENCY: Final = 128


async def measure() -> dict[str, object]:
    async with bench_server("fanout") as bench:
        floor = await bench.floor()
        await bench.engine()
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = fanout_workflow("bench-fanout", WIDTH, NOOP_TASK)
        tag = uuid.uuid4().hex[:8]

        async def one_run(index: int) -> float:
            run_id = f"fanout-{tag}-{index}"
            ended = watcher.expect(run_id)
            started = time.perf_counter()
            await publish_starts(bench.connection, workflow, [run_id])
            status = await asyncio.wait_for(ended, RUN_TIMEOUT_S)
            assert status == "completed", f"run {run_id} ended {status}"
            return time.perf_counter() - started

        for index in range(WARMUP_RUNS):
            await one_run(-1 - index)
        appends_before = watcher.appends
        metered = bench.metered()
        await metered.start()
        durations = [await one_run(index) for index in range(RUNS)]
        per_step = await metered.per_step(RUNS * (WIDTH + 1))
        appends = watcher.appends - appends_before
        await watcher.close()
    wall_ms = percentile(durations, 0.5) * 1000
    tasks = WIDTH + 1
    per_task_ms = wall_ms / tasks
    floor_batched_ms = 1000 / floor["batched_hops_per_s"]
    return {
        "bench": "fanout",
        "value": rounded(wall_ms, 2),
        "unit": "ms/run",
        "ratio": rounded(per_task_ms / floor_batched_ms, 3),
        "ratio_of": "per-task ms / floor batched ms/hop",
        "width": WIDTH,
        "runs": RUNS,
        "per_task_ms": rounded(per_task_ms),
        "run_ms_min": rounded(min(durations) * 1000, 2),
        "run_ms_max": rounded(max(durations) * 1000, 2),
        "history_appends_per_run": rounded(appends / RUNS, 1),
        "floor_batched_ms_per_hop": rounded(floor_batched_ms),
        **per_step,
        **floor_fields(floor),
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
