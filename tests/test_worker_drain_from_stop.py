"""A worker's drain counts from the stop (dagnats/worker_drain.py), even when its fetch loop is
waiting on the server then: a look that opens a task type's pull (the consumer's info, its
creation: JetStream requests, each bounded only by the client's timeout) is cut at the stop,
not waited for before the drain begins.

Against a real nats-server of the test's own, paused (SIGSTOP) while the worker opens its
pull: it answers nothing, and the connection has not noticed (its pings are minutes apart).
The JetStream timeout is long (a minute), so that only a drain that does not wait for the
look ends within its bound (and a slack for a machine shared with other tests).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Final

from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.task_polls import StandingPull
from dagnats.worker import TaskContext, Worker
from dagnats.worker_drain import drain_timeout_ms_min
from tests.nats_fixtures import connect, unique, wait_for

JS_TIMEOUT_S: Final = 60.0  # a request the paused server does not answer waits this long
SLACK_S: Final = 5.0  # beyond the drain's bound, for a machine shared with other tests
WAIT_MS: Final = 10_000


class OpeningQueue(JetStreamTaskQueue):
    """The task queue, saying when the worker begins to open a pull."""

    opening: asyncio.Event

    async def standing_pull(
        self, task_type: str, *, credit_max: int, on_change: Callable[[], None]
    ) -> StandingPull:
        self.opening.set()
        return await super().standing_pull(task_type, credit_max=credit_max, on_change=on_change)


async def ok(_context: TaskContext) -> object:
    return {"ok": True}


async def test_a_stop_while_a_pull_opens_against_a_silent_server_drains_within_the_bound(
    server_dir: Path,
) -> None:
    server = EmbeddedNats(server_dir)
    await server.start()
    client = await connect(server.url)
    paused: int | None = None
    serving: asyncio.Task[None] | None = None
    try:
        js = client.jetstream(timeout=JS_TIMEOUT_S)
        await ensure_resources(js)
        tasks = OpeningQueue(js)
        tasks.opening = asyncio.Event()
        commands = JetStreamCommandQueue(js)
        worker = Worker(concurrency=1, drain_timeout_ms=drain_timeout_ms_min)
        worker.add(unique("tests.stop").replace("-", "_"), ok)
        paused = server.pid
        assert paused is not None
        os.kill(paused, signal.SIGSTOP)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(tasks, commands, commands, stop))
        await wait_for(tasks.opening.is_set, timeout_ms=WAIT_MS, what="the pull being opened")
        stop.set()
        bound_s = drain_timeout_ms_min / 1000 + SLACK_S
        done, _ = await asyncio.wait({serving}, timeout=bound_s)
        assert done, f"the worker still serves {bound_s} s after its stop"
        serving.result()
    finally:
        if serving is not None:
            serving.cancel()
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        await client.close()
        await server.stop()
