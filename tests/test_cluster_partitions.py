"""The partition count is chosen at the first start and stored with the streams (README
"Cluster"): real `dagnats serve` processes on one data dir, a real worker.

`serve --partitions 4` stores 4; runs (tasks and a durable sleep, whose timer fires into a
partition's subject) complete, every command of theirs is published under 4 partitions and
every append carries an owner of the run's partition of 4; a restart without the flag keeps
4; a start asking 8 is refused in one line naming both. A deployment that ran under the
default count refuses another count, and an out-of-range count is a usage error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

from dagnats.client import Client
from dagnats.runtime.partition_count import read_partition_count
from dagnats.runtime.queue_anchor import queued
from dagnats.runtime.resources import COMMANDS_STREAM, partition_of
from dagnats.runtime.settings import partitions_default, partitions_max
from tests.cluster_support import history_owners
from tests.fault_support import Processes, Serve, connected, dagnats_command, workflow
from tests.nats_fixtures import wait_for

RUNS: Final = 12
done_timeout_ms: Final = 45_000
WORKFLOW: Final = workflow(
    "parts",
    [
        {"id": "a", "task": "cluster.work"},
        {"id": "nap", "type": "sleep", "config": {"duration": "200ms"}, "depends_on": ["a"]},
        {"id": "b", "task": "cluster.work", "depends_on": ["nap"]},
    ],
)



def start_worker(procs: Processes, url: str) -> None:
    argv = [*dagnats_command(), "worker", "tests.cluster_support:worker", "--nats-url", url]
    procs.start("worker", argv)


async def run_to_completion(client: Client, run_ids: list[str]) -> None:
    for run_id in run_ids:
        await client.start("parts", {}, run_id=run_id)

    async def all_done() -> bool:
        states = await asyncio.gather(*(client.get_run(r) for r in run_ids))
        assert all(s.status in ("new", "pending", "running", "completed") for s in states)
        return all(s.status == "completed" for s in states)

    await wait_for(all_done, timeout_ms=done_timeout_ms, what=f"{len(run_ids)} runs to complete")


async def stored(serve: Serve) -> int | None:
    async with connected(serve.url, role="worker") as client:  # (the least role reads it)
        assert await client.connection.partitions.get() == (
            await read_partition_count(client.connection.js) or partitions_default
        )
        return await read_partition_count(client.connection.js)


async def test_the_first_start_chooses_the_count_and_later_starts_keep_it(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None, extra_args=("--partitions", "4"))
    assert await stored(serve) == 4
    start_worker(procs, serve.url)
    run_ids = [f"parts-{index}" for index in range(RUNS)]
    assert len({partition_of(r, 4) for r in run_ids}) == 4  # the runs span every partition
    async with connected(serve.url) as client:
        assert await client.connection.partitions.get() == 4  # a client reads it too
        await client.register_workflow(WORKFLOW)
        await run_to_completion(client, run_ids)
        appends = await history_owners(client.connection.nc)
    assert appends, "no history"
    for seq, run_id, owner in appends:
        _, partition, _ = owner.split("/")
        if run_id in run_ids:  # (gates and other shared subjects: no partition)
            assert int(partition) == partition_of(run_id, 4), (seq, run_id, owner)
    assert await serve.process.terminate() == 0, serve.process.tail()

    serve = await procs.serve(data_dir, http=None)  # no flag: the stored count stays
    assert await stored(serve) == 4
    async with connected(serve.url) as client:
        await run_to_completion(client, ["parts-after-restart"])
        js = client.connection.js

        async def drained() -> bool:  # nothing stranded on a subject no partition reads
            return await queued(js, COMMANDS_STREAM) == 0  # (but its anchor: queue_anchor)

        await wait_for(drained, timeout_ms=done_timeout_ms, what="the commands stream to drain")
    assert await serve.process.terminate() == 0, serve.process.tail()

    refused = procs.cli("serve", "--data-dir", str(data_dir), "--no-http", "--partitions", "8")
    assert refused.returncode == 1, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert "--partitions 8" in lines[0] and "partition count 4" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr and "--partitions 4" in refused.stderr


async def test_a_deployment_used_under_the_default_refuses_another_count(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None)  # unpartitioned: nothing stored
    assert await stored(serve) is None
    async with connected(serve.url) as client:
        nap = {"id": "s", "type": "sleep", "config": {"duration": "10ms"}}
        await client.register_workflow(workflow("one", [nap]))
        await client.start("one", {}, run_id="one-1")
        await wait_for(lambda: _completed(client, "one-1"), timeout_ms=done_timeout_ms,
                       what="run one-1")  # fmt: skip
    assert await serve.process.terminate() == 0, serve.process.tail()
    refused = procs.cli("serve", "--data-dir", str(data_dir), "--no-http", "--partitions", "4")
    assert refused.returncode == 1, refused.stderr
    assert f"default partition count {partitions_default}" in refused.stderr, refused.stderr
    assert f"--partitions {partitions_default}" in refused.stderr  # the hint

    wrong = procs.cli("serve", "--data-dir", str(data_dir), "--partitions", "0")
    assert wrong.returncode == 2, wrong.stderr
    assert f"--partitions 0 is outside 1..{partitions_max}" in wrong.stderr, wrong.stderr


async def _completed(client: Client, run_id: str) -> bool:
    return (await client.get_run(run_id)).status == "completed"
