"""The workers the benches run: a no-op worker, and the recovery bench's instrumented one.

- `noop_worker`: one task type, `bench.noop`, whose handler returns `None` at once.
- `recovery_worker`: task type `bench.recovery`; each call appends its step id as one line to
  `<BENCH_RECOVERY_DIR>/calls` (so the bench counts calls per step, across processes), and the
  call of step `RECOVERY_BLOCKING_STEP` waits until the file `<BENCH_RECOVERY_DIR>/go` exists
  (the bench kills the engine meanwhile).

This module may write only inside `$BENCH_RECOVERY_DIR`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Final

from dagnats.worker import TaskContext, Worker

NOOP_TASK: Final = "bench.noop"
RECOVERY_TASK: Final = "bench.recovery"
RECOVERY_DIR_ENV: Final = "BENCH_RECOVERY_DIR"
RECOVERY_BLOCKING_STEP: Final = "s5"  # the 6th step of the chain s0..s9
CALLS_FILE: Final = "calls"
GO_FILE: Final = "go"
GO_POLL_S: Final = 0.002
GO_WAIT_S_MAX: Final = 60.0


def noop_worker(concurrency: int, *, report_started: bool | None = None) -> Worker:
    """A worker whose one handler does nothing; `report_started` None keeps the default of
    `dagnats.Worker`, True or False sets it."""
    worker_id = f"bench-noop-{os.getpid()}"
    if report_started is None:
        worker = Worker(concurrency=concurrency, worker_id=worker_id)
    else:
        worker = Worker(concurrency=concurrency, worker_id=worker_id, report_started=report_started)

    async def noop(_context: TaskContext) -> None:
        return None

    worker.add(NOOP_TASK, noop)
    return worker


def recovery_worker(concurrency: int) -> Worker:
    """A worker that records every call and blocks the call of RECOVERY_BLOCKING_STEP."""
    directory = Path(os.environ[RECOVERY_DIR_ENV])
    assert directory.is_dir(), f"{RECOVERY_DIR_ENV}={directory} is not a directory"
    worker = Worker(concurrency=concurrency, worker_id=f"bench-recovery-{os.getpid()}")

    async def record(context: TaskContext) -> dict[str, str]:
        with (directory / CALLS_FILE).open("a", encoding="utf-8") as calls:
            calls.write(f"{context.step_id} {context.attempt} {time.time():.6f}\n")
        if context.step_id == RECOVERY_BLOCKING_STEP:
            deadline = time.monotonic() + GO_WAIT_S_MAX
            while not (directory / GO_FILE).exists():  # a file the bench creates
                assert time.monotonic() < deadline, f"no {GO_FILE} file in {GO_WAIT_S_MAX}s"
                await asyncio.sleep(GO_POLL_S)
        return {"step": context.step_id}

    worker.add(RECOVERY_TASK, record)
    return worker


def read_calls(directory: Path) -> list[tuple[str, int, float]]:
    """The calls recorded so far: (step id, attempt, wall time), in call order."""
    path = directory / CALLS_FILE
    if not path.exists():
        return []
    calls: list[tuple[str, int, float]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        step_id, attempt, at = line.split()
        calls.append((step_id, int(attempt), float(at)))
    return calls
