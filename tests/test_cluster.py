"""A DagNats cluster on loopback: three routed nats-server processes with R3 streams, three
engines sharing the runs by partition, two workers, and 500 runs of mixed workflows (tasks
with retries, sleeps, approvals the test resolves, an agent loop with a tool).

During the load one NATS node is SIGKILLed, the history stream's RAFT leader steps down, one
engine is SIGKILLed; then both come back. Afterwards every run completed, no step completed
twice, no completed step ran again, the killed node caught up, and no partition saw two
engines append at once (the `Dagnats-Owner` header of every history message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import nats.errors
import pytest_asyncio

from dagnats.client import Client
from dagnats.runtime.resources import HISTORY_STREAM
from tests.cluster_support import (
    NatsCluster,
    engines_by_partition,
    history_owners,
    owner_violations,
)
from tests.fault_support import Processes, Serve, dagnats_command, events_of, workflow
from tests.nats_fixtures import wait_for

RUNS: Final = 500
start_concurrency: Final = 50
start_retry_s: Final = 60.0  # a start sent again while the cluster recovers
poll_concurrency: Final = 50
all_done_timeout_ms: Final = 90_000
caught_up_timeout_ms: Final = 30_000
STEPDOWN: Final = f"$JS.API.STREAM.LEADER.STEPDOWN.{HISTORY_STREAM}"

RETRY = {"max_attempts": 3, "strategy": "fixed", "initial_delay": "100ms"}
WORKFLOWS: Final[dict[str, list[dict[str, Any]]]] = {
    "c-retry": [
        {"id": "a", "task": "cluster.work", "retry": RETRY, "metadata": {"flaky": "yes"}},
        {"id": "b", "task": "cluster.work", "depends_on": ["a"]},
    ],
    "c-sleep": [
        {"id": "a", "task": "cluster.work"},
        {"id": "nap", "type": "sleep", "config": {"duration": "1s"}, "depends_on": ["a"]},
        {"id": "b", "task": "cluster.work", "depends_on": ["nap"]},
    ],
    "c-approval": [
        {"id": "gate", "type": "approval", "config": {"question": "ok?"}},
        {"id": "b", "task": "cluster.work", "depends_on": ["gate"]},
    ],
    "c-agent": [
        {
            "id": "agent", "type": "agent_loop", "task": "cluster.turn", "retry": RETRY,
            "config": {"max_turns": 4, "tools": {"lookup": "cluster.tool"}},
        },
    ],
}  # fmt: skip


@pytest_asyncio.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    cluster = NatsCluster(tmp_path)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()



async def engine(procs: Processes, nodes: NatsCluster, name: str) -> Serve:
    home = nodes.root / name
    extra = ("--engine-only", "--credentials-from", str(nodes.shared))
    return await procs.serve(home, nats_url=nodes.urls, http=None, extra_args=extra)


def start_worker(procs: Processes, nodes: NatsCluster) -> None:
    creds = nodes.shared / "credentials" / "worker.json"
    argv = [*dagnats_command(), "--creds", str(creds), "worker",
            "tests.cluster_support:worker", "--nats-url", nodes.urls]  # fmt: skip
    procs.start("worker", argv)


async def start_runs(client: Client, first: int, last: int) -> list[str]:
    names = sorted(WORKFLOWS)
    slots = asyncio.Semaphore(start_concurrency)

    async def one(index: int) -> str:
        name = names[index % len(names)]
        async with slots:
            # A node away or a stream electing its leader (seconds on a loaded machine): the
            # start is idempotent, so it is sent again until it goes through, within a bound.
            deadline = time.monotonic() + start_retry_s
            while time.monotonic() < deadline:
                try:
                    return await client.start(name, {"n": index}, run_id=f"{name}-{index}")
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.2)
            return await client.start(name, {"n": index}, run_id=f"{name}-{index}")

    return list(await asyncio.gather(*(one(i) for i in range(first, last))))


async def approve_all(approver: Client, run_ids: list[str], stop: asyncio.Event) -> None:
    """Approve each approval run's gate once it asks (the test's human)."""
    waiting = [run_id for run_id in run_ids if run_id.startswith("c-approval")]
    while waiting and not stop.is_set():
        still: list[str] = []
        for run_id in waiting:
            try:
                await approver.approve(run_id, "gate", data={"by": "test"})
            except Exception:  # not asked yet (or a node is away): try again
                still.append(run_id)
        waiting = still
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


async def wait_all_done(client: Client, run_ids: list[str]) -> None:
    pending = set(run_ids)
    slots = asyncio.Semaphore(poll_concurrency)

    async def finished(run_id: str) -> bool:
        async with slots:
            with contextlib.suppress(Exception):
                state = await client.get_run(run_id)
                assert state.status in ("running", "completed", "new", "pending"), (
                    run_id, state.status,
                )  # fmt: skip
                return state.status == "completed"
            return False

    async def all_done() -> bool:
        done = await asyncio.gather(*(finished(r) for r in sorted(pending)))
        pending.difference_update(r for r, ok in zip(sorted(pending), done, strict=True) if ok)
        return not pending

    await wait_for(all_done, timeout_ms=all_done_timeout_ms, what=f"all {len(run_ids)} runs")


async def stepdown(nodes: NatsCluster) -> str:
    admin = await nodes.admin()
    try:
        reply = await admin.request(STEPDOWN, b"", timeout=10)
        return str(reply.data.decode())
    finally:
        await admin.close()


async def caught_up(nodes: NatsCluster) -> bool:
    """Every replica of the history stream is current (the restarted node caught up)."""
    admin = await nodes.admin()
    try:
        info = await admin.jetstream().stream_info(HISTORY_STREAM)
    finally:
        await admin.close()
    peers = info.cluster.replicas if info.cluster and info.cluster.replicas else []
    return len(peers) == 2 and all(p.current and not p.offline and not p.lag for p in peers)


async def test_a_cluster_loses_a_node_and_an_engine_and_loses_or_doubles_nothing(
    nodes: NatsCluster, procs: Processes
) -> None:
    began = time.monotonic()
    engines = list(await asyncio.gather(*(engine(procs, nodes, f"e{i}") for i in range(3))))
    for _ in range(2):
        start_worker(procs, nodes)
    client = await Client.connect(nodes.urls, role="client", data_dir=nodes.shared)
    approver = await Client.connect(nodes.urls, role="approver", data_dir=nodes.shared)
    stop_approving = asyncio.Event()
    try:
        for name, steps in WORKFLOWS.items():
            await client.register_workflow(workflow(name, steps))
        run_ids = await start_runs(client, 0, RUNS // 3)
        approving = asyncio.create_task(approve_all(approver, run_ids, stop_approving))
        await nodes.kill(1)  # a NATS node dies under load
        run_ids += await start_runs(client, RUNS // 3, 2 * RUNS // 3)
        answer = await stepdown(nodes)  # the history stream's RAFT leader changes
        assert '"success":true' in answer.replace(" ", ""), answer
        await engines[0].process.kill()  # SIGKILL: its partitions move to the others
        run_ids += await start_runs(client, 2 * RUNS // 3, RUNS)
        stop_approving.set()
        await approving
        stop_approving.clear()
        approving = asyncio.create_task(approve_all(approver, run_ids, stop_approving))
        await nodes.restart(1)
        engines.append(await engine(procs, nodes, "e3"))  # a new engine: rebalancing
        await wait_all_done(client, run_ids)
        stop_approving.set()
        await approving
        await wait_for(lambda: caught_up(nodes), timeout_ms=caught_up_timeout_ms,
                       what="the restarted node to catch up")  # fmt: skip
        await check_histories(client, run_ids, procs)
        admin = await nodes.admin()
        try:
            appends = await history_owners(admin)
        finally:
            await admin.close()
        assert owner_violations(appends) == []
        owners = engines_by_partition(appends)
        assert any(len(engines) > 1 for engines in owners.values()), "no partition moved"
    finally:
        stop_approving.set()
        await client.close()
        await approver.close()
    print(json.dumps({"test": "cluster", "runs": RUNS, "s": round(time.monotonic() - began, 1)}),
          file=sys.stderr)  # fmt: skip


async def check_histories(client: Client, run_ids: list[str], procs: Processes) -> None:
    """No step completed twice; no call of an attempt after the one that completed it."""
    calls: Counter[tuple[str, str, int]] = Counter(
        (c["run"], c["step"], c["attempt"]) for c in procs.calls()
    )
    for run_id in run_ids:
        events = events_of([d async for _, d in client.history(run_id)])
        completed = Counter(
            (getattr(e, "step_id", ""), getattr(e, "attempt", 0))
            for e in events
            if type(e).__name__ == "StepCompleted"
        )
        steps = Counter(step for step, _ in completed)
        assert all(n == 1 for n in steps.values()), (run_id, completed)
        for (step, attempt), _ in completed.items():
            later = [k for k in calls if k[0] == run_id and k[1] == step and k[2] > attempt]
            assert later == [], f"run {run_id} step {step} ran again after completing: {later}"


