"""Heartbeats and the history tail over their lifetime, against a real nats-server.

- A `Worker` served again in a fresh event loop (a module-level worker, as the README
  writes it, run by `asyncio.run` twice: a supervisor that starts the process's main again,
  or a test suite with a loop per test) heartbeats its long tasks: the worker's one
  heartbeat timer (dagnats/worker_heartbeat.Heartbeats) must not be a handle of the loop
  that is gone.
- The history tail (`JetStreamEventLog.tail`, a reader keeping subjects beside its
  items) names every message by its own run across many overflows of its reader.
- The bridge's `Heartbeat`, once stopped, leaves no timer holding its batch's deliveries.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import TASKS_STREAM, ensure_resources, task_consumer_name
from dagnats.worker import TaskContext, Worker
from dagnats.worker_heartbeat import Heartbeat
from kernel.effects import EnqueueTask
from tests.nats_fixtures import connect, unique, wait_for

WAIT_MS = 20_000
INTERVAL_MS = 2_000  # long enough that the first loop ends before its first beat is due


def lane() -> str:
    return unique("tests.review").replace("-", "_")


def task_of(name: str, run_id: str) -> EnqueueTask:
    return EnqueueTask(
        run_id=run_id, step_id="only", attempt=1, task=name,
        input=msgspec.Raw(b"{}"), metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:only:1",
        history_events=2,
    )  # fmt: skip


async def serve_one(url: str, worker: Worker, name: str, beats_wanted: int) -> int:
    """Serve `worker` in this loop until one task of `name` is handled; its handler waits
    (bounded) for `beats_wanted` heartbeats of its delivery seen on the wire. The beats seen."""
    client = await connect(url)
    spy = await connect(url)
    beats: list[bytes] = []

    async def on_ack(message: Msg) -> None:
        if message.data == b"+WPI":
            beats.append(message.data)

    await spy.subscribe(f"$JS.ACK.{TASKS_STREAM}.{task_consumer_name(name)}.>", cb=on_ack)
    await spy.flush()
    await ensure_resources(client.jetstream())
    connection = Connection(client)
    handled = worker.handled

    async def work(ctx: TaskContext) -> object:
        if beats_wanted:
            await wait_for(lambda: len(beats) >= beats_wanted, timeout_ms=WAIT_MS,
                           what=f"{beats_wanted} heartbeat(s) of a running task")  # fmt: skip
        return {"ok": True}

    worker.handlers[name] = work
    stop = asyncio.Event()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    task = task_of(name, unique("run"))
    await connection.tasks.publish(name, msgspec.json.encode(task), task.msg_id)
    try:
        await wait_for(lambda: worker.handled > handled or serving.done(), timeout_ms=3 * WAIT_MS,
                       what="the task handled")  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(serving, WAIT_MS / 1000)
        await connection.close()
        await spy.close()
    return len(beats)


def test_a_worker_served_again_in_a_new_loop_heartbeats_its_tasks(
    nats_server: EmbeddedNats,
) -> None:
    worker = Worker(concurrency=2, heartbeat_interval_ms=INTERVAL_MS)
    first, second = lane(), lane()
    asyncio.run(serve_one(nats_server.url, worker, first, beats_wanted=0))
    # The second loop: a task that runs until it has been heartbeated twice.
    beats = asyncio.run(serve_one(nats_server.url, worker, second, beats_wanted=2))
    assert beats >= 2
    assert worker.handled == 2, "the second task was not handled"


async def test_the_tail_names_each_message_by_its_own_run_across_overflows(
    private_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail's reader full (it drops what comes, makes its consumer again once emptied),
    many times over while messages of several runs come: every message is given once, in
    order, with its own run (the subjects kept beside the items stay in step)."""
    monkeypatch.setattr(settings, "read_pending_messages_max", 7)
    monkeypatch.setattr(settings, "read_buffer_messages_max", 3)
    log = JetStreamEventLog(private_js)
    runs = [unique("tailed") for _ in range(5)]
    last = dict.fromkeys(runs, 0)
    appended: list[tuple[int, str, bytes]] = []

    async def append(count: int) -> None:
        for _ in range(count):
            index = len(appended)
            run_id = runs[(index * 7 + index // 3) % len(runs)]
            data = b"m%d" % index
            seq = await log.append(run_id, data, msg_id=f"{run_id}:{index}",
                                   expected_last_seq=last[run_id])  # fmt: skip
            last[run_id] = seq
            appended.append((seq, run_id, data))

    await append(1)
    tail = log.tail(after_seq=0)
    seen = [await anext(tail)]
    batches = tail.ag_frame.f_locals["batches"]  # type: ignore[attr-defined]  # (tail_batches)
    reader = batches.ag_frame.f_locals["reader"]
    try:
        for _ in range(4):
            await append(40)  # while nothing is taken: the reader fills and drops
            await wait_for(lambda: reader._gap, timeout_ms=WAIT_MS, what="the reader full")
            while len(seen) < len(appended):
                seen.append(await asyncio.wait_for(anext(tail), WAIT_MS / 1000))
        assert seen == appended
        assert reader.overflows >= 4
    finally:
        await tail.aclose()


class Delivery:
    async def in_progress(self) -> None:
        pass


async def test_a_stopped_bridge_heartbeat_holds_nothing_of_its_batch() -> None:
    """The bridge's `Heartbeat` (a timer of its own per batch of results being sent): once
    stopped, its deliveries are not held by the loop until the beat's due time."""
    delivery = Delivery()
    held = weakref.ref(delivery)
    beat = Heartbeat([delivery].copy, 60_000, logging.getLogger("test"))  # type: ignore[arg-type]
    del delivery
    await beat.stop()
    del beat
    gc.collect()
    assert held() is None, "a stopped heartbeat's timer holds its deliveries"
