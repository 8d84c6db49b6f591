"""The HTTP API and the HTTP worker bridge, each as a ratio to the same work done natively.

One real `dagnats serve` process (its embedded nats-server, projections, HTTP API and bridge
on a free loopback port), as a user runs it; every worker is a process of its own.

- `start_wait`: start + wait of a 1-step workflow (its task served by a `dagnats worker`
  process, `bench.http_worker:worker`), one run after the other: `POST /v1/runs` then
  `GET /v1/runs/{id}/wait` over HTTP (httpx, one kept-alive connection), against
  `Client.start` + `Client.wait` in this process; ROUNDS interleaved rounds of RUNS each.
  `start_wait_ratio` is HTTP ms per run over Client ms per run (median of the rounds).
- the bridge: TASKS runs of a 1-step workflow of a fresh task type are started and the bench
  waits until their task messages are all queued; then a worker process is started that takes
  and completes them all. Its wall time runs from its first task to its last result
  acknowledged by the server (its process start excluded):
  - native: `dagnats worker bench.http_worker:drainer --concurrency BATCH`;
  - bridge: an HTTP worker (`python -m bench.http bridge ...`, httpx) against serve's bridge:
    it polls up to BATCH tasks and settles them in one `POST /v1/tasks/results`, with one
    poll ahead (the next poll is in flight while the batch's results are sent), as a worker
    in any language can.
  The same is measured one task at a time (`serial_*`: the native worker with --concurrency 1;
  the HTTP worker sends each result with the next poll in one `/v1/tasks/results`).

The pairs run in ROUNDS interleaved rounds; each figure is the median of its rounds. `value`
is the bridge's ms per task; `ratio` is that over the native worker's in the same run (target
<= 1.5). `settled_ratio` compares the same drains up to the engine having taken every result
(no command left in the commands stream, looked at every 10 ms), from the same first task: a native
worker's wall time ends when the server stored its last result, while the engine, in serve,
may still be deciding the runs; the bridge shares serve's loop with that engine.
`cpu_ms_per_task` is the CPU per task of serve (engine, projections, HTTP, bridge), its
nats-server and the worker process, while each side runs; `cpu_ratio` compares the totals (the
bridge moves a worker's NATS work into serve: its wall time on a 2-core machine is bound by
serve's one loop). Those windows hold different shares of the engine's work (a native drain's
ends while serve still decides its runs), so `settled_serve_cpu_ms_per_task` is serve's CPU
per task from the same start until the engine took every result: the same work on each side.

`python -m bench.http` prints one JSON line. It starts processes and writes only inside the
temporary directory it creates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final, NamedTuple

import httpx

from bench.common import REPO_ROOT, Child, emit, rounded, wait_until
from bench.http_worker import COUNT_ENV, NOOP_TASK, OUT_ENV, TASK_ENV
from bench.metrics import CpuMeter, children_of
from bench.recovery import serve_command
from dagnats.client import Client
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import pick_free_port
from dagnats.runtime.resources import (
    COMMAND_SUBJECTS,
    COMMANDS_STREAM,
    TASKS_STREAM,
    task_subject,
)
from kernel.workflow.builder import Workflow

RUNS: Final = 30  # start + wait, per round and side
ROUNDS: Final = 3
TASKS: Final = 300  # per round and side
BATCH: Final = 16
SERIAL_TASKS: Final = 60
RUN_TIMEOUT_S: Final = 30.0
QUEUED_WAIT_S: Final = 60.0
DRAIN_WAIT_S: Final = 120.0
ONE_STEP: Final = "bench-http-one"
STATUS_OK: Final = (200, 201)
Sides = dict[str, dict[str, float]]  # "native"/"bridge" -> figure -> value


class Stack:
    """The serve process (its NATS and HTTP URLs, its nats-server child), a Client and an
    admin connection (to read stream counts)."""

    def __init__(self, root: Path, serve: Child, client: Client, admin: Connection) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.serve = serve
        self.url = str(serve.ready["nats_url"])
        self.base_url = str(serve.ready["http_url"])
        self.client = client
        self.admin = admin
        [self.nats_pid] = children_of(serve.pid)


def cli(*arguments: str) -> list[str]:
    """The `dagnats` command as the console script runs it, on this checkout."""
    return [sys.executable, "-c", "from dagnats.cli import main; main()", *arguments]


async def start_native(stack: Stack, spec: str, concurrency: int, env: dict[str, str]) -> Child:
    """`dagnats worker SPEC` (a process), returned at once: it prints nothing; the warm-up
    runs (start + wait) and the drain's bounded wait wait for it."""
    arguments = ["worker", spec, "--nats-url", stack.url, "--concurrency", str(concurrency)]
    log = stack.root / f"worker-{uuid.uuid4().hex[:6]}.log"
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            *cli(*arguments), cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env={**os.environ, "DAGNATS_DATA_DIR": str(stack.data_dir), **env},
        )  # fmt: skip
    return Child(process, log)


# -- start + wait -------------------------------------------------------------------------


async def client_round(client: Client) -> float:
    """ms per run of RUNS start + wait through the Client."""
    began = time.perf_counter()
    for _ in range(RUNS):
        run_id = await client.start(ONE_STEP, None, run_id=f"c-{uuid.uuid4().hex[:12]}")
        state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        assert state.status == "completed", (run_id, state.status)
    return (time.perf_counter() - began) * 1000 / RUNS


async def http_round(http: httpx.AsyncClient) -> float:
    """ms per run of RUNS start + wait over HTTP."""
    began = time.perf_counter()
    for _ in range(RUNS):
        body = {"workflow": ONE_STEP, "input": None, "run_id": f"h-{uuid.uuid4().hex[:12]}"}
        started = await http.post("/v1/runs", json=body)
        assert started.status_code in STATUS_OK, started.text
        run_id = started.json()["run_id"]
        waited = await http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": RUN_TIMEOUT_S})
        assert waited.status_code == 200, waited.text
        answer = waited.json()
        assert answer["ended"] and answer["run"]["status"] == "completed", answer
    return (time.perf_counter() - began) * 1000 / RUNS


async def start_wait(stack: Stack) -> dict[str, object]:
    worker = await start_native(stack, "bench.http_worker:worker", BATCH, {})
    await stack.client.register_workflow(Workflow(ONE_STEP).task("a", task=NOOP_TASK).build())
    try:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=RUN_TIMEOUT_S) as http:
            await client_round_n(stack.client, 3)  # warm-up: the worker's consumer, caches
            await http_round_n(http, 3)
            client_ms, http_ms = [], []
            for _ in range(ROUNDS):
                client_ms.append(await client_round(stack.client))
                http_ms.append(await http_round(http))
    finally:
        await worker.stop()
    client_median, http_median = statistics.median(client_ms), statistics.median(http_ms)
    return {
        "start_wait_http_ms": rounded(http_median),
        "start_wait_client_ms": rounded(client_median),
        "start_wait_ratio": rounded(http_median / client_median, 3),
    }


async def client_round_n(client: Client, runs: int) -> None:
    for _ in range(runs):
        await client.wait(await client.start(ONE_STEP, None), timeout_s=RUN_TIMEOUT_S)


async def http_round_n(http: httpx.AsyncClient, runs: int) -> None:
    for _ in range(runs):
        run_id = (await http.post("/v1/runs", json={"workflow": ONE_STEP})).json()["run_id"]
        await http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": RUN_TIMEOUT_S})


# -- the bridge against a native worker ---------------------------------------------------


async def queue_tasks(stack: Stack, task_type: str, count: int) -> None:
    """Start `count` runs whose one step is a `task_type` task; wait until all are queued."""
    workflow = Workflow(f"bench_http_{task_type.replace('.', '_')}").task("s", task=task_type)
    await stack.client.register_workflow(workflow.build())
    name = workflow.build().name
    for first in range(0, count, 50):
        await asyncio.gather(
            *(stack.client.start(name, i) for i in range(first, min(first + 50, count)))
        )
    subject = task_subject(task_type)

    async def queued() -> bool:
        info = await stack.admin.js.stream_info(TASKS_STREAM, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0) >= count

    await wait_until(queued, QUEUED_WAIT_S, f"{count} {task_type} tasks queued", poll_s=0.01)


class Drain(NamedTuple):
    """One worker's run of queued tasks: its wall and CPU seconds (its own process), the CPU
    ms of serve and its nats-server meanwhile, and the seconds from its first task until the
    engine took every result, and serve's CPU ms until then."""

    wall_s: float
    cpu_s: float
    serve_cpu_ms: float
    nats_cpu_ms: float
    settled_s: float
    settled_serve_cpu_ms: float

    def per_task(self, count: int) -> dict[str, float]:
        return {
            "ms": self.wall_s * 1000 / count,
            "settled_ms": self.settled_s * 1000 / count,
            "cpu_ms": (self.cpu_s * 1000 + self.serve_cpu_ms + self.nats_cpu_ms) / count,
            "serve_cpu_ms": self.serve_cpu_ms / count,
            "worker_cpu_ms": self.cpu_s * 1000 / count,
            "settled_serve_cpu_ms": self.settled_serve_cpu_ms / count,
        }


async def native_drain(stack: Stack, task_type: str, count: int, batch: int) -> Drain:
    """A `dagnats worker` process runs `count` queued tasks."""
    out = stack.root / f"drain-{uuid.uuid4().hex[:8]}.json"
    env = {TASK_ENV: task_type, COUNT_ENV: str(count), OUT_ENV: str(out)}
    cpu = CpuMeter({"serve": stack.serve.pid, "nats": stack.nats_pid})
    cpu.start()
    worker = await start_native(stack, "bench.http_worker:drainer", batch, env)
    try:

        async def written() -> bool:
            assert worker.process.returncode is None, worker.log_tail()
            return out.exists() and out.stat().st_size > 0

        await wait_until(written, DRAIN_WAIT_S, f"the native worker to run {count} tasks", 0.01)
        spent = cpu.per_step(1)
    finally:
        await worker.stop()
    line = json.loads(out.read_text())
    settled_s = await settled(stack, line["began_s"])
    serve_ms = cpu.per_step(1)["serve"]
    return Drain(line["wall_s"], line["cpu_s"], spent["serve"], spent["nats"], settled_s, serve_ms)


async def bridge_drain(stack: Stack, task_type: str, count: int, batch: int) -> Drain:
    """An HTTP worker process runs `count` queued tasks through serve's bridge."""
    argv = ["bridge", stack.base_url, task_type, "--count", str(count), "--batch", str(batch)]
    cpu = CpuMeter({"serve": stack.serve.pid, "nats": stack.nats_pid})
    cpu.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.http", *argv, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=DRAIN_WAIT_S)
    spent = cpu.per_step(1)
    assert process.returncode == 0, (argv, process.returncode)
    line = json.loads(out.decode().strip().splitlines()[-1])
    settled_s = await settled(stack, line["began_s"])
    serve_ms = cpu.per_step(1)["serve"]
    return Drain(line["wall_s"], line["cpu_s"], spent["serve"], spent["nats"], settled_s, serve_ms)


async def settled(stack: Stack, began_s: float) -> float:
    """Seconds from `began_s` (a `time.perf_counter()` of a worker process: the same clock)
    until the engine took every command (no `dagnats.cmd.` message is left in the work-queue
    commands stream)."""

    async def empty() -> bool:
        info = await stack.admin.js.stream_info(COMMANDS_STREAM, subjects_filter=COMMAND_SUBJECTS)
        return not any((info.state.subjects or {}).values())

    await wait_until(empty, DRAIN_WAIT_S, "the engine to take every result", poll_s=0.01)
    return time.perf_counter() - began_s


async def one_pair(stack: Stack, count: int, batch: int) -> Sides:
    """Per task of the native worker and of the bridge, `count` tasks each (fresh types)."""
    tag = uuid.uuid4().hex[:8]
    native_type, bridge_type = f"bench.native.{tag}", f"bench.bridge.{tag}"
    await queue_tasks(stack, native_type, count)
    native = await native_drain(stack, native_type, count, batch)
    await queue_tasks(stack, bridge_type, count)
    bridge = await bridge_drain(stack, bridge_type, count, batch)
    return {"native": native.per_task(count), "bridge": bridge.per_task(count)}


def medians(pairs: list[Sides]) -> Sides:
    """The median of each figure of each side over the rounds."""
    return {
        side: {key: statistics.median(pair[side][key] for pair in pairs) for key in pairs[0][side]}
        for side in ("native", "bridge")
    }


async def measure() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-http-") as directory:
        root = Path(directory)
        command = [*serve_command(root / "data", pick_free_port()), "--http", "127.0.0.1:0"]
        serve = await Child.start(command, root / "serve.log")
        try:
            url = str(serve.ready["nats_url"])
            client = await Client.connect(url, data_dir=root / "data")
            admin = await Connection.open(url, role="admin", data_dir=root / "data")
            try:
                stack = Stack(root, serve, client, admin)
                line = await start_wait(stack)
                await one_pair(stack, 20, BATCH)  # warm-up: connections, consumers, caches
                batched, serial = [], []
                for _ in range(ROUNDS):
                    batched.append(await one_pair(stack, TASKS, BATCH))
                    serial.append(await one_pair(stack, SERIAL_TASKS, 1))
            finally:
                await admin.close()
                await client.close()
        finally:
            await serve.stop()
    return result(line, medians(batched), medians(serial))


def result(line: dict[str, object], batched: Sides, serial: Sides) -> dict[str, object]:
    bridge, native = batched["bridge"], batched["native"]
    return {
        "bench": "http",
        "path": "documented: dagnats serve (HTTP API + bridge) + dagnats worker / HTTP worker",
        "value": rounded(bridge["ms"]),
        "unit": "ms/task",
        "ratio": rounded(bridge["ms"] / native["ms"], 3),
        "ratio_of": "bridge ms/task / dagnats worker ms/task, same serve, median of "
        f"{ROUNDS} interleaved rounds (target <= 1.5)",
        "tasks": TASKS,
        "batch": BATCH,
        "native_ms_per_task": rounded(native["ms"]),
        "settled_ratio": rounded(bridge["settled_ms"] / native["settled_ms"], 3),
        "settled_ms_per_task": {
            "bridge": rounded(bridge["settled_ms"]), "native": rounded(native["settled_ms"])
        },
        "settled_serve_cpu_ms_per_task": {
            "bridge": rounded(bridge["settled_serve_cpu_ms"]),
            "native": rounded(native["settled_serve_cpu_ms"]),
        },
        "cpu_ratio": rounded(bridge["cpu_ms"] / native["cpu_ms"], 3),
        "cpu_ms_per_task": {
            side: {
                key: rounded(value) for key, value in batched[side].items()
                if "cpu" in key and not key.startswith("settled")
            }
            for side in ("bridge", "native")
        },
        "serial_tasks": SERIAL_TASKS,
        "serial_bridge_ms_per_task": rounded(serial["bridge"]["ms"]),
        "serial_native_ms_per_task": rounded(serial["native"]["ms"]),
        "serial_ratio": rounded(serial["bridge"]["ms"] / serial["native"]["ms"], 3),
        "serial_cpu_ratio": rounded(serial["bridge"]["cpu_ms"] / serial["native"]["cpu_ms"], 3),
        **line,
        "start_wait_ratio_of": "HTTP start+wait ms / Client start+wait ms, 1-step workflow",
    }


# -- the HTTP worker (a process of its own) -----------------------------------------------


async def http_worker(
    base_url: str, task_type: str, count: int, batch: int
) -> tuple[float, float, float]:
    """Seconds (and CPU seconds) to run `count` queued tasks over the bridge, from the first
    task taken (its `time.perf_counter()`, the third) to the last result acknowledged.
    batch > 1: a batch's results in one `/v1/tasks/results` while the next poll is in flight;
    batch 1: one request per task (its result and the next poll)."""
    poll = {"task_types": [task_type], "max_tasks": batch, "timeout_ms": 1_000}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def take() -> list[dict[str, Any]]:
            answer = await http.post("/v1/tasks/poll", json=poll)
            assert answer.status_code == 200, answer.text
            tasks: list[dict[str, Any]] = answer.json()["tasks"]
            return tasks

        async def settle(tasks: list[dict[str, Any]], then_poll: bool) -> list[dict[str, Any]]:
            body: dict[str, Any] = {"results": [{"id": t["id"], "output": None} for t in tasks]}
            if then_poll:
                body["poll"] = poll
            answer = await http.post("/v1/tasks/results", json=body)
            assert answer.status_code == 200, answer.text
            reply = answer.json()
            assert all(item["status"] == "completed" for item in reply["results"]), reply
            taken: list[dict[str, Any]] = reply["tasks"]
            return taken

        tasks = await take()
        began, done, cpu = time.perf_counter(), 0, time.process_time()
        for _ in range(count * 10):
            more = done + len(tasks) < count
            ahead = asyncio.ensure_future(take()) if more and batch > 1 else None
            taken = await settle(tasks, then_poll=more and batch == 1)
            done += len(tasks)
            if done >= count:
                break
            tasks = await ahead if ahead is not None else taken
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert done == count, (done, count)
    return wall, cpu, began


def child(argv: list[str]) -> None:
    """`python -m bench.http bridge BASE_URL TASK_TYPE --count N --batch B`."""
    parser = argparse.ArgumentParser(prog="bench.http")
    parser.add_argument("side", choices=["bridge"])
    parser.add_argument("base_url")
    parser.add_argument("task_type")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    wall, cpu, began = asyncio.run(
        http_worker(args.base_url, args.task_type, args.count, args.batch)
    )
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "began_s": began}), flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        child(sys.argv[1:])
        return
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
