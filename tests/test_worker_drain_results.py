"""A draining worker's results get their whole bound (`settings.drain_results_ms_max`) from
when their handler ended, not from when the drain began; and the handlers' bound
(`drain_handlers_ms`) cancels handlers, never a result being sent.

Against a real nats-server of the test's own (the CLI's `dagnats worker` drains through the
same `Worker.serve`, on SIGTERM setting the stop event set here). The handler waits until the
drain has gone on for a while, then deletes the commands stream, so its result's first publish
finds no stream; once the worker says so (and, in the second case, once the handlers' bound
has passed too), the stream is put back: the result must then be acknowledged (the task
handled), not given up at its first failure nor cancelled with the handlers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import msgspec
import pytest

from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import COMMANDS_STREAM, ensure_resources
from dagnats.worker import TaskContext, Worker
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_worker_served_again_resend import GAVE_UP, RETRIED, task_of

WAIT_MS = 20_000
CANCELLED = "cancelled (their tasks come back"  # its warning when the handlers' bound cancels


async def drain_one(
    url: str, worker: Worker, caplog: pytest.LogCaptureFixture, *, ends_at_s: float,
    stream_back_at_s: float,
) -> None:  # fmt: skip
    """Serve `worker` with one task whose handler ends `ends_at_s` into the drain (its result's
    first publish fails: no commands stream); the stream is put back once the worker said so,
    no sooner than `stream_back_at_s` into the drain. Returns when `serve` returned."""
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
        await wait_for(lambda: into_drain_s() >= stream_back_at_s or serving.done(),
                       timeout_ms=WAIT_MS, what=f"the drain {stream_back_at_s} s old")  # fmt: skip
        await ensure_resources(js)
        await asyncio.wait_for(serving, WAIT_MS / 1000)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(serving), WAIT_MS / 1000)
        await connection.close()


@pytest.mark.parametrize(
    ("results_ms", "handlers_ms", "ends_at_s", "stream_back_at_s"),
    [
        # The handler ends past the results' bound counted from the drain's start.
        (1_000, 20_000, 1.3, 0.0),
        # It ends within the handlers' bound; its result is still being sent past it (and
        # within the results' bound from the drain's start).
        (3_000, 1_000, 0.5, 1.3),
    ],
    ids=["ends-after-the-results-bound-from-the-drain-start", "sends-past-the-handlers-bound"],
)
def test_a_result_of_a_handler_that_ends_during_the_drain_gets_its_whole_bound(
    server_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    results_ms: int, handlers_ms: int, ends_at_s: float, stream_back_at_s: float,
) -> None:  # fmt: skip
    monkeypatch.setattr(settings, "drain_results_ms_max", results_ms)
    server = EmbeddedNats(server_dir)
    server.start_sync()
    try:
        worker = Worker(concurrency=2)
        worker.drain_handlers_ms = handlers_ms
        with caplog.at_level(logging.INFO, logger="dagnats.worker"):
            asyncio.run(drain_one(server.url, worker, caplog, ends_at_s=ends_at_s,
                                  stream_back_at_s=stream_back_at_s))  # fmt: skip
        lines = [r.getMessage() for r in caplog.records]
        assert not [line for line in lines if GAVE_UP in line or CANCELLED in line], lines
        assert any(RETRIED in line for line in lines), "the first publish did not fail"
        assert worker.handled == 1, f"the result was not acknowledged: {lines}"
    finally:
        server.stop_sync()
