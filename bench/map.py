"""Map: one run whose `map` step fans a no-op task out over 10,000 items, against a fan-out
of 10,000 plain tasks on the same server.

An engine process and a worker process on one embedded nats-server (engine-only: no
projections, runs watched by a core subscription). The map run is a `sleep` of 1 ms that
hands the run input `{"items": [0, ..., 9999]}` on, then a `map` over `items`
(max_concurrency MAX_CONCURRENCY). The fan-out is FANOUT_RUNS runs of a FANOUT_WIDTH-step
fan-out + join (10,000 tasks) started at once (a join depends on at most 100 steps).
`value` is the map run's wall time (start published -> run completed) after a warm-up;
`ratio` is that over the fan-out's wall time (target <= 1.5). Beside it: CPU and JetStream
per item (`bench.metrics`).

`python -m bench.map` prints one JSON line.
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
    publish_starts,
    rounded,
    start_command,
)
from bench.workers import NOOP_TASK
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Workflow

ITEMS: Final = 10_000
WARMUP_ITEMS: Final = 1_000
MAX_CONCURRENCY: Final = 500
WORKER_CONCURRENCY: Final = 128
RUN_TIMEOUT_S: Final = 300.0
FANOUT_WIDTH: Final = 99  # + its join (a join may depend on at most 100 steps)
FANOUT_RUNS: Final = 100  # 100 x (99 + join): the 10k plain tasks the map is held against


def map_workflow(name: str) -> WorkflowDef:
    return (
        Workflow(name)
        .step("source", type="sleep", config={"duration": "1ms"})
        .step(
            "each",
            type="map",
            task=NOOP_TASK,
            depends_on=["source"],
            config={"items_path": "items", "max_concurrency": MAX_CONCURRENCY},
        )
        .build()
    )


async def measure() -> dict[str, object]:
    async with bench_server("map") as bench:
        await bench.engine()
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = map_workflow("bench-map")
        plain = fanout_workflow("bench-fanout-plain", FANOUT_WIDTH, NOOP_TASK)
        tag = uuid.uuid4().hex[:8]

        async def map_run(run_id: str, items: int) -> float:
            ended = watcher.expect(run_id)
            started = time.perf_counter()
            payload = start_command(run_id, workflow, {"items": list(range(items))})
            await bench.connection.commands.publish_command(run_id, payload, f"start:{run_id}")
            status = await asyncio.wait_for(ended, RUN_TIMEOUT_S)
            assert status == "completed", f"run {run_id} ended {status}"
            return time.perf_counter() - started

        async def fanout_runs(prefix: str, runs: int) -> float:
            run_ids = [f"{prefix}-{index}" for index in range(runs)]
            ended = [watcher.expect(run_id) for run_id in run_ids]
            started = time.perf_counter()
            await publish_starts(bench.connection, plain, run_ids)
            await watcher.wait_all(ended, RUN_TIMEOUT_S)
            assert all(future.result() == "completed" for future in ended)
            return time.perf_counter() - started

        await map_run(f"map-{tag}-warmup", WARMUP_ITEMS)
        await fanout_runs(f"plain-{tag}-warmup", 1)
        metered = bench.metered()
        await metered.start()
        fanout_s = await fanout_runs(f"plain-{tag}", FANOUT_RUNS)
        fanout_per_step = await metered.per_step(FANOUT_RUNS * (FANOUT_WIDTH + 1))
        await metered.start()
        appends_before = watcher.appends
        map_s = await map_run(f"map-{tag}", ITEMS)
        map_per_item = await metered.per_step(ITEMS)
        appends = watcher.appends - appends_before
        await watcher.close()
    return {
        "bench": "map",
        "value": rounded(map_s, 3),
        "unit": "s/run",
        "ratio": rounded(map_s / fanout_s, 3),
        "ratio_of": "map of 10k items s / fan-out of 10k plain tasks s, same server (<= 1.5)",
        "items": ITEMS,
        "max_concurrency": MAX_CONCURRENCY,
        "per_item_ms": rounded(map_s * 1000 / ITEMS),
        "fanout_10k_s": rounded(fanout_s, 3),
        "fanout_shape": f"{FANOUT_RUNS} runs of a {FANOUT_WIDTH}-step fan-out + join, at once",
        "history_appends": appends,
        **map_per_item,
        "fanout_per_step": fanout_per_step,
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
