"""Admission overhead: a chain with `concurrency.max_runs` against the same chain without it.

Runs of a STEPS-step chain of no-op tasks, one at a time, with an engine process and a worker
process on one embedded nats-server (bench.chain_engine's set-up). The gated workflow has
`concurrency.max_runs: 4`, so every run asks its gate before it starts and releases its slot
when it ends (two gate appends per run); the plain one is the same chain with no admission.
The two are measured in alternating blocks in the same run, so the machine's load falls on
both alike. `value` is the gated chain's ms per step; `ratio` is that over the plain chain's
(target <= 1.1).

`python -m bench.admission` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

import msgspec

from bench.chain_engine import sequential_runs
from bench.common import RunWatcher, bench_server, chain_workflow, emit, rounded
from bench.workers import NOOP_TASK
from kernel.workflow.model import Admission

BLOCKS: Final = 4  # alternating blocks of each workflow
RUNS_PER_BLOCK: Final = 15
STEPS: Final = 10
WORKER_CONCURRENCY: Final = 16


async def measure() -> dict[str, object]:
    async with bench_server("admission") as bench:
        await bench.engine()
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        plain = chain_workflow("bench-plain", STEPS, NOOP_TASK)
        gated = msgspec.structs.replace(
            chain_workflow("bench-gated", STEPS, NOOP_TASK), admission=Admission(max_runs=4)
        )
        tag = uuid.uuid4().hex[:8]
        spent = {"plain": 0.0, "gated": 0.0}
        for block in range(BLOCKS):
            for name, workflow in (("plain", plain), ("gated", gated)):
                prefix = f"{name}-{tag}-{block}"
                wall_s, _, _ = await sequential_runs(
                    bench, watcher, workflow, prefix, RUNS_PER_BLOCK
                )
                spent[name] += wall_s
        await watcher.close()
    steps = BLOCKS * RUNS_PER_BLOCK * STEPS
    plain_ms, gated_ms = spent["plain"] * 1000 / steps, spent["gated"] * 1000 / steps
    return {
        "bench": "admission",
        "value": rounded(gated_ms),
        "unit": "ms/step",
        "ratio": rounded(gated_ms / plain_ms, 3),
        "ratio_of": "a chain with max_runs / the same chain without (target <= 1.1)",
        "plain_ms_per_step": rounded(plain_ms),
        "runs_each": BLOCKS * RUNS_PER_BLOCK,
        "steps_per_run": STEPS,
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
