"""A worker with more task types than slots: a 40-step chain alternating 19 task types
through a 4-slot worker, against the same chain on one task type (a measurement, never a
test). Engine, worker and an embedded nats-server in this process (`local_stack`).

`python -m bench.task_types` prints one JSON line: seconds per chain for each case.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Final

from dagnats.runtime.serve import local_stack
from dagnats.worker import TaskContext, Worker

STEPS: Final = 40
TYPES: Final = 19
SLOTS: Final = 4
RUN_TIMEOUT_S: Final = 120.0


async def noop(ctx: TaskContext) -> int:
    return ctx.attempt


def chain(name: str, types: int) -> bytes:
    steps: list[dict[str, object]] = []
    for index in range(STEPS):
        step: dict[str, object] = {"id": f"s{index}", "task": f"bench.t{index % types}"}
        if index:
            step["depends_on"] = [f"s{index - 1}"]
        steps.append(step)
    return json.dumps({"name": name, "version": "1", "steps": steps}).encode()


async def main() -> None:
    worker = Worker(concurrency=SLOTS)
    for index in range(TYPES):
        worker.add(f"bench.t{index}", noop)
    with tempfile.TemporaryDirectory() as data_dir:
        async with local_stack(Path(data_dir), worker) as (_, client):
            results = {}
            for name, types in (("one_type", 1), ("many_types", TYPES)):
                await client.register_workflow(chain(f"chain-{name}", types))
                await client.wait(await client.start(f"chain-{name}"), timeout_s=RUN_TIMEOUT_S)
                started = time.perf_counter()
                run_id = await client.start(f"chain-{name}")
                state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
                assert state.status == "completed", state.status
                results[name] = round(time.perf_counter() - started, 3)
    print(json.dumps({"bench": "task_types", "steps": STEPS, "types": TYPES, "slots": SLOTS,
                      "unit": "s per chain", **results}))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
