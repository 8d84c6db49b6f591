"""The engine's standing pull of its commands (runtime/standing_pull), against a real
nats-server: a chain of commands, each sent after the last was fetched, costs a pull request
per half credit, not one per command (counted on the wire); a request expiring during a wait
is asked again, so a command sent late in a long wait still comes; what one engine's pull
brought and no fetch took is given back at its close, for another engine at once (not after
the ack wait); after a server restart the pull asks again and commands flow.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any, cast

import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue, bind_pull_consumer
from dagnats.runtime.resources import COMMANDS_STREAM
from dagnats.runtime.standing_pull import CommandPull
from dagnats.runtime.task_polls import pull_expires_ms
from kernel import codec
from kernel.commands import StartRun
from kernel.workflow import StepDef, WorkflowDef
from tests.nats_fixtures import RestartableServer, connect, unique, wait_for

WAIT_MS = 10_000
CHAIN = 40


async def _count_requests(nc: Client, consumer: str) -> list[Msg]:
    """Every pull request sent to `consumer` from now on (seen from a second connection)."""
    seen: list[Msg] = []

    async def record(message: Msg) -> None:
        seen.append(message)

    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{COMMANDS_STREAM}.{consumer}", cb=record)
    await nc.flush()
    return seen


async def test_a_chain_of_commands_costs_a_pull_request_per_half_credit(
    private_server: EmbeddedNats, private_js: JetStreamContext
) -> None:
    observer = await connect(private_server.url)
    try:
        requests = await _count_requests(observer, "dagnats_engine")
        commands = JetStreamCommandQueue(private_js)
        run_id = unique("chain")
        for n in range(CHAIN):  # one at a time: each comes alone, as in a chain of steps
            await commands.publish_command(run_id, f"c{n}".encode(), f"{run_id}:{n}")
            [message] = await commands.fetch_commands(batch=8, timeout_ms=WAIT_MS)
            assert message.data == f"c{n}".encode()
            await message.ack()
        await observer.flush()
        credit = settings.command_batch_max
        assert len(requests) <= 1 + CHAIN // (credit // 2), len(requests)
        assert len(requests) < CHAIN // 4  # (a request per command before)
        await commands.close()
    finally:
        await observer.close()


async def test_a_request_expiring_mid_wait_is_asked_again(
    private_server: EmbeddedNats, private_js: JetStreamContext
) -> None:
    commands = JetStreamCommandQueue(private_js)
    run_id = unique("late")
    config = api.ConsumerConfig(  # (a consumer of its own: no other pull takes its message)
        durable_name=unique("late").replace("-", "_"),
        ack_policy=api.AckPolicy.EXPLICIT,
        filter_subject=f"dagnats.cmd.*.{run_id}.>",
    )
    subscription = await bind_pull_consumer(private_js, COMMANDS_STREAM, config)
    pull = CommandPull(subscription, credit_max=4, expires_ms=200)
    waiting = asyncio.ensure_future(pull.fetch(4, 3_000))

    async def send_late() -> None:
        await wait_for(lambda: pull.requests >= 3, timeout_ms=WAIT_MS, what="requests renewed")
        await commands.publish_command(run_id, b"late", f"{run_id}:1")

    sending = asyncio.ensure_future(send_late())
    messages = await asyncio.wait_for(waiting, WAIT_MS / 1000)
    await sending
    assert [message.data for message in messages] == [b"late"]
    await messages[0].ack()
    await pull.close()
    await subscription.unsubscribe()


async def test_what_a_closed_pull_brought_goes_to_another_engine_at_once(
    private_js: JetStreamContext,
) -> None:
    first = JetStreamCommandQueue(private_js)
    run_id = unique("handover")
    sent = [f"c{n}".encode() for n in range(6)]
    for n, data in enumerate(sent):
        await first.publish_command(run_id, data, f"{run_id}:{n}")
    [taken] = await first.fetch_commands(batch=1, timeout_ms=WAIT_MS)
    await taken.ack()
    assert first._pull is not None
    pull = first._pull
    await wait_for(lambda: len(pull.held()) >= len(sent) - 1, timeout_ms=WAIT_MS, what="the rest")
    await first.close()  # gives the five back (a nak each)
    second = JetStreamCommandQueue(private_js)
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.command_ack_wait_ms / 1000 / 2
    while len(got) < len(sent) - 1 and loop.time() < deadline:  # bounded: half the ack wait
        for message in await second.fetch_commands(batch=8, timeout_ms=100):
            got.append(message.data)
            await message.ack()
    assert got == sent[1:], "given back: not left to the ack wait"
    await second.close()


async def test_after_a_server_restart_the_pull_asks_again(tmp_path: Path) -> None:
    restartable = RestartableServer(tmp_path / "nats")
    try:
        commands = JetStreamCommandQueue((await restartable.start()).jetstream())
        run_id = unique("restart")
        await commands.publish_command(run_id, b"before", f"{run_id}:0")
        [before] = await commands.fetch_commands(batch=4, timeout_ms=WAIT_MS)
        await before.ack()
        await restartable.restart()
        await commands.publish_command(run_id, b"after", f"{run_id}:1")
        # The request of before the restart is gone with that server; a fetch within the
        # standing request's expiry gets the command only if the pull asked again.
        assert pull_expires_ms > 2_000
        [after] = await commands.fetch_commands(batch=4, timeout_ms=2_000)
        assert after.data == b"after"
        await after.ack()
        await commands.close()
    finally:
        await restartable.close()


async def test_a_pull_of_a_deleted_consumer_raises(private_js: JetStreamContext) -> None:
    """Its standing request ends with a 409 (consumer deleted); asked again, the server has
    no consumer to answer it (503): the fetch raises, as nats-py's would."""
    config = api.ConsumerConfig(
        durable_name=unique("gone").replace("-", "_"),
        ack_policy=api.AckPolicy.EXPLICIT,
        filter_subject=f"dagnats.cmd.*.{unique('nobody')}.>",
    )
    subscription = await bind_pull_consumer(private_js, COMMANDS_STREAM, config)
    pull = CommandPull(subscription, credit_max=4)
    try:
        assert await pull.fetch(4, 100) == []
        await private_js.delete_consumer(COMMANDS_STREAM, config.durable_name or "")
        with pytest.raises(nats.js.errors.APIError):
            await pull.fetch(4, 2_000)
        assert pull.pull.credit.pending == 0
    finally:
        await subscription.unsubscribe()


SLOW_S = 4.5  # a task publish held up longer than the commands' ack wait


class SlowTasks:
    """The connection's task queue, its publishes of `slow*` task types held up SLOW_S."""

    def __init__(self, inner: JetStreamTaskQueue) -> None:
        self.inner = inner
        self.tokens = None
        self.slow_done = asyncio.Event()  # a slow publish ended

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        if task_type.startswith("slow"):
            await asyncio.sleep(SLOW_S)
            self.slow_done.set()
        await self.inner.publish(task_type, payload, msg_id)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _start(run_id: str, task: str) -> bytes:
    workflow = WorkflowDef(name="one", steps=(StepDef(id="a", task=task),))
    command = StartRun(run_id=run_id, at_ms=now_ms(), workflow=workflow, input=msgspec.Raw(b"null"))
    return codec.encode(command)


async def send_slow_starts(connection: Connection, fetched: list[str], count: int) -> None:
    """`count` slow starts, each sent once the last one was fetched (a batch each)."""
    for _ in range(count):
        run_id, fetched_before = unique("slow"), len(fetched)
        await connection.commands.publish_command(run_id, _start(run_id, unique("slow")), run_id)
        await wait_for(
            partial(lambda before: len(fetched) > before, fetched_before),
            timeout_ms=WAIT_MS, what="a slow start fetched",
        )  # fmt: skip


async def start_fast_runs(connection: Connection, count: int = 10) -> None:
    """`count` fast starts sent at once; returns when every run has started."""
    fast = [unique(f"fast{n}") for n in range(count)]
    for run_id in fast:
        await connection.commands.publish_command(run_id, _start(run_id, unique("fast")), run_id)

    async def all_started() -> bool:
        return all([await connection.history.last_seq(r) > 0 for r in fast])

    await wait_for(all_started, timeout_ms=WAIT_MS, what="every fast run started")


async def start_and_see_it_started(connection: Connection, wait_ms: int = WAIT_MS) -> str:
    """Publish a new one-step run's start; its id once the engine appended its first message."""
    run_id = unique("run")
    await connection.commands.publish_command(run_id, _start(run_id, unique("t")), run_id)

    async def started() -> bool:
        return await connection.history.last_seq(run_id) > 0

    await wait_for(started, timeout_ms=wait_ms, what=f"run {run_id} started")
    return run_id


async def test_an_engine_stuck_at_its_limit_gives_what_it_holds_to_an_idle_engine(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    """Two slow commands (their task publishes held up past the ack wait) fill engine one's
    window (of two, here); the commands its standing pull brings meanwhile are kept in
    progress, then given back after command_progress_interval_ms: an idle engine two starts
    every fast run while engine one's slow commands are still under way."""
    assert settings.command_ack_wait_ms < SLOW_S * 1000
    fetched: list[str] = []  # (scheduled by engine one: fetched, or handed over as they came)
    slow = SlowTasks(connection.tasks)
    one = Engine(connection.history, cast(JetStreamTaskQueue, slow), connection.timers,
                 connection.commands)  # fmt: skip
    one._unsettled = CommandWindow(size_max=2, room_min=1)
    schedule = one._schedule_batch

    def recorded(messages: list[CommandMessage]) -> asyncio.Future[Any]:
        fetched.extend(message.subject for message in messages)
        return schedule(messages)

    one._schedule_batch = recorded  # type: ignore[method-assign]
    other = Connection(await connect(private_server.url))
    two = Engine(other.history, other.tasks, other.timers, other.commands)
    stop = asyncio.Event()
    serving = [asyncio.create_task(one.serve(connection.commands, stop))]
    try:
        await send_slow_starts(connection, fetched, 2)  # (both to engine one: two not there)
        serving.append(asyncio.create_task(two.serve(other.commands, stop)))
        await start_fast_runs(connection)
        assert not slow.slow_done.is_set(), "the fast runs waited for engine one's slow batches"
    finally:
        stop.set()
        await asyncio.gather(*serving, return_exceptions=True)
        await other.close()
