"""`dagnats worker --drain-timeout S`: on SIGTERM the whole drain, to the process's exit, fits
S seconds (dagnats/worker_drain.py), and each task's fate is what the worker's log says.

Real processes: one `dagnats serve` and `dagnats worker tests.fault_workers:worker` processes
(their handler records each call and blocks on a gate file). A worker is SIGTERMed while its
handler is inside; it must exit before the bound plus a slack for the interpreter's exit
(a bound on the wait, not a measure of speed), and:
- a handler that never ends is cancelled at the drain's handler bound (not before: the exit
  comes after it), the log says its task is delivered again, and it is: another worker reports
  the attempt lost and runs the next one, which completes the step, once;
- a handler that ends in the drain has its result acknowledged (the log says so) and its task
  acked (the server holds no task), and the step completes once, by that attempt.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

import nats
import nats.js.errors

from dagnats.runtime.resources import TASKS_STREAM, task_consumer_name
from dagnats.worker_drain import FATE_DELIVERED_AGAIN, DrainPlan
from kernel.events import StepCompleted, StepLost
from tests.fault_support import (
    Process,
    Processes,
    connected,
    dagnats_command,
    decisions_of,
    events_of,
    role_options,
    workflow,
)
from tests.hostile_workers import HANDLERS as HOSTILE_HANDLERS
from tests.nats_fixtures import wait_for

DRAIN_TIMEOUT_S: Final = 3.0
HEARTBEAT_TIMEOUT_S: Final = 2.0  # the task consumer's ack wait: how soon a task comes back
EXIT_SLACK_S: Final = 5.0  # the interpreter's own exit, on 2 cores shared with other tests
STEP_TIMEOUT_MS: Final = 20_000
RUN_TIMEOUT_S: Final = 30.0
SPEC: Final = "tests.fault_workers:worker"
HOSTILE_TYPES: Final = tuple(HOSTILE_HANDLERS)


def start_worker(procs: Processes, url: str) -> Process:
    argv = [
        *dagnats_command(), "worker", SPEC, "--nats-url", url, "--log-json",
        "--drain-timeout", str(DRAIN_TIMEOUT_S), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S),
    ]  # fmt: skip
    return procs.start("drain-worker", argv)


def log_lines(process: Process) -> list[dict[str, Any]]:
    """The worker's structured log lines (its other stderr lines are plain text)."""
    lines = process.stderr().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def sigterm_inside(procs: Processes, url: str, name: str, gate: str) -> tuple[str, Process]:
    """Start a run of one gated step on a new worker; once its handler is inside, SIGTERM
    the worker. Returns the run id and the worker (still draining)."""
    worker = start_worker(procs, url)
    step = {"id": "only", "task": "fault.work", "metadata": {"gate": gate}}
    async with connected(url) as client:
        await client.register_workflow(workflow(name, [step]))
        run_id = await client.start(name, None)
    await wait_for(lambda: len(procs.calls_of(run_id, "only")) == 1, timeout_ms=STEP_TIMEOUT_MS,
                   what="the worker's handler to be inside the step")  # fmt: skip
    os.kill(worker.pid, signal.SIGTERM)
    return run_id, worker


async def exit_within_the_bound(worker: Process) -> float:
    """Seconds from now (the SIGTERM) to the worker's exit, waiting at most the bound and its
    slack; the exit is clean."""
    sent = time.monotonic()
    code = await worker.wait_exit(timeout_ms=int((DRAIN_TIMEOUT_S + EXIT_SLACK_S) * 1000))
    assert code == 0, worker.tail()
    return time.monotonic() - sent


async def unsettled_tasks(url: str, data_dir: Path, task_type: str = "fault.work") -> int:
    """Task messages of `task_type` the server holds, delivered or not, still unacked."""
    delivered, waiting = await task_counts(url, data_dir, task_type)
    return delivered + waiting


async def task_counts(url: str, data_dir: Path, task_type: str) -> tuple[int, int]:
    """Task messages of `task_type`: delivered and unacked, and not yet delivered."""
    nc = await nats.connect(url, **role_options(data_dir))
    try:
        consumer = task_consumer_name(task_type)
        info = await nc.jetstream().consumer_info(TASKS_STREAM, consumer)
        return int(info.num_ack_pending or 0), int(info.num_pending or 0)
    finally:
        await nc.close()


async def test_a_handler_that_outlasts_its_share_is_cancelled_and_runs_again_elsewhere(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    run_id, first = await sigterm_inside(procs, serve.url, "drain-cancel", "never-opened")
    exited_s = await exit_within_the_bound(first)
    assert await unsettled_tasks(serve.url, tmp_path / "data") == 1, "left to redelivery"
    plan = DrainPlan.of(0.0, int(DRAIN_TIMEOUT_S * 1000))
    assert exited_s >= plan.handlers_end, f"cancelled before its share: {exited_s} s"
    lines = log_lines(first)
    given_back = [line for line in lines if line.get("fate") == FATE_DELIVERED_AGAIN]
    assert len(given_back) == 1, lines
    assert [a.split("~")[0] for a in given_back[0]["attempts"]] == [f"{run_id}:only:1"], lines
    assert [line["acknowledged"] for line in lines if "acknowledged" in line] == [0], lines

    second = start_worker(procs, serve.url)  # the task comes back to it
    async with connected(serve.url) as client:
        final = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        events = events_of(await decisions_of(client, run_id))
    assert final.status == "completed", final.error
    calls = [(c["attempt"], c["pid"]) for c in procs.calls_of(run_id, "only")]
    assert calls == [(1, first.pid), (2, second.pid)]
    assert [(e.attempt, e.error.kind) for e in events if isinstance(e, StepLost)] == [(1, "lost")]
    assert [e.attempt for e in events if isinstance(e, StepCompleted)] == [2]


async def test_a_handler_that_ends_in_the_drain_completes_its_step_once(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    run_id, first = await sigterm_inside(procs, serve.url, "drain-finish", "opened")
    procs.open_gate("opened")
    await exit_within_the_bound(first)
    assert await unsettled_tasks(serve.url, tmp_path / "data") == 0, "its task was not acked"
    lines = log_lines(first)
    assert not [line for line in lines if line.get("fate") == FATE_DELIVERED_AGAIN], lines
    assert [line["acknowledged"] for line in lines if "acknowledged" in line] == [1], lines

    async with connected(serve.url) as client:
        final = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        events = events_of(await decisions_of(client, run_id))
    assert final.status == "completed", final.error
    assert [(c["attempt"], c["pid"]) for c in procs.calls_of(run_id, "only")] == [(1, first.pid)]
    assert not [e for e in events if isinstance(e, StepLost)], events
    assert [e.attempt for e in events if isinstance(e, StepCompleted)] == [1]


async def test_a_handler_with_a_deadline_that_ignores_its_cancellation_is_not_waited_for(
    procs: Processes, tmp_path: Path
) -> None:
    """A step with a timeout runs its handler in a task of its own: cancelled at the drain's
    handler bound, a handler that ignores it is hung too, and the process exits within the
    bound (the interpreter's exit would otherwise wait for it)."""
    serve = await procs.serve(tmp_path / "data", http=None)
    argv = [*dagnats_command(), "worker", "tests.hostile_workers:worker", "--nats-url",
            serve.url, "--drain-timeout", str(DRAIN_TIMEOUT_S)]  # fmt: skip
    worker = procs.start("stubborn-worker", argv)
    step = {"id": "only", "task": "hostile.ignores_cancel", "timeout": "60s"}
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("drain-stubborn", [step]))
        await client.start("drain-stubborn", None)
    data_dir = tmp_path / "data"

    async def delivered() -> bool:  # (taken by the worker, whose handler starts at once)
        try:
            return await task_counts(serve.url, data_dir, "hostile.ignores_cancel") == (1, 0)
        except nats.js.errors.NotFoundError:  # (the worker has not made its consumer yet)
            return False

    await wait_for(delivered, timeout_ms=STEP_TIMEOUT_MS, what="the worker to take the task")
    os.kill(worker.pid, signal.SIGTERM)
    await exit_within_the_bound(worker)
    assert "exiting without waiting for hung handler(s)" in worker.stderr(), worker.tail()


async def test_a_server_that_stops_answering_does_not_hold_the_drain_past_its_bound(
    procs: Processes, tmp_path: Path
) -> None:
    """The drain closes each task type's pull (a flush waits for the server, at most a
    second each): with a server that stopped answering (paused, a partition the connection
    has not noticed) and many task types, that alone outlasted the bound."""
    serve = await procs.serve(tmp_path / "data", http=None)
    argv = [*dagnats_command(), "worker", "tests.hostile_workers:worker", "--nats-url",
            serve.url, "--drain-timeout", str(DRAIN_TIMEOUT_S)]  # fmt: skip
    worker = procs.start("many-types-worker", argv)
    data_dir = tmp_path / "data"

    async def pulling() -> bool:  # (every type's pull stands on the server)
        nc = await nats.connect(serve.url, **role_options(data_dir))
        try:
            js = nc.jetstream()
            for task_type in HOSTILE_TYPES:
                info = await js.consumer_info(TASKS_STREAM, task_consumer_name(task_type))
                if not info.num_waiting:
                    return False
            return True
        except nats.js.errors.NotFoundError:  # (the worker has not made it yet)
            return False
        finally:
            await nc.close()

    await wait_for(pulling, timeout_ms=STEP_TIMEOUT_MS, what="the worker's pulls to stand")
    nats_pid = serve.nats_pid()
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        os.kill(worker.pid, signal.SIGTERM)
        await exit_within_the_bound(worker)
    finally:
        os.kill(nats_pid, signal.SIGCONT)
