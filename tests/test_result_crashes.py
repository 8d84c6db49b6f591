"""Crash tests of the worker's results: `dagnats serve` SIGKILLed while a result is on its way.

Real processes (tests/fault_support.py): a `dagnats worker` of tests/fault_workers.py that
finds serve through the data dir (no --nats-url) with a short heartbeat timeout, and `dagnats
serve` restarted on the same data dir after each kill. (a) the server stops (SIGSTOP of its
nats-server child) just before a handler returns, so the result's publish gets no ack, then
serve is SIGKILLed and restarted: the worker sends the result again and the run completes,
the handler having run once. (b) serve SIGKILLed at random points of 10-step chains, 20 times:
no run fails and no result is recorded twice. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from functools import partial
from pathlib import Path
from typing import Any, Final

from tests.fault_support import (
    Process,
    Processes,
    Serve,
    connected,
    count_events,
    dagnats_command,
    decisions_of,
    events_of,
    process_is_gone,
    workflow,
)
from tests.nats_fixtures import wait_for

WORKER_SPEC: Final = "tests.fault_workers:worker"
heartbeat_timeout_s: Final = 2.0
step_timeout_ms: Final = 15_000
run_timeout_s: Final = 60.0
unretrieved: Final = "Task exception was never retrieved"



def data_dir_of(procs: Processes) -> Path:
    """The data dir the processes' environment names ($DAGNATS_DATA_DIR)."""
    return Path(procs.env()["DAGNATS_DATA_DIR"])


async def data_dir_worker(procs: Processes, *extra: str) -> Process:
    """`dagnats worker` finding serve through the data dir, with a short heartbeat timeout,
    once it is connected and serving."""
    argv = [*dagnats_command(), "worker", WORKER_SPEC]
    argv += ["--heartbeat-timeout", str(heartbeat_timeout_s), *extra]
    worker = procs.start("cli-worker", argv)
    await wait_for(
        lambda: ": serving " in worker.stderr() or not worker.alive(),
        timeout_ms=step_timeout_ms,
        what=f"{worker.name} to connect and serve",
    )
    assert worker.alive(), worker.tail()
    return worker


async def kill_serve(serve: Serve) -> None:
    """SIGKILL serve and wait until its nats-server child died with it."""
    nats_pid = serve.nats_pid()
    await serve.process.kill()
    await wait_for(
        lambda: process_is_gone(nats_pid),
        timeout_ms=5_000,
        what=f"serve's nats-server child {nats_pid} to die with it",
    )


def assert_clean(worker: Process) -> None:
    stderr = worker.stderr()
    assert unretrieved not in stderr, stderr[-4_000:]
    assert "Traceback" not in stderr, stderr[-4_000:]
    assert "worker lost" not in stderr, stderr[-4_000:]


# -- (a) the result's publish gets no ack ----------------------------------------------------


GATED: Final[list[dict[str, Any]]] = [
    {"id": "one", "task": "fault.work", "metadata": {"gate": "g1"}},
    {"id": "two", "task": "fault.work", "depends_on": ["one"], "metadata": {"gate": "g2"}},
    {"id": "three", "task": "fault.work", "depends_on": ["two"]},
]


async def test_a_result_sent_to_a_stopped_server_is_sent_again_after_serve_restarts(
    procs: Processes,
) -> None:
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    worker = await data_dir_worker(procs)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("lost-ack", GATED))
        run_id = await client.start("lost-ack", {"n": 1})
    for round_number, (step_id, gate) in enumerate((("one", "g1"), ("two", "g2")), start=1):
        await wait_for(
            partial(lambda step: len(procs.calls_of(run_id, step)) == 1, step_id),
            timeout_ms=step_timeout_ms,
            what=f"{step_id}'s handler to run",
        )
        os.kill(serve.nats_pid(), signal.SIGSTOP)  # the server hangs: no ack comes back
        procs.open_gate(gate)  # the handler returns; its result's publish waits for an ack
        await wait_for(
            partial(lambda n: worker.stderr().count("not acknowledged") >= n, round_number),
            timeout_ms=step_timeout_ms,
            what=f"the worker to notice {step_id}'s result was not acknowledged",
        )
        await kill_serve(serve)  # (the stopped child gets its SIGKILL too)
        serve = await procs.serve(data_dir)
    async with connected(serve.url) as client:
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        events = events_of(await decisions_of(client, run_id))

    assert final.status == "completed", final.error
    assert count_events(events, "step.completed") == {"one": 1, "two": 1, "three": 1}
    assert count_events(events, "step.failed") == {}
    for step_id in ("one", "two", "three"):
        calls = procs.calls_of(run_id, step_id)
        assert 1 <= len(calls) <= 2 and {c["attempt"] for c in calls} == {1}, (step_id, calls)
    assert worker.stderr().count("acknowledged after") >= 2, worker.stderr()[-4_000:]
    assert_clean(worker)
    assert worker.alive()


# -- (b) serve SIGKILLed at random points of 10-step chains ------------------------------------


CHAIN: Final[list[dict[str, Any]]] = [
    {
        "id": f"s{index}",
        "task": "fault.work",
        **({"depends_on": [f"s{index - 1}"]} if index else {}),
    }
    for index in range(10)
]
kills: Final = 50  # the reliability issue asks for 50 random SIGKILLs of serve
runs_per_round: Final = 2
kill_delay_s_max: Final = 0.4  # a chain runs in about this long here


async def test_serve_killed_at_random_points_of_chains_fails_nothing_and_records_once(
    procs: Processes,
) -> None:
    chooser = random.Random(os.environ.get("DAGNATS_TEST_SEED", "chains"))
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    worker = await data_dir_worker(procs)
    run_ids: list[str] = []
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("chain", CHAIN))
    for round_number in range(kills):
        async with connected(serve.url) as client:
            for index in range(runs_per_round):
                run_id = f"chain-{round_number}-{index}"
                await client.start("chain", {"round": round_number}, run_id=run_id)
                run_ids.append(run_id)
        await asyncio.sleep(chooser.uniform(0, kill_delay_s_max))  # the kill point, at random
        await kill_serve(serve)
        serve = await procs.serve(data_dir)
        assert worker.alive(), worker.tail()

    async with connected(serve.url) as client:
        finals = await asyncio.gather(
            *(client.wait(run_id, timeout_s=run_timeout_s) for run_id in run_ids)
        )
        histories = {run_id: events_of(await decisions_of(client, run_id)) for run_id in run_ids}

    statuses = {final.run_id: final.status for final in finals}
    failed = {run_id: status for run_id, status in statuses.items() if status != "completed"}
    assert not failed, f"{len(failed)} of {len(run_ids)} runs did not complete: {failed}"
    step_ids = [step["id"] for step in CHAIN]
    twice = {
        run_id: counts
        for run_id, events in histories.items()
        if (counts := count_events(events, "step.completed")) != dict.fromkeys(step_ids, 1)
    }
    assert not twice, f"results recorded other than once: {twice}"
    assert all(count_events(events, "step.failed") == {} for events in histories.values())
    assert_clean(worker)
