"""A draining worker's results (dagnats/worker_drain.py): a result being sent is not cancelled
with the handlers at the drain's handler bound (it is sent until the results' bound), and one
still not acknowledged at the results' bound is given up, its task left to come back (the log
says so, structured), and `serve` returns within the drain's bound.

Against a real nats-server of the test's own (the CLI's `dagnats worker` drains through the
same `Worker.serve`, on SIGTERM setting the stop event set here). The handler waits until the
drain has gone on for a while, then deletes the commands stream, so its result's first publish
finds no stream; once the worker says so (and no sooner than a given time into the drain), the
stream is put back, or (`stream_back_at_s` None) not before `serve` returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path

import msgspec
import pytest

from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    TASKS_STREAM,
    ensure_resources,
    task_consumer_name,
)
from dagnats.worker import TaskContext, Worker
from dagnats.worker_drain import FATE_DELIVERED_AGAIN, DrainPlan
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_worker_served_again_resend import GAVE_UP, RETRIED, task_of

WAIT_MS = 20_000
CANCELLED = "cancelled;"  # the drain's line when the handlers' bound cancels
ACK_APPLIED_MS = 5_000  # a task message's ack (no reply awaited) reaches its consumer by then
RETURN_SLACK_S = 3.0  # `serve` returns by the drain's bound, give or take a loaded machine


async def drain_one(
    url: str, worker: Worker, caplog: pytest.LogCaptureFixture, *, ends_at_s: float,
    stream_back_at_s: float | None, expect_unacked: int,
) -> tuple[float, int]:  # fmt: skip
    """Serve `worker` with one task whose handler ends `ends_at_s` into the drain (its result's
    first publish fails: no commands stream); the stream is put back once the worker said so,
    no sooner than `stream_back_at_s` into the drain (None: once `serve` returned). Returns the
    seconds from the stop to `serve`'s return, and the task messages left unacked (read until
    they are `expect_unacked`, for at most ACK_APPLIED_MS)."""
    client = await connect(url)
    js = client.jetstream()
    await ensure_resources(js)
    connection = Connection(client)
    name = unique("tests.drain").replace("-", "_")
    loop = asyncio.get_running_loop()
    began = asyncio.Event()
    stopped_at = [math.inf]  # loop time the stop was set (the drain begins within ms of it)

    def into_drain_s() -> float:
        return loop.time() - stopped_at[0]

    def said(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async def work(_context: TaskContext) -> object:
        began.set()
        await wait_for(lambda: into_drain_s() >= ends_at_s, timeout_ms=WAIT_MS,
                       what=f"the drain {ends_at_s} s old")  # fmt: skip
        await js.delete_stream(COMMANDS_STREAM)
        return {"ok": True}

    worker.handlers[name] = work
    stop = asyncio.Event()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    task = task_of(name)
    await connection.tasks.publish(name, msgspec.json.encode(task), task.msg_id)
    try:
        await asyncio.wait_for(began.wait(), WAIT_MS / 1000)
        stopped_at[0] = loop.time()
        stop.set()  # (what SIGTERM does in `dagnats worker`)
        await wait_for(lambda: said(RETRIED) or said(GAVE_UP), timeout_ms=WAIT_MS,
                       what="the result's first publish failed")  # fmt: skip
        if (back_at_s := stream_back_at_s) is not None:
            await wait_for(lambda: into_drain_s() >= back_at_s or serving.done(),
                           timeout_ms=WAIT_MS, what=f"the drain {back_at_s} s old")  # fmt: skip
            await ensure_resources(js)
        await asyncio.wait_for(asyncio.shield(serving), WAIT_MS / 1000)
        returned_s = into_drain_s()
        left = [-1]

        async def unacked() -> bool:  # (an ack is applied by the server after it was read)
            info = await js.consumer_info(TASKS_STREAM, task_consumer_name(name))
            left[0] = info.num_ack_pending + info.num_pending
            return left[0] == expect_unacked

        with contextlib.suppress(AssertionError):  # (the caller asserts the count)
            await wait_for(unacked, timeout_ms=ACK_APPLIED_MS, what="the task's ack applied")
        return returned_s, left[0]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(serving), WAIT_MS / 1000)
        await ensure_resources(js)
        await connection.close()


def test_a_result_being_sent_is_not_cancelled_at_the_handlers_bound(
    server_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its handler ends within the handlers' bound; its result is still being sent past it
    (the stream is back only then), and is acknowledged within the results' bound."""
    drain_timeout_ms = 8_000
    plan = DrainPlan.of(0.0, drain_timeout_ms)
    server = EmbeddedNats(server_dir)
    server.start_sync()
    try:
        worker = Worker(concurrency=2, drain_timeout_ms=drain_timeout_ms)
        with caplog.at_level(logging.INFO, logger="dagnats.worker"):
            _, unacked = asyncio.run(drain_one(
                server.url, worker, caplog, ends_at_s=plan.handlers_end - 0.2,
                stream_back_at_s=plan.handlers_end + 0.1, expect_unacked=0,
            ))  # fmt: skip
        lines = [r.getMessage() for r in caplog.records]
        assert not [line for line in lines if GAVE_UP in line or CANCELLED in line], lines
        assert any(RETRIED in line for line in lines), "the first publish did not fail"
        assert worker.handled == 1, f"the result was not acknowledged: {lines}"
        assert unacked == 0, "its task was not acked"
    finally:
        server.stop_sync()


def test_a_result_unacknowledged_at_the_results_bound_leaves_its_task_to_come_back(
    server_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream never comes back within the drain: the result is given up at the results'
    bound, `serve` returns by the drain's bound, the task is not acked (it comes back), and
    the log says so with the fate field."""
    drain_timeout_ms = 2_000
    plan = DrainPlan.of(0.0, drain_timeout_ms)
    server = EmbeddedNats(server_dir)
    server.start_sync()
    try:
        worker = Worker(concurrency=2)
        worker.drain_timeout_ms = drain_timeout_ms
        with caplog.at_level(logging.INFO, logger="dagnats.worker"):
            returned_s, unacked = asyncio.run(drain_one(
                server.url, worker, caplog, ends_at_s=0.2, stream_back_at_s=None,
                expect_unacked=1,
            ))  # fmt: skip
        lines = [r.getMessage() for r in caplog.records]
        assert plan.results_end <= returned_s < plan.exit_by + RETURN_SLACK_S, (returned_s, lines)
        fates = [r for r in caplog.records if getattr(r, "fate", None) == FATE_DELIVERED_AGAIN]
        assert len(fates) == 1, lines
        assert worker.handled == 0, lines
        assert unacked == 1, "its task was acked, or lost"
    finally:
        server.stop_sync()
