"""The floor: the raw JetStream hop every DagNats step pays at least once.

One hop = publish a task -> pull-fetch it -> ack -> publish a result -> pull-fetch it -> ack,
with ~300-byte messages on file-storage work-queue streams of their own (so it can run
beside other benches on a shared server). Measured serially (one hop at a time) and batched
(100 hops in flight: pipelined publishes, batch fetches). Other benches compute their
`ratio` against `measure_floor` in the same run.

`python -m bench.floor` starts its own embedded nats-server in a temporary directory and
prints one JSON line. This module may create and delete only its own `BENCH_FLOOR_*` streams.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from typing import Final

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.runtime.nats_server import EmbeddedNats

MESSAGE_BYTES: Final = 300
SERIAL_HOPS: Final = 2_000
BATCHED_HOPS: Final = 2_000
BATCH: Final = 100
WARMUP_HOPS: Final = 50
FETCH_TIMEOUT_S: Final = 5.0


class Hop:
    """The two streams and pull consumers of one measurement."""

    def __init__(self, js: JetStreamContext, tag: str, *, anchored: bool = False) -> None:
        self.js = js
        self.tag = tag
        # Each stream keeps one message nobody consumes, as DagNats' work queues do
        # (dagnats/runtime/queue_anchor): nats-server then keeps the stream's last block
        # instead of deleting it and making a new one for every message.
        self.anchored = anchored
        self.task_subject = f"bench.floor.{tag}.task"
        self.result_subject = f"bench.floor.{tag}.result"
        self.streams = (f"BENCH_FLOOR_{tag}_TASKS", f"BENCH_FLOOR_{tag}_RESULTS")
        self.published = 0  # message ids must stay unique across calls (dedup window)
        self.tasks: JetStreamContext.PullSubscription | None = None
        self.results: JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        subjects = (self.task_subject, self.result_subject)
        for stream, subject in zip(self.streams, subjects, strict=True):
            await self.js.add_stream(
                api.StreamConfig(
                    name=stream,
                    subjects=[subject, f"{subject}_anchor"] if self.anchored else [subject],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    duplicate_window=120,
                )
            )
        for subject in subjects if self.anchored else ():
            await self.js.publish(f"{subject}_anchor", b"anchor")
        self.tasks = await self.js.pull_subscribe(self.task_subject, "worker", self.streams[0])
        self.results = await self.js.pull_subscribe(self.result_subject, "engine", self.streams[1])

    async def close(self) -> None:
        for subscription in (self.tasks, self.results):
            if subscription is not None:
                await subscription.unsubscribe()
        for stream in self.streams:
            await self.js.delete_stream(stream)

    async def serial(self, hops: int, payload: bytes) -> float:
        """Seconds for `hops` hops, one after the other."""
        assert self.tasks is not None and self.results is not None
        started = time.perf_counter()
        for _ in range(hops):
            self.published += 1
            index = self.published
            headers = {"Nats-Msg-Id": f"{self.tag}:task:{index}"}
            await self.js.publish(self.task_subject, payload, headers=headers)
            [task] = await self.tasks.fetch(1, timeout=FETCH_TIMEOUT_S)
            await task.ack()
            headers = {"Nats-Msg-Id": f"{self.tag}:result:{index}"}
            await self.js.publish(self.result_subject, task.data, headers=headers)
            [result] = await self.results.fetch(1, timeout=FETCH_TIMEOUT_S)
            await result.ack()
        return time.perf_counter() - started

    async def batched(self, hops: int, batch: int, payload: bytes) -> float:
        """Seconds for `hops` hops, `batch` at a time in flight."""
        assert self.tasks is not None and self.results is not None
        assert hops % batch == 0, "hops must be a multiple of batch"
        started = time.perf_counter()
        for _ in range(hops // batch):
            base = self.published
            self.published += batch
            await self._publish_all(self.task_subject, "task", base, [payload] * batch)
            tasks = await _fetch_exactly(self.tasks, batch)
            for task in tasks:
                await task.ack()
            await self._publish_all(self.result_subject, "result", base, [t.data for t in tasks])
            for result in await _fetch_exactly(self.results, batch):
                await result.ack()
        return time.perf_counter() - started

    async def _publish_all(self, subject: str, kind: str, base: int, bodies: list[bytes]) -> None:
        acks = []
        for offset, body in enumerate(bodies):
            headers = {"Nats-Msg-Id": f"{self.tag}:b{kind}:{base + offset}"}
            acks.append(await self.js.publish_async(subject, body, headers=headers))
        await asyncio.gather(*acks)


async def _fetch_exactly(subscription: JetStreamContext.PullSubscription, count: int) -> list[Msg]:
    """Fetch until `count` messages arrived (each fetch is bounded by FETCH_TIMEOUT_S)."""
    messages: list[Msg] = []
    for _ in range(count):  # at most one fetch per message
        messages.extend(await subscription.fetch(count - len(messages), timeout=FETCH_TIMEOUT_S))
        if len(messages) == count:
            return messages
    raise AssertionError(f"fetched {len(messages)} of {count} messages")


async def measure_floor(
    nc: Client,
    *,
    serial_hops: int = SERIAL_HOPS,
    batched_hops: int = BATCHED_HOPS,
    batch: int = BATCH,
    anchored: bool = False,
) -> dict[str, float]:
    """Measure the raw hop on `nc`'s server (`anchored`: on streams that keep an anchor).

    Returns:
        `serial_ms_per_hop`, `serial_hops_per_s`, `batched_hops_per_s`.
    """
    assert serial_hops > 0 and batched_hops > 0 and 0 < batch <= batched_hops
    payload = (b'{"run_id":"bench","step":"s","input":"' + b"x" * MESSAGE_BYTES)[:MESSAGE_BYTES]
    hop = Hop(nc.jetstream(), uuid.uuid4().hex[:8].upper(), anchored=anchored)
    await hop.open()
    try:
        await hop.serial(WARMUP_HOPS, payload)
        serial_s = await hop.serial(serial_hops, payload)
        batched_s = await hop.batched(batched_hops, batch, payload)
    finally:
        await hop.close()
    return {
        "serial_ms_per_hop": serial_s * 1000 / serial_hops,
        "serial_hops_per_s": serial_hops / serial_s,
        "batched_hops_per_s": batched_hops / batched_s,
    }


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-floor-") as data_dir:
        server = EmbeddedNats(data_dir)
        await server.start()
        try:
            client = await nats.connect(server.url)
            try:
                floor = await measure_floor(client)
            finally:
                await client.close()
        finally:
            await server.stop()
    line = {
        "bench": "floor",
        "value": round(floor["serial_ms_per_hop"], 4),
        "unit": "ms/hop",
        "ratio": 1.0,
        "serial_hops_per_s": round(floor["serial_hops_per_s"], 1),
        "batched_hops_per_s": round(floor["batched_hops_per_s"], 1),
    }
    print(json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    asyncio.run(main())
