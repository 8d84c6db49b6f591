"""A 3-node loopback cluster against one node, in the same run, and a partition's failover.

One node: an embedded nats-server and its engine. Cluster: three routed nats-servers (R3
streams) and three partitioned engines (runtime/partitions). Both with one in-process worker
and client. Measured on each: a chain (CHAIN_RUNS runs of a CHAIN_STEPS-step chain, one
after the other: ms per step) and throughput (THROUGHPUT_RUNS one-step runs started at once:
runs per second). `ratio` is the cluster's ms per step over one node's.

On a 2-core machine all three nodes, engines and the worker share the same cores: this
measures the cost of replication (every append written three times, RAFT round trips), not
scaling. `failover_ms`: two engines own the partitions; one loses its connection without
releasing anything (as a killed engine does) and the time until the other owns every
partition is taken (lease TTL plus one refresh).

`python -m bench.cluster` prints one JSON line; it writes only in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Final

from bench.common import emit, rounded
from dagnats import TaskContext, Worker
from dagnats.cli.cluster import copy_credentials
from dagnats.client import Client
from dagnats.runtime import cluster, credentials
from dagnats.runtime.cluster_serve import Placement
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats, pick_free_port
from dagnats.runtime.partitions import Ownership
from dagnats.runtime.serve import Server

CHAIN_RUNS: Final = 5
CHAIN_STEPS: Final = 10
THROUGHPUT_RUNS: Final = 200
wait_s: Final = 120.0
failover_wait_s: Final = 30.0


async def noop(ctx: TaskContext) -> dict[str, int]:
    return {"attempt": ctx.attempt}


def chain_workflow(name: str, steps: int) -> bytes:
    body = [{"id": f"s{i}", "task": "bench.noop", **({"depends_on": [f"s{i - 1}"]} if i else {})}
            for i in range(steps)]  # fmt: skip
    return json.dumps({"name": name, "version": "1", "steps": body}).encode()


async def measure(client: Client) -> tuple[float, float]:
    """(ms per chain step, one-step runs per second) through `client`."""
    await client.register_workflow(chain_workflow("bench-chain", CHAIN_STEPS))
    await client.register_workflow(chain_workflow("bench-one", 1))
    began = time.perf_counter()
    for _ in range(CHAIN_RUNS):
        run_id = await client.start("bench-chain", {})
        await client.wait(run_id, timeout_s=wait_s)
    per_step_ms = (time.perf_counter() - began) * 1000 / (CHAIN_RUNS * CHAIN_STEPS)
    began = time.perf_counter()
    ids = await asyncio.gather(*(client.start("bench-one", {}) for _ in range(THROUGHPUT_RUNS)))
    await asyncio.gather(*(client.wait(run_id, timeout_s=wait_s) for run_id in ids))
    return per_step_ms, THROUGHPUT_RUNS / (time.perf_counter() - began)


async def with_worker(url: str, data_dir: Path) -> tuple[float, float]:
    worker = Worker(concurrency=64)
    worker.add("bench.noop", noop)
    connection = await Connection.open(url, role="worker", data_dir=data_dir)
    stop = asyncio.Event()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    client = await Client.connect(url, data_dir=data_dir)
    try:
        return await measure(client)
    finally:
        stop.set()
        await serving
        await client.close()
        await connection.close()


async def one_node(root: Path) -> tuple[float, float]:
    server = Server(root / "single")
    await server.start()
    stop = asyncio.Event()
    running = asyncio.create_task(server.run(stop))
    try:
        return await with_worker(server.url, server.data_dir)
    finally:
        stop.set()
        await running
        await server.stop()


def cluster_nodes(root: Path) -> tuple[list[EmbeddedNats], Path]:
    shared = root / "shared"
    users = credentials.ensure_credentials(shared)
    secret = cluster.ensure_route_secret(shared)
    ports = [pick_free_port() for _ in range(3)]
    routes = tuple(f"nats://127.0.0.1:{port}" for port in ports)
    nodes = []
    for index, port in enumerate(ports):
        spec = cluster.ClusterSpec(name="bench", node_name=f"n{index}", listen_host="127.0.0.1",
                                   listen_port=port, routes=routes)  # fmt: skip
        nodes.append(EmbeddedNats(
            root / f"n{index}", port=pick_free_port(),
            authorization=credentials.server_authorization(users),
            extra_config=cluster.server_config(spec, secret, "127.0.0.1"),
        ))  # fmt: skip
    return nodes, shared


async def three_nodes(root: Path) -> tuple[float, float, float]:
    nodes, shared = cluster_nodes(root)
    await asyncio.gather(*(node.start() for node in nodes))
    url = ",".join(node.url for node in nodes)
    homes = [root / f"engine{i}" for i in range(3)]
    for home in homes:  # one credentials set, a data dir (query tables) each
        copy_credentials(shared, home)
    servers = [Server(home, nats_url=url, placement=Placement()) for home in homes]
    stop = asyncio.Event()
    try:
        for server in servers:
            await server.start()
        running = [asyncio.create_task(server.run(stop)) for server in servers]
        chain_ms, throughput = await with_worker(url, shared)
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        return chain_ms, throughput, await failover(url, shared)
    finally:
        stop.set()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop()
        await asyncio.gather(*(node.stop() for node in nodes))


async def failover(url: str, shared: Path) -> float:
    """ms from one of two engines vanishing (no release) until the other owns all."""
    first = await Connection.open(url, role="engine", data_dir=shared)
    second = await Connection.open(url, role="engine", data_dir=shared)
    dying, staying = Ownership(first.js, 16), Ownership(second.js, 16)
    stop_dying, stop_staying = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(dying.run(stop_dying)),
             asyncio.create_task(staying.run(stop_staying))]  # fmt: skip
    deadline = time.monotonic() + failover_wait_s
    while not (dying.owned() and len(staying.owned()) + len(dying.owned()) == 16):
        assert time.monotonic() < deadline, "the two engines did not share the partitions"
        await asyncio.sleep(0.05)
    await first.nc.close()  # gone without a word: its leases must expire
    began = time.monotonic()
    while len(staying.owned()) < 16:
        assert time.monotonic() < began + failover_wait_s, "no failover"
        await asyncio.sleep(0.01)
    elapsed_ms = (time.monotonic() - began) * 1000
    stop_dying.set()
    stop_staying.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await second.close()
    return elapsed_ms


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-cluster-") as directory:
        root = Path(directory)
        single_chain, single_rate = await one_node(root)
        chain_ms, rate, failover_ms = await three_nodes(root)
    emit({
        "bench": "cluster", "value": rounded(chain_ms, 2), "unit": "ms/step",
        "ratio": rounded(chain_ms / single_chain, 3),
        "one_node_ms_per_step": rounded(single_chain, 2),
        "runs_per_s": rounded(rate, 1), "one_node_runs_per_s": rounded(single_rate, 1),
        "throughput_ratio": rounded(rate / single_rate, 3),
        "failover_ms": rounded(failover_ms, 0),
        "note": "3 nodes on one machine: the cost of replication, not scaling",
    })  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
