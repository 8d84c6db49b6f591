"""The native workers `python -m bench.http` runs with `dagnats worker bench.http_worker:...`.

- `worker` serves `bench.http.noop` (returns at once): the task of the 1-step workflow whose
  start + wait the bench measures over HTTP and through the Client.
- `drainer` serves the task type named by `$BENCH_HTTP_TASK` with a no-op handler and, once
  `$BENCH_HTTP_COUNT` tasks are handled (their results acknowledged and their messages acked,
  `Worker.handled`), writes `{"wall_s": ..., "cpu_s": ..., "began_s": ...}` to
  `$BENCH_HTTP_OUT`: the seconds (and this process's CPU seconds) from its first handler call
  to then, and that first call's `time.perf_counter()` (the machine's monotonic clock). The
  bench queues the tasks before it starts this process, so the figure is the worker's own
  drain, without its start-up.

This module may write only the file `$BENCH_HTTP_OUT` names.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Final

from dagnats.worker import TaskContext, Worker

NOOP_TASK: Final = "bench.http.noop"
TASK_ENV: Final = "BENCH_HTTP_TASK"
COUNT_ENV: Final = "BENCH_HTTP_COUNT"
OUT_ENV: Final = "BENCH_HTTP_OUT"
WATCH_POLL_S: Final = 0.0005
WATCH_S_MAX: Final = 300.0

worker = Worker(concurrency=16, worker_id=f"bench-http-{os.getpid()}")
drainer = Worker(concurrency=16, fetch_batch_max=16, worker_id=f"bench-drain-{os.getpid()}")
_first: list[float] = []
_watching: list[asyncio.Task[None]] = []


async def noop(_context: TaskContext) -> None:
    return None


async def drain(_context: TaskContext) -> None:
    if not _first:
        _first.extend((time.perf_counter(), time.process_time()))
        _watching.append(asyncio.create_task(_watch(int(os.environ[COUNT_ENV]))))


async def _watch(count: int) -> None:
    """Write the drain's wall time once `count` tasks are handled (bounded)."""
    deadline = time.monotonic() + WATCH_S_MAX
    while drainer.handled < count:
        assert time.monotonic() < deadline, f"{drainer.handled} of {count} tasks handled"
        await asyncio.sleep(WATCH_POLL_S)
    wall_s, cpu_s = time.perf_counter() - _first[0], time.process_time() - _first[1]
    line = {"wall_s": wall_s, "cpu_s": cpu_s, "began_s": _first[0]}
    Path(os.environ[OUT_ENV]).write_text(json.dumps(line))


worker.add(NOOP_TASK, noop)
drainer.add(os.environ.get(TASK_ENV, "bench.http.drain"), drain)
