"""Crash test of the engine's batch path: `dagnats serve` SIGKILLed between a batched append
and its acks (the `$DAGNATS_TEST_KILL_AFTER_BATCH_APPEND` seam of runtime/batched.py).

Real processes (tests/fault_support.py): serve with the seam, a worker of tests/fault_workers.py
whose fan-out handlers wait on one gate. Serve is stopped (SIGSTOP) while the gate opens, so
every result waits in the commands stream; resumed, the engine fetches them together, appends
them as one DecideAll and is killed there, before any effect or ack. Serve restarted without
the seam gets the results again: the run completes, every step recorded once, every handler
run once. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Final

import nats

from dagnats.runtime.batched import KILL_AFTER_APPEND_ENV
from dagnats.runtime.resources import COMMANDS_STREAM, ENGINE_CONSUMER
from kernel.commands import DecideAll
from tests.fault_support import (
    Processes,
    connected,
    count_events,
    decisions_of,
    events_of,
    role_options,
    workflow,
)
from tests.nats_fixtures import wait_for

branches: Final = 16
wait_ms: Final = 30_000
run_timeout_s: Final = 60.0
STEPS: Final[list[dict[str, Any]]] = [
    *({"id": f"p{i}", "task": "fault.work", "metadata": {"gate": "go"}} for i in range(branches)),
    {"id": "join", "task": "fault.work", "depends_on": [f"p{i}" for i in range(branches)]},
]


async def results_waiting(url: str, options: dict[str, Any]) -> int:
    """Commands in the engine's consumer not yet acked (delivered or not)."""
    connection = await nats.connect(url, **options)
    try:
        info = await connection.jetstream().consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
        return int(info.num_pending) + int(info.num_ack_pending)
    finally:
        await connection.close()


async def test_serve_killed_between_a_batched_append_and_its_acks_loses_and_repeats_nothing(
    procs: Processes,
) -> None:
    data_dir = procs.tmp_path / "data"
    procs.extra_env[KILL_AFTER_APPEND_ENV] = "1"
    serve = await procs.serve(data_dir)
    procs.extra_env.clear()
    worker, _ = procs.worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("batch-crash", STEPS))
        run_id = await client.start("batch-crash", {"n": branches})
    await wait_for(
        lambda: len({c["step"] for c in procs.calls() if c["run"] == run_id}) == branches,
        timeout_ms=wait_ms,
        what="every branch's handler to run and wait on its gate",
    )
    admin = role_options(data_dir)
    os.kill(serve.process.pid, signal.SIGSTOP)  # the engine sleeps: the results pile up
    try:
        procs.open_gate("go")

        async def piled() -> bool:
            return await results_waiting(serve.url, admin) >= branches

        await wait_for(piled, timeout_ms=wait_ms, what="every result in the commands stream")
    finally:
        os.kill(serve.process.pid, signal.SIGCONT)
    code = await serve.process.wait_exit(wait_ms)
    assert code == -signal.SIGKILL, f"serve exited {code}, not by the seam\n{serve.process.tail()}"

    serve = await procs.serve(data_dir)  # the same data dir, no seam
    async with connected(serve.url) as client:
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        decisions = await decisions_of(client, run_id)
    assert final.status == "completed", final.error
    assert any(isinstance(d.command, DecideAll) for d in decisions), "a batch was appended"
    events = events_of(decisions)
    step_ids = [step["id"] for step in STEPS]
    assert count_events(events, "step.completed") == dict.fromkeys(step_ids, 1)
    assert count_events(events, "step.failed") == {}
    for step_id in step_ids:
        calls = procs.calls_of(run_id, step_id)
        assert [c["attempt"] for c in calls] == [1], (step_id, calls)
    assert worker.alive(), worker.tail()
