"""The worker module of the fault tests (tests/test_faults.py), run as a real subprocess.

One handler serves every task type in `TASK_TYPES`. Each call appends one JSON line (task,
run, step, attempt, pid) to the file named by `$DAGNATS_FAULT_CALLS`, before doing anything
else, so a test can see that a handler is running and count calls across processes. A step
whose metadata holds `{"gate": NAME}` blocks (on the attempts listed in `block_attempts`,
comma-separated, default "1") until the file `$DAGNATS_FAULT_GATES/NAME` exists: the test
kills a process while a handler is known to be inside, then opens the gate.
`{"fail": "non_retryable"}` fails the step for good; `{"fail_attempts": "1,2"}` fails those
attempts for good (a later attempt, after `dagnats run retry`, succeeds).

Serve it with `dagnats worker tests.fault_workers:worker --nats-url URL`, or with
`python -m tests.fault_workers --nats-url URL --ack-wait-ms 2000 --events-file F` to get a
short heartbeat timeout (the CLI has no option for it) and a file of connection events
(`connected`, `disconnected`, `reconnected`), so a test can wait for a reconnect.

This module may touch only the files named by its environment and its arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

import nats

from dagnats.runtime import settings
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.serve import install_stop_signals
from dagnats.worker import NonRetryableError, TaskContext, Worker

CALLS_ENV: Final = "DAGNATS_FAULT_CALLS"
GATES_ENV: Final = "DAGNATS_FAULT_GATES"
TASK_TYPES: Final = ("fault.work", "fault.other", "fault.poison")
gate_wait_s_max: Final = 60.0
gate_poll_s: Final = 0.01

worker = Worker(concurrency=32, worker_id=f"fault-{os.getpid()}")
# A test may ask for frequent worker-directory beats (so one falls inside an outage window).
BEAT_MS_ENV: Final = "FAULT_WORKER_BEAT_MS"
if os.environ.get(BEAT_MS_ENV):
    worker.beat_interval_ms = int(os.environ[BEAT_MS_ENV])


def append_line(path: Path, line: str) -> None:
    """Append one line with a single O_APPEND write (atomic between processes)."""
    data = (line.rstrip("\n") + "\n").encode()
    assert len(data) < 4_096, "one write of a line must stay atomic"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = os.write(descriptor, data)
        assert written == len(data), f"short write: {written} of {len(data)} bytes"
    finally:
        os.close(descriptor)


async def wait_for_gate(name: str) -> None:
    """Block until `$DAGNATS_FAULT_GATES/<name>` exists, at most gate_wait_s_max."""
    gate = Path(os.environ[GATES_ENV]) / name
    deadline = time.monotonic() + gate_wait_s_max
    while not gate.exists():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gate {gate} did not open within {gate_wait_s_max}s")
        await asyncio.sleep(gate_poll_s)


async def handle(ctx: TaskContext) -> dict[str, object]:
    """Record the call, block on the step's gate if it has one, fail if asked, return who
    ran it."""
    record = {
        "task": ctx.task_type,
        "run": ctx.run_id,
        "step": ctx.step_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
    }
    append_line(Path(os.environ[CALLS_ENV]), json.dumps(record))
    gate = ctx.metadata.get("gate")
    block_attempts = str(ctx.metadata.get("block_attempts", "1")).split(",")
    if isinstance(gate, str) and str(ctx.attempt) in block_attempts:
        await wait_for_gate(gate)
    if ctx.metadata.get("fail") == "non_retryable":
        raise NonRetryableError(f"step {ctx.step_id} was asked to fail")
    if str(ctx.attempt) in str(ctx.metadata.get("fail_attempts", "")).split(","):
        raise NonRetryableError(f"step {ctx.step_id} was asked to fail attempt {ctx.attempt}")
    return {"step": ctx.step_id, "attempt": ctx.attempt, "pid": os.getpid()}


for _task_type in TASK_TYPES:
    worker.add(_task_type, handle)


async def serve(
    url: str, ack_wait_ms: int, heartbeat_ms: int, events_file: Path | None,
    js_timeout_s: float | None = None,
) -> None:  # fmt: skip
    """Serve `worker` with task consumers whose ack wait (heartbeat timeout) is ack_wait_ms;
    `js_timeout_s`: each JetStream publish's wait for its acknowledgement (nats-py's 5 s)."""

    def note(event: str) -> None:
        if events_file is not None:
            append_line(events_file, event)

    async def on_disconnected() -> None:
        note("disconnected")

    async def on_reconnected() -> None:
        note("reconnected")

    nc = await nats.connect(
        url,
        **worker_credential(url),
        connect_timeout=5,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    note("connected")
    js = nc.jetstream() if js_timeout_s is None else nc.jetstream(timeout=js_timeout_s)
    tasks = JetStreamTaskQueue(js, ack_wait_ms=ack_wait_ms)
    commands = JetStreamCommandQueue(js, kind="result")  # a worker publishes results
    worker.heartbeat_interval_ms = heartbeat_ms
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await worker.serve(tasks, commands, commands, stop)
    finally:
        await tasks.close()
        await nc.close()


def worker_credential(url: str) -> dict[str, Any]:
    """The worker role's credential of the local serve (found through $DAGNATS_DATA_DIR)."""
    from dagnats.runtime import credentials
    from dagnats.runtime.connection import default_data_dir

    local = credentials.local_data_dir(url, None, default_data_dir())
    options = credentials.connect_options(url, role="worker", data_dir=local)
    options.pop("credential", None)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--ack-wait-ms", type=int, default=settings.task_ack_wait_ms_default)
    parser.add_argument("--heartbeat-ms", type=int, default=1_000)
    parser.add_argument("--events-file", type=Path, default=None)
    parser.add_argument("--js-timeout-s", type=float, default=None)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    assert 0 < arguments.heartbeat_ms < arguments.ack_wait_ms, "heartbeat within the ack wait"
    asyncio.run(
        serve(arguments.nats_url, arguments.ack_wait_ms, arguments.heartbeat_ms,
              arguments.events_file, arguments.js_timeout_s)
    )  # fmt: skip


if __name__ == "__main__":
    main()
