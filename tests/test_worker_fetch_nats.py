"""The worker's fetch loop (dagnats/worker_fetch.py) on standing pulls, against a real
nats-server:

- a chain's tasks, one at a time, are served with fewer pull requests than tasks (counted on
  the wire from a second connection), none of them a no-wait pull;
- under a burst a worker takes its free slots and at most `held_max` more, and asks for
  nothing while no slot is free (the server holds no request of it: `num_waiting` is 0);
- at stop, what the pulls brought and was not handed over is given back (a nak: another
  worker gets it at once) and their requests are gone (a task published after goes to
  another worker, delivered once);
- after the server restarts (stopped, or killed: no status then), the loop asks again at
  once (requests that would stand a minute are not waited out) and takes the next task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.runtime import task_polls
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.queue import JetStreamTaskQueue
from dagnats.runtime.resources import TASKS_STREAM, ensure_resources, task_consumer_name
from dagnats.runtime.task_polls import StandingPull
from dagnats.worker_fetch import FetchLoop, held_max
from tests.nats_fixtures import connect, unique, wait_for

WAIT_MS = 20_000
LONG_ACK_WAIT_MS = 3 * WAIT_MS  # a task comes back within WAIT_MS only if given back


class Jobs:
    """The worker's side: jobs hold a slot until the test ends them (an ack)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: list[TaskMessage] = []
        self.taken: list[TaskMessage] = []

    def dispatch(self, messages: Sequence[TaskMessage]) -> None:
        self.running.extend(messages)
        self.taken.extend(messages)

    def free(self) -> int:
        return self.slots - len(self.running)

    async def end(self, count: int, loop: FetchLoop) -> None:
        for _ in range(count):
            await self.running.pop(0).ack()
            loop.job_ended()


def looping(
    names: list[str], queue: JetStreamTaskQueue, jobs: Jobs
) -> tuple[FetchLoop, asyncio.Task[None]]:
    loop = FetchLoop(
        names, queue, asyncio.Event(), dispatch=jobs.dispatch, free_slots=jobs.free,
        wake=asyncio.Event(), outage=OutageLog(logging.getLogger("test"), "fetching"),
        batch_max=64,
    )  # fmt: skip
    return loop, asyncio.create_task(loop.run())


async def stopped(loop: FetchLoop, running: asyncio.Task[None]) -> None:
    loop.stop.set()
    await asyncio.wait_for(running, WAIT_MS / 1000)
    await loop.end()


def lane() -> str:
    return unique("tests.fetch").replace("-", "_")


class Requests:
    """Pull requests on the wire (subject, body), seen from a second connection."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def on(self, message: Msg) -> None:
        self.seen.append((message.subject, message.data))

    def of(self, name: str) -> list[bytes]:
        consumer = task_consumer_name(name)
        return [data for subject, data in self.seen if subject.endswith(f".{consumer}")]


@pytest_asyncio.fixture
async def spy(nats_server: EmbeddedNats) -> AsyncIterator[Requests]:
    client = await connect(nats_server.url)
    requests = Requests()
    await client.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=requests.on)
    await client.flush()
    try:
        yield requests
    finally:
        await client.close()


async def waiting_requests(js: JetStreamContext, name: str) -> int:
    info = await js.consumer_info(TASKS_STREAM, task_consumer_name(name))
    return info.num_waiting or 0


async def test_a_chain_is_served_with_fewer_pull_requests_than_tasks(
    js: JetStreamContext, spy: Requests
) -> None:
    queue = JetStreamTaskQueue(js)
    name, tasks = lane(), 12
    jobs = Jobs(slots=16)
    loop, running = looping([name], queue, jobs)
    try:
        for index in range(tasks):  # one task at a time, as a chain's steps come
            await queue.publish(name, b"{}", f"{name}:{index}")
            await wait_for(lambda: len(jobs.running) == 1, timeout_ms=WAIT_MS, what="it")
            await jobs.end(1, loop)
        await js._nc.flush()
    finally:
        await stopped(loop, running)
        await queue.close()
    requests = spy.of(name)
    assert len(jobs.taken) == tasks
    assert not [request for request in requests if b"no_wait" in request], requests
    # 16, then a chunk when half of it came (a renewal more if the machine is very slow)
    assert 1 <= len(requests) <= tasks // 3, (requests, tasks)


async def test_a_burst_takes_the_free_slots_and_at_most_held_max_more(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js, ack_wait_ms=LONG_ACK_WAIT_MS)
    names = [lane() for _ in range(3)]
    slots, per_type = 2, 5
    bound = held_max(slots, len(names), 64)
    assert bound == 2, "one per other type: as many types as slots or more"
    for name in names:
        for index in range(per_type):
            await queue.publish(name, b"{}", f"{name}:{index}")
    jobs = Jobs(slots)
    loop, running = looping(names, queue, jobs)
    try:
        await wait_for(lambda: len(jobs.taken) == 3, timeout_ms=WAIT_MS, what="one of each")
        for name in names:  # nothing asked beyond: no request stands on the server
            assert await waiting_requests(js, name) == 0, name
        assert len(jobs.running) - slots == 1 <= bound
        await jobs.end(1, loop)  # still no free slot: nothing asked
        await jobs.end(1, loop)  # one slot free: each type gets one
        await wait_for(lambda: len(jobs.taken) == 6, timeout_ms=WAIT_MS, what="three more")
        assert len(jobs.running) - slots == bound, "the bound is reached, not passed"
        left = 0
        for name in names:
            info = await js.consumer_info(TASKS_STREAM, task_consumer_name(name))
            assert (info.num_waiting or 0) == 0, name
            left += info.num_pending or 0
        assert left == len(names) * per_type - len(jobs.taken), "the rest stayed on the server"
    finally:
        await stopped(loop, running)
        await queue.close()


async def test_one_type_takes_its_free_slots_and_holds_none(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js, ack_wait_ms=LONG_ACK_WAIT_MS)
    name = lane()
    for index in range(10):
        await queue.publish(name, b"{}", f"{name}:{index}")
    jobs = Jobs(slots=4)
    loop, running = looping([name], queue, jobs)
    try:
        await wait_for(lambda: len(jobs.taken) == 4, timeout_ms=WAIT_MS, what="four tasks")
        assert await waiting_requests(js, name) == 0
        await jobs.end(2, loop)
        await wait_for(lambda: len(jobs.taken) == 6, timeout_ms=WAIT_MS, what="two more")
        assert len(jobs.running) == 4 and await waiting_requests(js, name) == 0
    finally:
        await stopped(loop, running)
        await queue.close()


async def test_at_stop_what_came_is_given_back_and_the_requests_are_gone(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js, ack_wait_ms=LONG_ACK_WAIT_MS)
    other = JetStreamTaskQueue(js, ack_wait_ms=LONG_ACK_WAIT_MS)
    name = lane()
    jobs = Jobs(slots=4)
    loop, running = looping([name], queue, jobs)
    try:
        await wait_for(lambda: name in loop.pulls and loop.pulls[name].credit.pending == 4,
                       timeout_ms=WAIT_MS, what="the credit asked")  # fmt: skip
        pull = loop.pulls[name]
        loop.stop.set()
        await asyncio.wait_for(running, WAIT_MS / 1000)  # (the pulls are still open)
        await queue.publish(name, b"came", f"{name}:1")
        await wait_for(lambda: pull.credit.pending == 3, timeout_ms=WAIT_MS, what="it came")
        await loop.end()  # given back: a nak
        await queue.publish(name, b"after", f"{name}:2")
        taker = await other.standing_pull(name, credit_max=4, on_change=lambda: None)
        await taker.ask(4)
        got: list[TaskMessage] = []

        def arrived() -> bool:
            got.extend(taker.take()[0])
            return len(got) >= 2

        await wait_for(arrived, timeout_ms=WAIT_MS, what="both tasks at the other worker")
        got.sort(key=lambda message: getattr(message, "stream_seq", 0))
        assert [message.data for message in got] == [b"came", b"after"]
        assert [message.num_delivered for message in got] == [2, 1]
        assert jobs.taken == [], "a stopped loop hands nothing over"
        for message in got:
            await message.ack()
    finally:
        await queue.close()
        await other.close()


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
async def test_after_the_server_restarts_the_loop_asks_again_and_takes_the_next_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    """A stopped server ends the requests with a 409 (an error status: asked again after the
    backoff); a killed one says nothing, the reconnect forgets them."""
    tasks_before = 1  # (the credit left, 3 of 4, needs no renewal of its own)
    monkeypatch.setattr(task_polls, "pull_expires_ms", 60_000)  # never waited out here
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    port = int(server.url.rsplit(":", 1)[1])
    client: Client = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    js = client.jetstream()
    await ensure_resources(js)
    queue = JetStreamTaskQueue(js)
    name = lane()
    jobs = Jobs(slots=4)
    loop, running = looping([name], queue, jobs)
    try:
        for index in range(tasks_before):
            await queue.publish(name, b"{}", f"{name}:{index}")
        await wait_for(lambda: len(jobs.taken) == tasks_before, timeout_ms=WAIT_MS,
                       what="the task before")  # fmt: skip
        await jobs.end(tasks_before, loop)
        pull = loop.pulls[name]
        assert isinstance(pull, StandingPull)
        requests = pull.requests
        if killed:
            assert server._process is not None
            server._process.kill()
        await server.stop()
        server = EmbeddedNats(tmp_path / "nats", port=port)
        await server.start()
        await wait_for(lambda: client.is_connected, timeout_ms=WAIT_MS, what="the reconnect")
        await wait_for(lambda: pull.requests > requests, timeout_ms=WAIT_MS,
                       what="a request after the reconnect")  # fmt: skip
        await queue.publish(name, b"{}", f"{name}:after")
        await wait_for(lambda: len(jobs.taken) == tasks_before + 1, timeout_ms=WAIT_MS,
                       what="the task after the restart")  # fmt: skip
        await jobs.end(1, loop)
    finally:
        await stopped(loop, running)
        await queue.close()
        await client.close()
        await server.stop()
