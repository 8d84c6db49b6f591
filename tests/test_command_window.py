"""The engine's command pump is a window (runtime/command_pump), not batch-synchronous: a
command that straggles (its task publish held up) holds one place of the window, not the
fetches after the batch it came in. Against a real nats-server: one engine, two slow runs
started as two batches (the old limit: two batches in flight), then fast runs, which start
while the slow ones are still under way; a command in hand past the ack wait is kept in
progress (delivered once). And the window's own bookkeeping: a wait for room
ends when a settle makes room, and not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from nats.aio.msg import Msg

from dagnats.runtime import settings
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.queue import JetStreamTaskQueue
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_standing_pull import SLOW_S, SlowTasks, _start, send_slow_starts, start_fast_runs

WAIT_MS = 10_000


def record_schedules(engine: Engine, record: Callable[[list[CommandMessage]], None]) -> None:
    """`engine` hands every batch it schedules (fetched, or handed over as it came) to
    `record` first."""
    schedule = engine._schedule_batch

    def recorded(messages: list[CommandMessage]) -> asyncio.Future[Any]:
        record(messages)
        return schedule(messages)

    engine._schedule_batch = recorded  # type: ignore[method-assign]


def recording_engine(
    connection: Connection, record: Callable[[list[CommandMessage]], None]
) -> tuple[Engine, SlowTasks]:
    """An engine whose task publishes are held up (`SlowTasks`), recording what it schedules
    (`record_schedules`)."""
    slow = SlowTasks(connection.tasks)
    engine = Engine(connection.history, cast(JetStreamTaskQueue, slow), connection.timers,
                    connection.commands)  # fmt: skip
    record_schedules(engine, record)
    return engine, slow


async def test_slow_commands_do_not_hold_back_the_fetches_after_them(
    connection: Connection,
) -> None:
    fetched: list[str] = []  # (scheduled: fetched, or handed over as they came)
    engine, slow = recording_engine(
        connection, lambda messages: fetched.extend(message.subject for message in messages)
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    try:
        await send_slow_starts(connection, fetched, 2)  # two batches of one slow command each
        await start_fast_runs(connection)
        assert not slow.slow_done.is_set(), "the fast runs waited for the slow commands"
        assert len(engine._unsettled) >= 2, "the slow commands are still in hand"
    finally:
        stop.set()
        await serving
    assert not engine._unsettled, "everything in hand settled at the end"


async def test_a_command_in_hand_past_its_ack_wait_is_kept_in_progress_not_delivered_again(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    """A slow command (its task publish held up past the ack wait) gets progress acks from
    the second look after it came (runtime/command_pump `keep_in_progress`): it is delivered
    once, and its run's start is appended once."""
    assert settings.command_ack_wait_ms < SLOW_S * 1000
    observer = await connect(private_server.url)
    progress: list[str] = []

    async def record(message: Msg) -> None:
        if message.data == b"+WPI":
            progress.append(message.subject)

    await observer.subscribe("$JS.ACK.>", cb=record)
    await observer.flush()
    deliveries: list[int] = []
    engine, slow = recording_engine(
        connection, lambda messages: deliveries.extend(m.num_delivered for m in messages)
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    try:
        run_id = unique("slow")
        await connection.commands.publish_command(run_id, _start(run_id, unique("slow")), run_id)
        await asyncio.wait_for(slow.slow_done.wait(), WAIT_MS / 1000)
        await wait_for(lambda: not engine._unsettled, timeout_ms=WAIT_MS, what="it settled")
    finally:
        stop.set()
        await serving
        await observer.close()
    assert deliveries == [1], f"delivered again: {deliveries}"
    assert progress, "no progress ack for a command held past the ack wait"
    assert await connection.history.last_seq(run_id) > 0
    assert engine.counters.get("ignored", 0) == 0, engine.counters


class Message:
    """A command in hand (the window only counts it)."""

    def __init__(self, name: str) -> None:
        self.subject = f"dagnats.cmd.0.{name}.worker"


async def test_a_wait_for_room_ends_when_a_settle_makes_room_and_not_before() -> None:
    window = CommandWindow(size_max=4, room_min=2)
    messages = [cast(CommandMessage, Message(f"m{n}")) for n in range(4)]
    window.update(messages)
    assert window.room() == 0
    assert not await window.wait_for_room(10), "no room: the wait runs out"
    waiting = asyncio.create_task(window.wait_for_room(WAIT_MS))
    await asyncio.sleep(0)
    window.discard(messages[0])
    await asyncio.sleep(0)
    assert not waiting.done(), "room for one: less than room_min"
    window.difference_update(messages[1:2])
    assert await asyncio.wait_for(waiting, WAIT_MS / 1000), "room for two: the wait ends"
    assert window.room() == 2 and len(window) == 2
