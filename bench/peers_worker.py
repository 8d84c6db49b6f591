"""The worker `python -m bench.peers` runs with `dagnats worker bench.peers_worker:worker`.

Two task types: `bench.noop` returns at once; `bench.block` (the resume workload's step s5)
writes the file `reached` into `$BENCH_PEERS_DIR`, then waits until the file `go` exists there
(bounded by BLOCK_WAIT_S_MAX), so the bench can kill the engine and the worker mid-run.

This module may write only inside `$BENCH_PEERS_DIR`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Final

from dagnats.worker import TaskContext, Worker

NOOP_TASK: Final = "bench.noop"
BLOCK_TASK: Final = "bench.block"
DIR_ENV: Final = "BENCH_PEERS_DIR"
REACHED_FILE: Final = "reached"
GO_FILE: Final = "go"
BLOCK_POLL_S: Final = 0.002
BLOCK_WAIT_S_MAX: Final = 60.0

worker = Worker(concurrency=128, worker_id=f"bench-peers-{os.getpid()}")


async def noop(_context: TaskContext) -> None:
    return None


async def block(context: TaskContext) -> str:
    directory = Path(os.environ[DIR_ENV])
    (directory / REACHED_FILE).touch()
    deadline = time.monotonic() + BLOCK_WAIT_S_MAX
    while not (directory / GO_FILE).exists():  # a file the bench creates after the restart
        assert time.monotonic() < deadline, f"no {GO_FILE} file in {BLOCK_WAIT_S_MAX}s"
        await asyncio.sleep(BLOCK_POLL_S)
    return context.step_id


worker.add(NOOP_TASK, noop)
worker.add(BLOCK_TASK, block)
