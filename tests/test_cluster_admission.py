"""Admission across partitions: a gated workflow (max_runs) under partitioned engines on a
three-node loopback cluster. A gate's follow-ups for a run of another engine's partition (a
pending run admitted when a slot frees) are sent to that partition as commands, so every
append of every run comes from its partition's owner: each run's history message carries an
owner header with a term > 0 and the run's own partition."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest_asyncio

from dagnats.client import Client
from dagnats.runtime.resources import partition_of
from dagnats.runtime.settings import partitions_default
from kernel.admission import is_gate_id
from tests.cluster_support import NatsCluster, history_owners, owner_violations
from tests.fault_support import Processes, Serve, dagnats_command, workflow
from tests.nats_fixtures import wait_for

RUNS: Final = 16
MAX_RUNS: Final = 2
done_timeout_ms: Final = 90_000


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


async def test_gate_follow_ups_reach_each_runs_partition_owner(
    nodes: NatsCluster, procs: Processes
) -> None:
    await asyncio.gather(*(engine(procs, nodes, f"e{i}") for i in range(2)))
    creds = nodes.shared / "credentials" / "worker.json"
    procs.start("worker", [*dagnats_command(), "--creds", str(creds), "worker",
                           "tests.cluster_support:worker", "--nats-url", nodes.urls])  # fmt: skip
    client = await Client.connect(nodes.urls, role="client", data_dir=nodes.shared)
    run_ids: list[str] = []
    try:
        steps = [{"id": "a", "task": "cluster.work"}]
        await client.register_workflow(
            workflow("c-gated", steps, concurrency={"max_runs": MAX_RUNS})
        )
        run_ids += [await client.start("c-gated", {"n": i}, run_id=f"gated-{i}")
                   for i in range(RUNS)]  # fmt: skip

        async def all_completed() -> bool:
            runs = [await client.get_run(run_id) for run_id in run_ids]
            return all(run.status == "completed" for run in runs)

        await wait_for(all_completed, timeout_ms=done_timeout_ms, what="every gated run")
        statuses = [(await client.get_run(run_id)).status for run_id in run_ids]
        assert statuses == ["completed"] * RUNS
    finally:
        await client.close()
    admin = await nodes.admin()
    try:
        appends = await history_owners(admin)
    finally:
        await admin.close()
    assert owner_violations(appends) == []
    engines_seen: set[str] = set()
    appended: set[str] = set()
    for seq, run_id, owner in appends:
        if is_gate_id(run_id):
            continue
        engine_id, partition, term = owner.split("/")
        assert int(term) > 0, f"seq {seq}: run {run_id} appended by a non-owner ({owner})"
        assert int(partition) == partition_of(run_id, partitions_default), (seq, owner)
        engines_seen.add(engine_id)
        appended.add(run_id)
    # The runs were spread over both engines' partitions, so the gate admitted runs of one
    # engine's partitions from the other's releases.
    assert len(engines_seen) == 2, engines_seen
    assert appended == set(run_ids)
