"""DBOS on SQLite (`dbos`, the `bench` extra) in `python -m bench.peers`; each call runs in a
process of its own:

    python -m bench.peers_dbos workloads --dir DIR      # chain, one_step, fanout
    python -m bench.peers_dbos resume-start --dir DIR   # blocks in step 5 until killed
    python -m bench.peers_dbos resume-finish --dir DIR  # DBOS.launch() recovers the workflow

Every step is a no-op `@DBOS.step`; a workflow is a `@DBOS.workflow` calling its steps (the
fan-out: an async workflow gathering 100 async steps, then one more), its state in
`DIR/dbos.sqlite`. Prints JSON lines (`bench.peer_child`); when DBOS is not installed, one
`{"kind": "skipped"}` line. Imports DBOS at run time only. Writes only inside DIR.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.peer_child import Args, child_main, cpu_per_step, reached, say

CHAIN_STEPS: Final = 10
CHAIN_RUNS: Final = 20
ONE_STEP_RUNS: Final = 30
FANOUT_WIDTH: Final = 100
FANOUT_RUNS: Final = 3
BLOCK_STEP: Final = 5
RESUME_WORKFLOW_ID: Final = "bench-resume"
RESUME_WAIT_S: Final = 60.0


class Peer:
    """DBOS configured on DIR/dbos.sqlite, with the bench's workflows registered."""

    def __init__(self, directory: Path, block: bool) -> None:
        self.dbos = importlib.import_module("dbos")
        logging.getLogger("dbos").setLevel(logging.WARNING)
        url = f"sqlite:///{directory / 'dbos.sqlite'}"
        self.dbos.DBOS(config={"name": "bench-peers", "system_database_url": url})
        api = self.dbos.DBOS

        def run_step(index: int) -> int:
            if block and index == BLOCK_STEP:
                reached(directory)
                time.sleep(60.0)  # the bench SIGKILLs this process meanwhile
                raise AssertionError("resume-start was not killed within 60 s")
            return index

        step: Any = api.step()(run_step)  # decorated by a call: DBOS is untyped here

        def run_chain(steps: int) -> int:
            return sum(step(index) >= 0 for index in range(steps))

        async def run_async_step(index: int) -> int:
            return index

        async_step: Any = api.step()(run_async_step)

        async def run_fanout(width: int) -> int:
            done = await asyncio.gather(*(async_step(index) for index in range(width)))
            await async_step(width)  # the join
            return len(done) + 1

        chain: Any = api.workflow()(run_chain)
        fanout: Any = api.workflow()(run_fanout)
        self.chain: Callable[[int], int] = chain
        self.fanout: Callable[[int], Any] = fanout
        api.launch()

    def destroy(self) -> None:
        self.dbos.DBOS.destroy()


def timed(call: Callable[[], int], runs: int, expected: int) -> list[float]:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        out = call()
        durations.append(time.perf_counter() - started)
        assert out == expected, out
    return durations


def workloads(directory: Path) -> None:
    peer = Peer(directory, block=False)
    try:
        chain: Callable[[], int] = lambda: peer.chain(CHAIN_STEPS)  # noqa: E731
        one: Callable[[], int] = lambda: peer.chain(1)  # noqa: E731
        loop = asyncio.new_event_loop()
        fan: Callable[[], int] = lambda: loop.run_until_complete(peer.fanout(FANOUT_WIDTH))  # noqa: E731
        for call, expected in ((chain, CHAIN_STEPS), (one, 1), (fan, FANOUT_WIDTH + 1)):
            timed(call, 1, expected)  # warm-up
        with cpu_per_step(CHAIN_RUNS * CHAIN_STEPS) as cpu:
            durations = timed(chain, CHAIN_RUNS, CHAIN_STEPS)
        value = sum(durations) * 1000 / (CHAIN_RUNS * CHAIN_STEPS)
        say({"workload": "chain", "value": value, **cpu})
        with cpu_per_step(ONE_STEP_RUNS) as cpu:
            durations = timed(one, ONE_STEP_RUNS, 1)
        say({"workload": "one_step", "value": statistics.median(durations) * 1000, **cpu})
        with cpu_per_step(FANOUT_RUNS * (FANOUT_WIDTH + 1)) as cpu:
            durations = timed(fan, FANOUT_RUNS, FANOUT_WIDTH + 1)
        say({"workload": "fanout", "value": statistics.median(durations), **cpu})
        loop.close()
    finally:
        peer.destroy()


def resume_start(directory: Path) -> None:
    peer = Peer(directory, block=True)
    with peer.dbos.SetWorkflowID(RESUME_WORKFLOW_ID):
        peer.chain(CHAIN_STEPS)


def resume_finish(directory: Path) -> None:
    peer = Peer(directory, block=False)  # launch() recovers the pending workflow
    try:
        handle = peer.dbos.DBOS.retrieve_workflow(RESUME_WORKFLOW_ID)
        deadline = time.monotonic() + RESUME_WAIT_S
        while handle.get_status().status not in ("SUCCESS", "ERROR"):
            assert time.monotonic() < deadline, f"not recovered within {RESUME_WAIT_S} s"
            time.sleep(0.005)
        out = handle.get_result()
        assert out == CHAIN_STEPS, out
        say({"workload": "resume", "done": True, "steps": out})
    finally:
        peer.destroy()


def run(arguments: Args) -> None:
    actions = {"workloads": workloads, "resume-start": resume_start,
               "resume-finish": resume_finish}  # fmt: skip
    actions[arguments.action](arguments.directory)


if __name__ == "__main__":
    sys.exit(child_main("dbos", ("dbos",), run))
