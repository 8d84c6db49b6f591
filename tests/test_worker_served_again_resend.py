"""A `Worker` served again (a module-level worker run by `asyncio.run` twice: a supervisor that
starts the process's main again, a loop per test) sends its results again until acknowledged,
as in its first serve: the bound of the first serve's drain (its results' end, from when its
drain began: dagnats/worker_drain.py) is not the bound of the results of the next serve.

Against a real nats-server of the test's own: in the second serve the handler deletes the
commands stream, so the result's first publish finds no stream (no responders); the test
waits for the worker to say it failed, puts the stream back, and the result must then be
acknowledged (the task handled), not given up at the first failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec
import pytest

from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import COMMANDS_STREAM, ensure_resources
from dagnats.worker import TaskContext, Worker
from dagnats.worker_drain import drain_timeout_ms_min
from kernel.effects import EnqueueTask
from tests.nats_fixtures import connect, unique, wait_for

WAIT_MS = 20_000
RETRIED = "not acknowledged"  # the worker's warning at a first failure it sends again
GAVE_UP = "gave up sending"  # its error when it gives a result up


def lane() -> str:
    return unique("tests.again").replace("-", "_")


def task_of(name: str) -> EnqueueTask:
    run_id = unique("run")
    return EnqueueTask(
        run_id=run_id, step_id="only", attempt=1, task=name,
        input=msgspec.Raw(b"{}"), metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:only:1",
        history_events=2,
    )  # fmt: skip


async def serve_one(
    url: str, worker: Worker, caplog: pytest.LogCaptureFixture, lose_stream: bool
) -> None:
    """Serve `worker` in this loop until one task is handled (or its result given up). With
    `lose_stream`, the handler deletes the commands stream, put back once the worker says
    its result's publish failed."""
    client = await connect(url)
    js = client.jetstream()
    await ensure_resources(js)
    connection = Connection(client)
    name, handled = lane(), worker.handled

    async def work(_context: TaskContext) -> object:
        if lose_stream:
            await js.delete_stream(COMMANDS_STREAM)
        return {"ok": True}

    def said(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    worker.handlers[name] = work
    stop = asyncio.Event()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    task = task_of(name)
    await connection.tasks.publish(name, msgspec.json.encode(task), task.msg_id)
    try:
        if lose_stream:
            await wait_for(lambda: said(RETRIED) or said(GAVE_UP), timeout_ms=WAIT_MS,
                           what="the result's first publish failed")  # fmt: skip
            await ensure_resources(js)
        await wait_for(lambda: worker.handled > handled or said(GAVE_UP), timeout_ms=WAIT_MS,
                       what="the task handled, or its result given up")  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(serving, WAIT_MS / 1000)
        await connection.close()


def test_a_worker_served_again_sends_its_results_again_until_acknowledged(
    server_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedNats(server_dir)
    server.start_sync()
    try:
        # The first serve's drain is short, and its results' bound has passed (loop times
        # are the monotonic clock's in every loop) when the second serve's result is sent.
        worker = Worker(concurrency=2, drain_timeout_ms=drain_timeout_ms_min)
        with caplog.at_level(logging.INFO, logger="dagnats.worker"):
            asyncio.run(serve_one(server.url, worker, caplog, lose_stream=False))
            assert worker.handled == 1
            first_drain_passed = time.monotonic() + drain_timeout_ms_min / 1000
            while time.monotonic() < first_drain_passed:  # (bounded: the clock's condition)
                time.sleep(0.01)
            asyncio.run(serve_one(server.url, worker, caplog, lose_stream=True))
        gave_up = [r.getMessage() for r in caplog.records if GAVE_UP in r.getMessage()]
        assert not gave_up, gave_up
        assert worker.handled == 2, "the second serve's result was not acknowledged"
    finally:
        server.stop_sync()
