"""Admission overhead: a chain with `concurrency.max_runs` against the same chain without it.

Runs of a STEPS-step chain of no-op tasks, one at a time, with an engine process and a worker
process on one embedded nats-server (bench.chain_engine's set-up). The gated workflow has
`concurrency.max_runs: 4`, so every run asks its gate before it starts and releases its slot
when it ends (two gate appends per run); the plain one is the same chain with no admission.
A third chain names its task type in `max_task_concurrency` (limit 4): every task asks the
type's limiter for a slot before it is published and gives it back when it ends (the release
rides on the next task's acquire: one limiter append per step, and the run's live attempts
found after each command). The three are
measured in alternating blocks in the same run, so the machine's load falls on all alike.
`value` is the gated chain's ms per step; `ratio` is that over the plain chain's (target
<= 1.1); `task_ratio` is the limited chain's over the plain chain's;
`limiter_appends_per_step` counts the limiter's history messages per step of the limited
chain (a chain's next task takes its slot and releases the last one in one append: about 1).

`python -m bench.admission` prints one JSON line; `--profile FILE` runs the engine under
cProfile and writes its stats there (a profiling aid: the figures are then slower).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bench.chain_engine import sequential_runs
from bench.common import RunWatcher, bench_server, chain_workflow, emit, rounded
from bench.workers import NOOP_TASK
from dagnats.runtime.resources import HISTORY_PREFIX
from kernel.admission_flow import FLOW_PREFIX
from kernel.workflow.model import Admission, TaskConcurrency

BLOCKS: Final = 4  # alternating blocks of each workflow
RUNS_PER_BLOCK: Final = 15
STEPS: Final = 10
WORKER_CONCURRENCY: Final = 16
TASK_LIMIT: Final = 4


async def measure(profile: Path | None = None) -> dict[str, object]:
    async with bench_server("admission") as bench:
        await bench.engine(profile=profile)
        await bench.worker(concurrency=WORKER_CONCURRENCY)
        watcher = RunWatcher(bench.nc)
        await watcher.start()
        counter = LimiterCounter()
        await counter.start(bench.nc)
        plain = chain_workflow("bench-plain", STEPS, NOOP_TASK)
        gated = msgspec.structs.replace(
            chain_workflow("bench-gated", STEPS, NOOP_TASK), admission=Admission(max_runs=4)
        )
        limited = msgspec.structs.replace(
            chain_workflow("bench-limited", STEPS, NOOP_TASK),
            admission=Admission(
                max_task_concurrency=(TaskConcurrency(task=NOOP_TASK, limit=TASK_LIMIT),)
            ),
        )
        tag = uuid.uuid4().hex[:8]
        spent = {"plain": 0.0, "gated": 0.0, "limited": 0.0}
        for block in range(BLOCKS):
            for name, workflow in (("plain", plain), ("gated", gated), ("limited", limited)):
                prefix = f"{name}-{tag}-{block}"
                wall_s, _, _ = await sequential_runs(
                    bench, watcher, workflow, prefix, RUNS_PER_BLOCK
                )
                spent[name] += wall_s
        await watcher.close()
        await bench.nc.flush()
        await counter.sub.unsubscribe()
    steps = BLOCKS * RUNS_PER_BLOCK * STEPS
    plain_ms, gated_ms = spent["plain"] * 1000 / steps, spent["gated"] * 1000 / steps
    limited_ms = spent["limited"] * 1000 / steps
    return {
        "bench": "admission",
        "value": rounded(gated_ms),
        "unit": "ms/step",
        "ratio": rounded(gated_ms / plain_ms, 3),
        "ratio_of": "a chain with max_runs / the same chain without (target <= 1.1)",
        "plain_ms_per_step": rounded(plain_ms),
        "task_ratio": rounded(limited_ms / plain_ms, 3),
        "task_ratio_of": "a chain with max_task_concurrency / the same chain without",
        "limited_ms_per_step": rounded(limited_ms),
        "limiter_appends_per_step": rounded(counter.seen / steps, 3),
        "runs_each": BLOCKS * RUNS_PER_BLOCK,
        "steps_per_run": STEPS,
    }


class LimiterCounter:
    """Counts the task limiters' history messages as they are published (a core NATS
    subscription on the history's subjects: compaction purges the stream's copies)."""

    def __init__(self) -> None:
        self.seen = 0

    async def start(self, nc: NatsClient) -> None:
        self.sub = await nc.subscribe(f"{HISTORY_PREFIX}.>", cb=self._on)

    async def _on(self, message: Msg) -> None:
        if message.subject.startswith(f"{HISTORY_PREFIX}.{FLOW_PREFIX}"):
            self.seen += 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.admission")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the engine")
    emit(asyncio.run(measure(parser.parse_args().profile)))


if __name__ == "__main__":
    main()
