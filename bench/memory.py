"""The engine's resident memory with many open runs, and after they all finished.

The engine runs alone in its own process (`bench.procs engine`; its nats-server is another
process), so its VmRSS is the engine's. RUNS one-step runs are started while no worker runs:
each run is open, waiting on its task. Once the engine has applied every start, its VmRSS is
read (`value`); then a worker finishes every run and VmRSS is read again, with the engine's
run cache size (`Engine.cached_runs()`) against its bound. `ratio` is the open-runs RSS over
the idle engine's RSS measured in the same run (there is no JetStream floor for memory).
Target: <= 500 MB with 100,000 open runs.

`python -m bench.memory` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

from bench.common import (
    RunWatcher,
    bench_server,
    chain_workflow,
    emit,
    publish_starts,
    rounded,
    wait_until,
)
from bench.workers import NOOP_TASK

RUNS: Final = 100_000
TARGET_MB: Final = 500.0
WORKER_CONCURRENCY: Final = 256
STARTS_TIMEOUT_S: Final = 240.0
FINISH_TIMEOUT_S: Final = 240.0


def megabytes(stats: dict[str, object], key: str = "rss_kb") -> float:
    value = stats[key]
    assert isinstance(value, int), stats
    return value / 1024


def applied(stats: dict[str, object]) -> int:
    counters = stats.get("counters", {})
    assert isinstance(counters, dict)
    value = counters.get("applied", 0)
    assert isinstance(value, int)
    return value


async def measure(runs: int = RUNS) -> dict[str, object]:
    async with bench_server("memory") as bench:
        engine = await bench.engine()
        await asyncio.sleep(0.5)  # let it bind its consumer and settle
        idle = await engine.stats()
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = chain_workflow("bench-memory", 1, NOOP_TASK)
        tag = uuid.uuid4().hex[:8]
        run_ids = [f"mem-{tag}-{index}" for index in range(runs)]
        ended = [watcher.expect(run_id) for run_id in run_ids]
        started = time.perf_counter()
        await publish_starts(bench.connection, workflow, run_ids)

        async def all_started() -> bool:
            return applied(await engine.stats()) >= runs

        await wait_until(all_started, STARTS_TIMEOUT_S, f"engine applied {runs} starts", 0.25)
        starts_s = time.perf_counter() - started
        open_stats = await engine.stats()
        started = time.perf_counter()
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        await watcher.wait_all(ended, FINISH_TIMEOUT_S)
        finish_s = time.perf_counter() - started
        await watcher.close()
        done_stats = await engine.stats()
    open_mb = megabytes(open_stats)
    cached = done_stats["cached_runs"]
    bound = done_stats["cache_runs_max"]
    assert isinstance(cached, int) and isinstance(bound, int)
    return {
        "bench": "memory",
        "value": rounded(open_mb, 1),
        "unit": "MB",
        "ratio": rounded(open_mb / megabytes(idle), 3),
        "ratio_of": "engine RSS with the runs open / idle engine RSS (target: value <= 500 MB)",
        "runs": runs,
        "extrapolated": False,
        "rss_mb_idle": rounded(megabytes(idle), 1),
        "rss_mb_open": rounded(open_mb, 1),
        "rss_mb_done": rounded(megabytes(done_stats), 1),
        "hwm_mb": rounded(megabytes(done_stats, "hwm_kb"), 1),
        "kb_per_open_run": rounded((open_mb - megabytes(idle)) * 1024 / runs, 2),
        "within_target": open_mb <= TARGET_MB,
        "cached_runs_open": open_stats["cached_runs"],
        "cached_runs_done": cached,
        "cache_runs_max": bound,
        "cache_within_bound": cached <= bound,
        "starts_s": rounded(starts_s, 2),
        "finish_s": rounded(finish_s, 2),
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
