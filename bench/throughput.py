"""Throughput across runs: RUNS runs of a STEPS-step no-op chain, all started at once.

The documented path: `dagnats serve` (its embedded nats-server, roles, metrics and built-in
projections: KV snapshots and SQLite query tables) and WORKERS worker processes
(`bench.procs worker`: `dagnats.Worker` with the serve's worker credential, as `dagnats
worker` runs it), every StartRun sent at once through the public `Client.send` (START_SENDS_
IN_FLIGHT awaited at a time), then the bench waits for every run to complete (a core
subscription of an admin connection sees each history append: the stopwatch, not a user's
path). `value` is steps per second across runs (RUNS * STEPS / wall time from the first start
sent to the last run completed); `ratio` is that over the batched raw JetStream hop rate
(`bench.floor`, measured on serve's nats-server in this run). Target: >= 5,000 steps/s.
Workers run with `dagnats.Worker`'s defaults; the same RUNS are then run again with workers
built with `report_started=True` (`with_started_steps_per_s`).

Beside it: CPU per step of each process, JetStream API requests and stored messages per step
(`bench.metrics`), over the default workers' RUNS; and serve's split between its event
loop's thread and its other threads (`engine_loop_cpu_ms_per_step`,
`engine_threads_cpu_ms_per_step`: the SQLite projection's batches run in a worker thread).

`python -m bench.throughput` prints one JSON line. It starts processes and writes only inside
the temporary directory it creates.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from bench.common import (
    Child,
    RunWatcher,
    chain_workflow,
    emit,
    floor_fields,
    procs_command,
    rounded,
)
from bench.floor import measure_floor
from bench.metrics import (
    CLOCK_TICKS_PER_S,
    STAT_UTIME_FIELD,
    CpuMeter,
    JsMeter,
    children_of,
    cpu_ms,
)
from bench.recovery import serve_command
from bench.workers import NOOP_TASK
from dagnats.client import Client
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import pick_free_port
from kernel.commands import StartRun
from kernel.workflow import WorkflowDef

RUNS: Final = 2_000
STEPS: Final = 5
WORKERS: Final = 2
WORKER_CONCURRENCY: Final = 256
WARMUP_RUNS: Final = 20
RUN_TIMEOUT_S: Final = 60.0
START_SENDS_IN_FLIGHT: Final = 256


async def send_starts(client: Client, workflow: WorkflowDef, run_ids: Sequence[str]) -> None:
    """A StartRun for every run through `Client.send`, START_SENDS_IN_FLIGHT at a time."""
    nothing = msgspec.Raw(b"null")
    for first in range(0, len(run_ids), START_SENDS_IN_FLIGHT):
        starts = [
            StartRun(
                run_id=run_id, at_ms=now_ms(), seed=new_seed(), workflow=workflow, input=nothing
            )
            for run_id in run_ids[first : first + START_SENDS_IN_FLIGHT]
        ]
        await asyncio.gather(
            *(client.send(start, msg_id=f"start:{start.run_id}") for start in starts)
        )


async def wave(
    client: Client, watcher: RunWatcher, workflow: WorkflowDef, prefix: str, count: int
) -> tuple[float, int]:
    """Start `count` runs at once and wait for all: (wall s, history appends seen)."""
    run_ids = [f"{prefix}-{index}" for index in range(count)]
    ended = [watcher.expect(run_id) for run_id in run_ids]
    appends_before = watcher.appends
    started = time.perf_counter()
    await send_starts(client, workflow, run_ids)
    await watcher.wait_all(ended, RUN_TIMEOUT_S)
    wall_s = time.perf_counter() - started
    failed = [future.result() for future in ended if future.result() != "completed"]
    assert not failed, f"{len(failed)} runs did not complete: {failed[:3]}"
    return wall_s, watcher.appends - appends_before


def thread_cpu_ms(pid: int) -> tuple[float, float]:
    """(utime + stime of `pid`'s main thread, of the whole process) in ms; (0, 0) when gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0, 0.0
    fields = text.rsplit(")", 1)[1].split()  # (the layout of /proc/<pid>/stat)
    ticks = int(fields[STAT_UTIME_FIELD - 2]) + int(fields[STAT_UTIME_FIELD - 1])
    return ticks * 1000 / CLOCK_TICKS_PER_S, cpu_ms(pid)


def engine_split(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    """The engine's CPU per step of RUNS * STEPS steps: its loop's thread, its other threads."""
    steps = RUNS * STEPS
    loop_ms, all_ms = after[0] - before[0], after[1] - before[1]
    return {
        "engine_loop_cpu_ms_per_step": rounded(loop_ms / steps, 3),
        "engine_threads_cpu_ms_per_step": rounded(max(all_ms - loop_ms, 0.0) / steps, 3),
    }


async def start_workers(url: str, data_dir: Path, count: int, started: bool | None) -> list[Child]:
    """`count` worker processes with the serve's worker credential (`bench.procs worker`)."""
    arguments = ["worker", "--url", url, "--kind", "noop", "--data-dir", str(data_dir)]
    arguments += ["--concurrency", str(WORKER_CONCURRENCY)]
    if started is not None:
        arguments += ["--report-started", "yes" if started else "no"]
    tag = "started" if started else "default"
    return [
        await Child.start(procs_command(arguments), data_dir.parent / f"worker-{tag}-{index}.log")
        for index in range(count)
    ]


async def measure(workers: int = WORKERS) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-throughput-") as directory:
        root = Path(directory)
        data_dir = root / "data"
        serve = await Child.start(serve_command(data_dir, pick_free_port()), root / "serve.log")
        children = [serve]
        try:
            url = str(serve.ready["nats_url"])
            admin = await Connection.open(url, role="admin", data_dir=data_dir)
            client = await Client.connect(url, data_dir=data_dir)
            try:
                floor = await measure_floor(admin.nc)
                workers_started = await start_workers(url, data_dir, workers, None)
                children += workers_started
                watcher = RunWatcher(admin.nc)
                await watcher.start()
                workflow = chain_workflow("bench-throughput", STEPS, NOOP_TASK)
                tag = uuid.uuid4().hex[:8]
                await wave(client, watcher, workflow, f"warm-{tag}", WARMUP_RUNS)
                [nats_pid] = children_of(serve.pid)
                pids = {"nats_server": nats_pid, "engine": serve.pid}
                pids |= {f"worker{index or ''}": w.pid for index, w in enumerate(workers_started)}
                cpu, meter = CpuMeter({**pids, "client": os.getpid()}), JsMeter(admin.js)
                await meter.start()
                cpu.start()
                threads_before = thread_cpu_ms(serve.pid)
                wall_s, appends = await wave(client, watcher, workflow, f"tp-{tag}", RUNS)
                split = engine_split(threads_before, thread_cpu_ms(serve.pid))
                per_step: dict[str, object] = {"cpu_ms_per_step": cpu.per_step(RUNS * STEPS)}
                per_step |= await meter.per_step(RUNS * STEPS)
                # The same with workers that report TaskStarted (a command and an append more
                # per step).
                for worker in workers_started:
                    await worker.stop()
                children += await start_workers(url, data_dir, workers, True)
                with_started_s, _ = await wave(client, watcher, workflow, f"started-{tag}", RUNS)
                await watcher.close()
            finally:
                await client.close()
                await admin.close()
        finally:
            for child in reversed(children):
                await child.stop()
    steps_per_s = RUNS * STEPS / wall_s
    started_steps_per_s = RUNS * STEPS / with_started_s
    return {
        "bench": "throughput",
        "value": rounded(steps_per_s, 1),
        "unit": "steps/s",
        "ratio": rounded(steps_per_s / floor["batched_hops_per_s"], 3),
        "ratio_of": "steps/s / floor batched hops/s (target >= 5000 steps/s)",
        "runs": RUNS,
        "steps_per_run": STEPS,
        "workers": workers,
        "worker_concurrency": WORKER_CONCURRENCY,
        "wall_s": rounded(wall_s, 3),
        "runs_per_s": rounded(RUNS / wall_s, 1),
        "history_appends_per_s": rounded(appends / wall_s, 1),
        "path": "documented: dagnats serve (projections on) + worker processes + Client.send",
        **per_step,
        **split,
        "with_started_steps_per_s": rounded(started_steps_per_s, 1),
        **floor_fields(floor),
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
