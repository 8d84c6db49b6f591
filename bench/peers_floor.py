"""The raw JetStream floor in `python -m bench.peers`: the four workloads as bare hops
(`bench.floor.Hop`: publish task, fetch, ack, publish result, fetch, ack) on a nats-server the
bench starts itself, with its HTTP monitoring port on (so `/jsz` is read beside the client
protocol's counters, and the two are checked to agree).

- chain: CHAIN_HOPS serial hops, ms per hop;
- one_step: ONE_STEP_HOPS single hops, the median ms of one;
- fanout: 100 hops in flight (batched) then one more (the join), the median s;
- resume: SIGKILL the nats-server, start it again on the same store, and a fresh process
  (`python -m bench.peers_floor URL`) connects and runs the remaining 5 hops: s from the
  restart to that process's exit.

This module may start processes and write only inside the directory it is given.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import nats

from bench.common import REPO_ROOT
from bench.floor import MESSAGE_BYTES, WARMUP_HOPS, Hop
from bench.metrics import SNAPSHOT_API_REQUESTS, CpuMeter, JsMeter, jsz_api_total
from dagnats.runtime.nats_server import LOOPBACK_HOST, find_nats_server_binary, pick_free_port

CHAIN_HOPS: Final = 200
ONE_STEP_HOPS: Final = 30
FANOUT_WIDTH: Final = 100
FANOUT_RUNS: Final = 3
RESUME_HOPS: Final = 5
RESUME_TAG: Final = "RESUME"
READY_TIMEOUT_S: Final = 10.0
RESUME_TIMEOUT_S: Final = 30.0
PAYLOAD: Final = (b'{"run_id":"bench","step":"s","input":"' + b"x" * MESSAGE_BYTES)[:MESSAGE_BYTES]

Result = dict[str, object]


class MonitoredNats:
    """A nats-server with JetStream and `--http_port`, its store under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = pick_free_port()
        self.monitor_port = pick_free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK_HOST}:{self.port}"

    async def start(self) -> None:
        log = self.directory / "nats-server.log"
        offset = log.stat().st_size if log.exists() else 0
        command = [
            str(find_nats_server_binary()), "--jetstream",
            "--store_dir", str(self.directory / "store"), "--addr", LOOPBACK_HOST,
            "--port", str(self.port), "--http_port", str(self.monitor_port), "--log", str(log),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"Server is ready" not in (log.read_bytes()[offset:] if log.exists() else b""):
            assert self.process.poll() is None, f"nats-server exited; see {log}"
            assert time.monotonic() < deadline, f"nats-server not ready in {READY_TIMEOUT_S}s"
            await asyncio.sleep(0.005)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def _workloads(server: MonitoredNats, cpu: CpuMeter) -> dict[str, Result]:
    client = await nats.connect(server.url)
    hop = Hop(client.jetstream(), RESUME_TAG)
    results: dict[str, Result] = {}
    try:
        await hop.open()
        await hop.serial(WARMUP_HOPS, PAYLOAD)
        meter = JsMeter(client.jetstream())
        await meter.start()
        jsz_before = await jsz_api_total(server.monitor_port)
        cpu.start()
        seconds = await hop.serial(CHAIN_HOPS, PAYLOAD)
        per_step = {"cpu_ms_per_step": cpu.per_step(CHAIN_HOPS), **await meter.per_step(CHAIN_HOPS)}
        jsz_requests = await jsz_api_total(server.monitor_port) - jsz_before
        jsz_requests -= SNAPSHOT_API_REQUESTS  # the closing snapshot's own requests
        per_step["jsz_api_requests_per_step"] = round(jsz_requests / CHAIN_HOPS, 3)
        results["chain"] = {"value": seconds * 1000 / CHAIN_HOPS, **per_step}
        singles = [await hop.serial(1, PAYLOAD) for _ in range(ONE_STEP_HOPS)]
        results["one_step"] = {"value": statistics.median(singles) * 1000}
        fans = []
        for _ in range(FANOUT_RUNS):
            started = time.perf_counter()
            await hop.batched(FANOUT_WIDTH, FANOUT_WIDTH, PAYLOAD)
            await hop.serial(1, PAYLOAD)
            fans.append(time.perf_counter() - started)
        results["fanout"] = {"value": statistics.median(fans)}
    finally:
        await client.close()
    return results


async def round_(directory: Path) -> dict[str, Result]:
    """The four floor workloads on a fresh monitored nats-server."""
    server = MonitoredNats(directory)
    await server.start()
    try:
        assert server.process is not None
        cpu = CpuMeter({"nats_server": server.process.pid, "client": os.getpid()})
        results = await _workloads(server, cpu)
        server.kill()
        started = time.perf_counter()
        await server.start()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.peers_floor", server.url, cwd=REPO_ROOT
        )
        code = await asyncio.wait_for(child.wait(), RESUME_TIMEOUT_S)
        assert code == 0, f"the floor's resume process exited {code}"
        results["resume"] = {"value": time.perf_counter() - started}
    finally:
        server.kill()
    return results


async def _resume_hops(url: str) -> None:
    client = await nats.connect(url)
    try:
        hop = Hop(client.jetstream(), RESUME_TAG)
        await hop.open()  # the streams and durable consumers exist: found again
        hop.published = 1_000_000  # fresh message ids past the dedup window's
        await hop.serial(RESUME_HOPS, PAYLOAD)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(_resume_hops(sys.argv[1]))
