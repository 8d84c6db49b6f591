"""Map: one run whose `map` step fans a no-op task out over 10,000 items, end to end.

An engine process and a worker process on one embedded nats-server, as W2 (bench/fanout.py).
The run is a `sleep` of 1 ms that hands the run input `{"items": [0, ..., 9999]}` on, then a
`map` over `items` (max_concurrency MAX_CONCURRENCY). `value` is the wall time of the 10,000-item
run (start command published -> run completed) after a warm-up run of WARMUP_ITEMS items;
`per_item_ms` is that over the items; `ratio` is per_item_ms over W2's per-task ms, measured
by bench.fanout in this same invocation (on a server of its own, just before).

`python -m bench.map` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

from bench import fanout
from bench.common import RunWatcher, bench_server, emit, rounded, start_command
from bench.workers import NOOP_TASK
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Workflow

ITEMS: Final = 10_000
WARMUP_ITEMS: Final = 1_000
MAX_CONCURRENCY: Final = 500
WORKER_CONCURRENCY: Final = 128
RUN_TIMEOUT_S: Final = 300.0


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


async def measure_map() -> dict[str, object]:
    async with bench_server("map") as bench:
        await bench.engine()
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = map_workflow("bench-map")
        tag = uuid.uuid4().hex[:8]

        async def one_run(run_id: str, items: int) -> float:
            ended = watcher.expect(run_id)
            started = time.perf_counter()
            payload = start_command(run_id, workflow, {"items": list(range(items))})
            await bench.connection.commands.publish_command(run_id, payload, f"start:{run_id}")
            status = await asyncio.wait_for(ended, RUN_TIMEOUT_S)
            assert status == "completed", f"run {run_id} ended {status}"
            return time.perf_counter() - started

        await one_run(f"map-{tag}-warmup", WARMUP_ITEMS)
        appends_before = watcher.appends
        seconds = await one_run(f"map-{tag}", ITEMS)
        appends = watcher.appends - appends_before
        await watcher.close()
    return {"wall_ms": seconds * 1000, "appends": appends}


async def measure() -> dict[str, object]:
    w2 = await fanout.measure()
    measured = await measure_map()
    wall_ms = measured["wall_ms"]
    assert isinstance(wall_ms, float)
    per_item_ms = wall_ms / ITEMS
    w2_per_task_ms = w2["per_task_ms"]
    assert isinstance(w2_per_task_ms, float)
    return {
        "bench": "map",
        "value": rounded(wall_ms, 1),
        "unit": "ms/run",
        "ratio": rounded(per_item_ms / w2_per_task_ms, 3),
        "ratio_of": "per-item ms / W2 per-task ms (bench.fanout, same invocation)",
        "items": ITEMS,
        "max_concurrency": MAX_CONCURRENCY,
        "per_item_ms": rounded(per_item_ms),
        "w2_per_task_ms": w2_per_task_ms,
        "history_appends": measured["appends"],
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
