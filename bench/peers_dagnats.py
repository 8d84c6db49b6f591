"""DagNats in `python -m bench.peers`, through the documented path: `dagnats serve` as a
subprocess (its embedded nats-server, its built-in projections), a `dagnats worker` process
(`bench.peers_worker:worker`), and the public `Client.start` + `Client.wait` in the bench
process. One `round_()` starts serve and the worker on a fresh data dir, runs the four
workloads, and stops them.

This module may start processes and write only inside the temporary directory it creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final

from nats.js import JetStreamContext

from bench.common import REPO_ROOT, Child, wait_until
from bench.metrics import CpuMeter, JsMeter, children_of
from bench.peers_worker import BLOCK_TASK, DIR_ENV, GO_FILE, NOOP_TASK, REACHED_FILE
from bench.recovery import serve_command
from dagnats.client import Client
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import pick_free_port
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Workflow

CHAIN_STEPS: Final = 10
CHAIN_RUNS: Final = 20
ONE_STEP_RUNS: Final = 30
FANOUT_WIDTH: Final = 100
FANOUT_RUNS: Final = 3
BLOCK_STEP: Final = 5
RUN_TIMEOUT_S: Final = 30.0
WORKER_CONCURRENCY: Final = 128
POLL_S: Final = 0.005
HEARTBEAT_TIMEOUT_S: Final = 1.0  # `dagnats worker --heartbeat-timeout`

Result = dict[str, object]


def chain(name: str, steps: int, block_at: int | None = None) -> WorkflowDef:
    builder = Workflow(name)
    for index in range(steps):
        task = BLOCK_TASK if index == block_at else NOOP_TASK
        depends = [f"s{index - 1}"] if index else []
        builder = builder.task(f"s{index}", task=task, depends_on=depends)
    return builder.build()


def fanout(name: str, width: int) -> WorkflowDef:
    builder = Workflow(name)
    parallel = [f"p{index:03d}" for index in range(width)]
    for step_id in parallel:
        builder = builder.task(step_id, task=NOOP_TASK)
    return builder.task("join", task=NOOP_TASK, depends_on=parallel).build()


def worker_command(url: str, data_dir: Path) -> list[str]:
    """`dagnats worker` as the console script runs it, on this checkout (with the worker
    credential of the serve's data dir)."""
    arguments = ["worker", "bench.peers_worker:worker", "--nats-url", url]
    arguments += ["--data-dir", str(data_dir)]
    # A task held by a killed worker goes to another after the heartbeat timeout (10 s by
    # default): the resume workload measures the product with it set to HEARTBEAT_TIMEOUT_S.
    arguments += ["--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S)]
    arguments += ["--concurrency", str(WORKER_CONCURRENCY)]
    return [sys.executable, "-c", "from dagnats.cli import main; main()", *arguments]


async def start_worker(url: str, root: Path, name: str) -> asyncio.subprocess.Process:
    with (root / f"{name}.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *worker_command(url, root / "data"),
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, DIR_ENV: str(root)},
        )


async def one_run(client: Client, workflow: str) -> float:
    """start + wait of one run: its seconds."""
    started = time.perf_counter()
    run_id = await client.start(workflow, run_id=f"{workflow}-{uuid.uuid4().hex[:10]}")
    state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
    assert state.status == "completed", f"run {run_id} of {workflow} ended {state.status}"
    return time.perf_counter() - started


async def measured(
    client: Client,
    cpu: CpuMeter,
    admin: JetStreamContext,
    workflow: str,
    runs: int,
    steps_per_run: int,
) -> tuple[list[float], dict[str, object]]:
    """`runs` runs one after the other; their seconds, and CPU and JetStream per step (the
    JetStream counters read with the admin credential: a client may not list streams)."""
    meter = JsMeter(admin)
    await meter.start()
    cpu.start()
    durations = [await one_run(client, workflow) for _ in range(runs)]
    per_step: dict[str, object] = {"cpu_ms_per_step": cpu.per_step(runs * steps_per_run)}
    per_step.update(await meter.per_step(runs * steps_per_run))
    return durations, per_step


async def workloads(client: Client, cpu: CpuMeter, admin: JetStreamContext) -> dict[str, Result]:
    for workflow in (chain("peers-chain", CHAIN_STEPS), chain("peers-one", 1)):
        await client.register_workflow(workflow)
    await client.register_workflow(fanout("peers-fanout", FANOUT_WIDTH))
    for name in ("peers-chain", "peers-one", "peers-fanout"):
        await one_run(client, name)  # warm-up (and the worker's consumer is there)
    results: dict[str, Result] = {}
    durations, extra = await measured(client, cpu, admin, "peers-chain", CHAIN_RUNS, CHAIN_STEPS)
    results["chain"] = {"value": sum(durations) * 1000 / (CHAIN_RUNS * CHAIN_STEPS), **extra}
    durations, extra = await measured(client, cpu, admin, "peers-one", ONE_STEP_RUNS, 1)
    results["one_step"] = {"value": statistics.median(durations) * 1000, **extra}
    durations, extra = await measured(
        client, cpu, admin, "peers-fanout", FANOUT_RUNS, FANOUT_WIDTH + 1
    )
    results["fanout"] = {"value": statistics.median(durations), **extra}
    return results


async def kill_all(serve: Child, worker: asyncio.subprocess.Process) -> None:
    """SIGKILL serve (its nats-server dies with it) and the worker; wait until all are gone."""
    nats_pids = children_of(serve.pid)
    for process in (serve.process, worker):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()

    async def nats_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in nats_pids)

    await wait_until(nats_gone, 10.0, "nats-server gone after serve's SIGKILL", POLL_S)


Process = asyncio.subprocess.Process


async def resume(
    root: Path, data_dir: Path, port: int, client: Client, serve: Child, worker: Process
) -> tuple[float, Child, Process]:
    """A 10-step chain whose s5 blocks; kill serve and worker while s5 runs, restart both:
    seconds from the restart to the run's result through a new client."""
    await client.register_workflow(chain("peers-resume", CHAIN_STEPS, block_at=BLOCK_STEP))
    run_id = await client.start("peers-resume", run_id=f"resume-{uuid.uuid4().hex[:10]}")

    async def reached() -> bool:
        return (root / REACHED_FILE).exists()

    await wait_until(reached, RUN_TIMEOUT_S, "s5 of the resume run called", POLL_S)
    await client.close()
    await kill_all(serve, worker)
    (root / GO_FILE).touch()
    started = time.perf_counter()
    serve = await Child.start(serve_command(data_dir, port), root / "serve-2.log")
    worker = await start_worker(str(serve.ready["nats_url"]), root, "worker-2")
    client = await Client.connect(str(serve.ready["nats_url"]), data_dir=data_dir)
    try:
        state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
    finally:
        await client.close()
    assert state.status == "completed", f"resumed run {run_id} ended {state.status}"
    return time.perf_counter() - started, serve, worker


async def round_() -> dict[str, Result]:
    """One round of the four workloads on a fresh serve + worker."""
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-peers-") as directory:
        root = Path(directory)
        data_dir, port = root / "data", pick_free_port()
        serve = await Child.start(serve_command(data_dir, port), root / "serve-1.log")
        url = str(serve.ready["nats_url"])
        worker = await start_worker(url, root, "worker-1")
        admin = await Connection.open(url, role="admin", data_dir=data_dir)
        try:
            client = await Client.connect(url, data_dir=data_dir)
            [nats_pid] = children_of(serve.pid)
            cpu = CpuMeter(
                {"serve": serve.pid, "nats_server": nats_pid, "worker": worker.pid,
                 "client": os.getpid()}
            )  # fmt: skip
            results = await workloads(client, cpu, admin.js)
            seconds, serve, worker = await resume(root, data_dir, port, client, serve, worker)
            results["resume"] = {"value": seconds}
        finally:
            await admin.close()
            await _stop(serve, worker)
    return results


async def _stop(serve: Child, worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 15.0)
        except TimeoutError:
            worker.kill()
            await worker.wait()
    await serve.stop()
