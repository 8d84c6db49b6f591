"""HTTP worker bridge: the per-task cost of a worker over HTTP, as a ratio to a native worker.

One embedded nats-server and engine in this process. For each side, TASKS runs of a 1-step
workflow are started and the bench waits until their task messages are all queued; then a
worker takes and completes them all, and the time from the worker's start to the last result
acknowledged is the side's wall time:

- native: `dagnats.Worker` (concurrency BATCH, its defaults otherwise), a no-op handler;
- bridge: a Python HTTP worker (httpx) against the bridge's routes served by uvicorn on
  loopback: poll up to BATCH tasks, complete each (concurrently), poll again.

`value` is the bridge's milliseconds per task; `ratio` is that over the native worker's, in
the same run (target: <= 1.5). The same is then measured one task at a time (BATCH 1:
`serial_*`). Both workers, the engine and uvicorn share this process and its event loop, so
the ratio compares like with like, not either with a deployment.

`python -m bench.http` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import uvicorn
from litestar import Litestar

from bench.common import BenchServer, bench_server, emit, rounded
from dagnats.api.bridge import TaskBridge
from dagnats.api.bridge_routes import bridge_route_handlers
from dagnats.client import Client
from dagnats.runtime.connection import Connection
from dagnats.runtime.resources import TASKS_STREAM, task_subject
from dagnats.worker import TaskContext, Worker
from kernel.workflow.builder import Workflow

TASKS: Final = 400
BATCH: Final = 16
SERIAL_TASKS: Final = 100
QUEUED_WAIT_S: Final = 60.0
DRAIN_WAIT_S: Final = 120.0
POLL_S: Final = 0.005


class Stack:
    def __init__(self, bench: BenchServer, client: Client, bridge: TaskBridge, base_url: str):
        self.bench = bench
        self.client = client
        self.bridge = bridge
        self.base_url = base_url
        self.url = bench.url  # NATS


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[Stack]:
    """nats-server, an engine process, and the bridge with its routes under uvicorn here."""
    async with bench_server("http") as bench:
        await bench.engine()
        bridge = await TaskBridge.open(bench.url)
        client = await Client.connect(bench.url)
        app = Litestar(route_handlers=bridge_route_handlers(bridge))
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        http = uvicorn.Server(config)
        serving = asyncio.create_task(http.serve())
        try:
            await until(lambda: http.started, QUEUED_WAIT_S, "uvicorn to start")
            port = http.servers[0].sockets[0].getsockname()[1]
            yield Stack(bench, client, bridge, f"http://127.0.0.1:{port}")
        finally:
            http.should_exit = True
            await asyncio.wait_for(serving, timeout=10)
            await client.close()
            await bridge.close()


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await _call(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def _call(predicate: Any) -> bool:
    result = predicate()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


async def queue_tasks(running: Stack, task_type: str, count: int) -> None:
    """Start `count` runs whose one step is a `task_type` task; wait until all are queued."""
    workflow = Workflow(f"bench_http_{task_type.replace('.', '_')}").task("s", task=task_type)
    await running.client.register_workflow(workflow.build())
    name = workflow.build().name
    for start in range(0, count, 50):
        await asyncio.gather(
            *(running.client.start(name, i) for i in range(start, min(start + 50, count)))
        )
    connection = running.bench.connection
    subject = task_subject(task_type)

    async def queued() -> bool:
        info = await connection.js.stream_info(TASKS_STREAM, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0) >= count

    await until(queued, QUEUED_WAIT_S, f"{count} {task_type} tasks queued")


async def native_drain(url: str, task_type: str, count: int, batch: int) -> float:
    """Seconds a native worker takes to run `count` queued tasks (in its own process)."""
    worker = Worker(concurrency=batch, fetch_batch_max=batch)

    async def noop(_context: TaskContext) -> None:
        return None

    worker.add(task_type, noop)
    connection = await Connection.open(url, role="worker")
    stop = asyncio.Event()
    began = time.perf_counter()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    await until(lambda: worker.handled >= count, DRAIN_WAIT_S, "the native worker")
    wall = time.perf_counter() - began
    stop.set()
    await asyncio.wait_for(serving, timeout=30)
    await connection.close()
    return wall


async def bridge_drain(base_url: str, task_type: str, count: int, batch: int) -> float:
    """Seconds an HTTP worker takes to run `count` queued tasks (in its own process)."""
    done = 0
    poll = {"task_types": [task_type], "max_tasks": batch, "timeout_ms": 1_000}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await http.post("/v1/tasks/poll", json={**poll, "timeout_ms": 0, "task_types": ["warm"]})

        async def complete(task: dict[str, Any]) -> None:
            answer = await http.post(f"/v1/tasks/{task['id']}/complete", json={"output": None})
            assert answer.status_code == 200, answer.text

        began = time.perf_counter()
        for _ in range(count * 10):
            if done >= count:
                break
            tasks = (await http.post("/v1/tasks/poll", json=poll)).json()["tasks"]
            await asyncio.gather(*(complete(task) for task in tasks))
            done += len(tasks)
        wall = time.perf_counter() - began
    assert done == count, (done, count)
    return wall


async def child_drain(argv: list[str]) -> float:
    """Run one side's worker in a process of its own (as deployed); its wall time in s."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.http", *argv, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=DRAIN_WAIT_S)
    assert process.returncode == 0, (argv, process.returncode)
    wall: float = json.loads(out.decode().strip().splitlines()[-1])["wall_s"]
    return wall


async def one_pair(running: Stack, count: int, batch: int) -> tuple[float, float]:
    """(native, bridge) ms per task, each over `count` queued tasks of a fresh type."""
    tag = uuid.uuid4().hex[:8]
    native_type, bridge_type = f"bench.native.{tag}", f"bench.bridge.{tag}"
    sizes = ["--count", str(count), "--batch", str(batch)]
    await queue_tasks(running, native_type, count)
    native_s = await child_drain(["native", running.url, "-", native_type, *sizes])
    await queue_tasks(running, bridge_type, count)
    bridge_s = await child_drain(["bridge", running.base_url, "-", bridge_type, *sizes])
    return native_s * 1000 / count, bridge_s * 1000 / count


async def measure() -> dict[str, object]:
    async with stack() as running:
        await one_pair(running, 20, BATCH)  # warm-up: connections, consumers, caches
        native_ms, bridge_ms = await one_pair(running, TASKS, BATCH)
        serial_native_ms, serial_bridge_ms = await one_pair(running, SERIAL_TASKS, 1)
    return {
        "bench": "http",
        "value": rounded(bridge_ms),
        "unit": "ms/task",
        "ratio": rounded(bridge_ms / native_ms, 3),
        "ratio_of": "bridge ms/task / native worker ms/task, same run (target <= 1.5)",
        "tasks": TASKS,
        "batch": BATCH,
        "native_ms_per_task": rounded(native_ms),
        "serial_tasks": SERIAL_TASKS,
        "serial_bridge_ms_per_task": rounded(serial_bridge_ms),
        "serial_native_ms_per_task": rounded(serial_native_ms),
        "serial_ratio": rounded(serial_bridge_ms / serial_native_ms, 3),
    }


def child(argv: list[str]) -> None:
    """`python -m bench.http native|bridge URL DATA_DIR TASK_TYPE --count N --batch B`."""
    parser = argparse.ArgumentParser(prog="bench.http")
    parser.add_argument("side", choices=["native", "bridge"])
    parser.add_argument("url")
    parser.add_argument("data_dir")
    parser.add_argument("task_type")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    if args.side == "native":
        drain = native_drain(args.url, args.task_type, args.count, args.batch)
    else:
        drain = bridge_drain(args.url, args.task_type, args.count, args.batch)
    print(json.dumps({"wall_s": asyncio.run(drain)}), flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        child(sys.argv[1:])
        return
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
