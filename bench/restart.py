"""Restart with many unfinished runs: how soon a restarted engine decides again, and how soon it
has resumed every run.

An engine process (`bench.procs engine`, engine-only) on one embedded nats-server starts RUNS
one-step runs whose task no worker serves, so every run stays open (its task scheduled). The
engine is SIGKILLed; a new engine starts, and at once a probe run is started. Measured from the
new engine's start: `decide_s`, until the probe's first decision is appended (target <= 2 s);
`value`, until the engine's `resumed` counter reached RUNS (every unfinished run resumed,
target <= 10 s). Its run cache is sampled while it resumes: `cached_runs_max_seen` must stay
within `cache_runs_max` (the engine's bound). `ratio` is decide_s / value.

`python -m bench.restart` prints one JSON line. It writes only in its temporary directory.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

from bench.common import (
    Child,
    RunWatcher,
    bench_server,
    chain_workflow,
    emit,
    publish_starts,
    rounded,
    wait_until,
)

RUNS: Final = 10_000
IDLE_TASK: Final = "bench.restart.idle"  # no worker serves it: the runs stay open
STARTS_TIMEOUT_S: Final = 120.0
RESUME_TIMEOUT_S: Final = 120.0
POLL_S: Final = 0.05
DECIDE_TARGET_S: Final = 2.0
RESUME_TARGET_S: Final = 10.0


def counter(stats: dict[str, object], name: str) -> int:
    counters = stats.get("counters", {})
    assert isinstance(counters, dict), stats
    value = counters.get(name, 0)
    assert isinstance(value, int), counters
    return value


async def resumed_all(engine: Child, runs: int) -> tuple[float, int, int]:
    """Poll the engine's stats until it resumed `runs`: (seconds since its start, the most
    runs its cache held meanwhile, its cache bound)."""
    cached_max, bound = 0, 0

    async def done() -> bool:
        nonlocal cached_max, bound
        stats = await engine.stats()
        cached = stats.get("cached_runs", 0)
        limit = stats.get("cache_runs_max", 0)
        assert isinstance(cached, int) and isinstance(limit, int), stats
        cached_max, bound = max(cached_max, cached), limit
        return counter(stats, "resumed") >= runs

    await wait_until(done, RESUME_TIMEOUT_S, f"{runs} runs resumed", POLL_S)
    return time.perf_counter() - engine.started_at, cached_max, bound


async def measure(runs: int = RUNS) -> dict[str, object]:
    async with bench_server("restart") as bench:
        engine = await bench.engine()
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        workflow = chain_workflow("bench-restart", 1, IDLE_TASK)
        tag = uuid.uuid4().hex[:8]
        before = watcher.appends
        await publish_starts(bench.connection, workflow, [f"open-{tag}-{i}" for i in range(runs)])

        async def all_started() -> bool:
            return watcher.appends - before >= runs

        await wait_until(all_started, STARTS_TIMEOUT_S, f"{runs} runs started", POLL_S)
        engine.kill()
        await engine.process.wait()
        probe = f"probe-{tag}"
        restarted = await bench.engine()
        # the probe's start is published right after the new engine said it is ready
        probe_started = watcher.expect_append(probe)
        await publish_starts(bench.connection, workflow, [probe])
        await asyncio.wait_for(probe_started, RESUME_TIMEOUT_S)
        decide_s = time.perf_counter() - restarted.started_at
        resume_s, cached_max, bound = await resumed_all(restarted, runs)
        await watcher.close()
    return {
        "bench": "restart",
        "value": rounded(resume_s, 3),
        "unit": "s to resume every run",
        "ratio": rounded(decide_s / resume_s, 3),
        "ratio_of": "s to the first new decision / s to every run resumed",
        "runs": runs,
        "decide_s": rounded(decide_s, 3),
        "decide_target_s": DECIDE_TARGET_S,
        "resume_target_s": RESUME_TARGET_S,
        "cached_runs_max_seen": cached_max,
        "cache_runs_max": bound,
        "cache_within_bound": cached_max <= bound,
        "path": "engine-only (bench.procs engine), SIGKILL and restart",
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
