"""The headline bench: a 10-step chain through the documented path, against the floor hop.

`dagnats serve` (its embedded nats-server, its built-in projections: KV snapshots and the
SQLite query tables), a `dagnats worker` process (`bench.peers_worker`), and the public
`Client.start` + `Client.wait` in this process, as a user runs them. RUNS runs of a 10-step
chain of no-op steps, one after the other. Interleaved with it on the same nats-server, in
ROUNDS rounds: the raw serial JetStream hop (`bench.floor.measure_floor`: publish a task,
fetch, ack, publish a result, fetch, ack), the minimum one step costs.

`value` is ms per step (wall time of all runs / steps, each run's start and wait included);
`ratio` is that over the floor's ms per hop measured in the same rounds (target <= 1.5).
Beside it (`bench.metrics`): CPU ms per step of serve, nats-server, worker and client; the
nats-server's CPU per step over its CPU per floor hop (`nats_cpu_ratio`, target <= 1.5); the
JetStream API requests and stored messages per step.

`python -m bench.chain` prints one JSON line. It starts processes and writes only inside
the temporary directory it creates. (`bench.chain_engine` is the engine-only microbench.)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final

from bench.common import Child, emit, rounded
from bench.floor import measure_floor
from bench.metrics import CpuMeter, JsMeter, children_of
from bench.peers_dagnats import RUN_TIMEOUT_S, _stop, chain, start_worker
from bench.recovery import serve_command
from dagnats.client import Client
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import pick_free_port

RUNS: Final = 30  # per round
STEPS: Final = 10
ROUNDS: Final = 3
FLOOR_HOPS: Final = 300  # per round


async def chain_round(client: Client, cpu: CpuMeter, meter: JsMeter) -> dict[str, object]:
    """RUNS chains one after the other: seconds, CPU and JetStream per step."""
    await meter.start()
    cpu.start()
    started = time.perf_counter()
    for _ in range(RUNS):
        run_id = await client.start("bench-chain", run_id=f"chain-{uuid.uuid4().hex[:12]}")
        state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        assert state.status == "completed", f"run {run_id} ended {state.status}"
    seconds = time.perf_counter() - started
    return {
        "ms_per_step": seconds * 1000 / (RUNS * STEPS),
        "cpu_ms_per_step": cpu.per_step(RUNS * STEPS),
        **await meter.per_step(RUNS * STEPS),
    }


async def floor_round(
    admin: Connection, cpu: CpuMeter, anchored: bool = False
) -> tuple[float, float]:
    """The serial floor hop on serve's nats-server: (ms per hop, nats-server CPU ms per hop);
    `anchored`: its streams keep an anchor message, as DagNats' work queues do."""
    cpu.start()
    floor = await measure_floor(
        admin.nc, serial_hops=FLOOR_HOPS, batched_hops=100, batch=100, anchored=anchored
    )
    spent = cpu.per_step(FLOOR_HOPS + 100)  # the batched hops ran too: CPU over all hops
    return floor["serial_ms_per_hop"], float(spent["nats_server"])


async def measure() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-chain-") as directory:
        root = Path(directory)
        data_dir = root / "data"
        serve = await Child.start(serve_command(data_dir, pick_free_port()), root / "serve.log")
        url = str(serve.ready["nats_url"])
        worker = await start_worker(url, root, "worker")
        admin = await Connection.open(url, role="admin", data_dir=data_dir)
        try:
            client = await Client.connect(url, data_dir=data_dir)
            [nats_pid] = children_of(serve.pid)
            pids = {"serve": serve.pid, "nats_server": nats_pid, "worker": worker.pid}
            cpu = CpuMeter({**pids, "client": os.getpid()})
            nats_cpu = CpuMeter({"nats_server": nats_pid})
            await client.register_workflow(chain("bench-chain", STEPS))
            for _ in range(3):  # warm-up: the worker's consumer, the first lookups
                run_id = await client.start("bench-chain")
                await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
            chains, floors, anchored = [], [], []
            for _ in range(ROUNDS):
                floors.append(await floor_round(admin, nats_cpu))
                anchored.append(await floor_round(admin, nats_cpu, anchored=True))
                chains.append(await chain_round(client, cpu, JsMeter(admin.js)))
            await client.close()
        finally:
            await admin.close()
            await _stop(serve, worker)
    return line(chains, floors, anchored)


def line(
    chains: list[dict[str, object]],
    floors: list[tuple[float, float]],
    anchored: list[tuple[float, float]],
) -> dict[str, object]:
    chains.sort(key=lambda item: float(str(item["ms_per_step"])))
    middle = chains[len(chains) // 2]
    ms_per_step = float(str(middle["ms_per_step"]))
    floor_ms = statistics.median(ms for ms, _ in floors)
    floor_nats_cpu = statistics.median(cpu for _, cpu in floors)
    anchored_ms = statistics.median(ms for ms, _ in anchored)
    anchored_nats_cpu = statistics.median(cpu for _, cpu in anchored)
    cpu = middle["cpu_ms_per_step"]
    assert isinstance(cpu, dict)
    return {
        "bench": "chain",
        "path": "documented: dagnats serve (projections on) + dagnats worker + Client",
        "value": rounded(ms_per_step),
        "unit": "ms/step",
        "ratio": rounded(ms_per_step / floor_ms, 3),
        "ratio_of": "ms/step / floor serial ms/hop, same server, interleaved (target <= 1.5)",
        "rounds": ROUNDS,
        "runs_per_round": RUNS,
        "steps_per_run": STEPS,
        "floor_ms_per_hop": rounded(floor_ms),
        "cpu_ms_per_step": cpu,
        "nats_cpu_ratio": rounded(float(cpu["nats_server"]) / max(floor_nats_cpu, 1e-9), 3),
        "floor_nats_cpu_ms_per_hop": rounded(floor_nats_cpu),
        # The same hop on streams that keep an anchor message (as DagNats' work queues do):
        # the floor without nats-server's per-message block churn, for comparison only.
        "anchored_floor_ms_per_hop": rounded(anchored_ms),
        "ratio_to_anchored_floor": rounded(ms_per_step / anchored_ms, 3),
        "nats_cpu_ratio_to_anchored_floor": rounded(
            float(cpu["nats_server"]) / max(anchored_nats_cpu, 1e-9), 3
        ),
        "js_api_requests_per_step": middle["js_api_requests_per_step"],
        "stored_msgs_per_step": middle["stored_msgs_per_step"],
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
