"""The engine's standing pull hands commands over as they come (runtime/standing_pull
`CommandPull._changed`), against a real nats-server: a command is handed to `dispatch` in the
client's read loop, in the callback its message came in (not by a fetch woken afterwards),
and the engine's group task for it is created there; one that comes when nothing takes it
(the engine busy) is taken by a fetch; the engine takes them so only while it has no batch in
flight.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.js import JetStreamContext

from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.protocols import CommandMessage, TaskMessage
from dagnats.runtime.queue import JetStreamCommandQueue
from dagnats.runtime.standing_pull import WhenIdle
from tests.nats_fixtures import unique
from tests.test_standing_pull import start_and_see_it_started

WAIT_MS = 10_000


async def test_a_command_is_handed_over_in_the_read_loop_and_the_fetch_returns_nothing(
    private_server: EmbeddedNats, private_js: JetStreamContext
) -> None:
    commands = JetStreamCommandQueue(private_js)
    handed: list[tuple[bytes, asyncio.Task[Any] | None]] = []

    class Taking:
        def ready(self) -> bool:
            return True

        def __call__(self, messages: list[TaskMessage]) -> None:
            handed.extend((message.data, asyncio.current_task()) for message in messages)

    commands.dispatch_to(Taking())
    await commands.fetch_commands(batch=8, timeout_ms=50)  # (the pull stands from here on)
    fetching = asyncio.create_task(commands.fetch_commands(batch=8, timeout_ms=WAIT_MS))
    run_id = unique("run")
    await commands.publish_command(run_id, b"c0", f"{run_id}:0")
    assert await asyncio.wait_for(fetching, WAIT_MS / 1000) == []
    [(data, task)] = handed
    assert data == b"c0"
    reading = private_js._nc._reading_task
    assert task is reading and task is not fetching, (task, reading)
    await commands.close()


async def test_a_command_that_comes_at_the_limit_is_taken_by_a_fetch(
    private_server: EmbeddedNats, private_js: JetStreamContext
) -> None:
    commands = JetStreamCommandQueue(private_js)
    asked: list[str] = []

    class AtLimit:
        def ready(self) -> bool:
            asked.append("ready")
            return False

        def __call__(self, messages: list[TaskMessage]) -> None:
            raise AssertionError("handed a batch while not ready")

    commands.dispatch_to(AtLimit())
    run_id = unique("run")
    await commands.publish_command(run_id, b"c0", f"{run_id}:0")
    [message] = await commands.fetch_commands(batch=8, timeout_ms=WAIT_MS)
    assert message.data == b"c0"
    assert asked, "the pull did not ask whether a batch would be taken"
    assert commands.held() == []
    await message.ack()
    await commands.close()


async def test_the_engine_starts_a_command_s_group_in_the_read_loop(
    connection: Connection,
) -> None:
    engine = Engine(connection.history, connection.tasks, connection.timers, connection.commands)
    scheduled_in: list[asyncio.Task[Any] | None] = []
    schedule = engine._schedule_batch

    def recorded(messages: list[CommandMessage]) -> asyncio.Future[Any]:
        scheduled_in.append(asyncio.current_task())
        return schedule(messages)

    engine._schedule_batch = recorded  # type: ignore[method-assign]
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    try:
        await start_and_see_it_started(connection, WAIT_MS)
        reading = connection.commands.js._nc._reading_task
        assert scheduled_in == [reading], (scheduled_in, reading, serving)
    finally:
        stop.set()
        await serving


async def test_the_engine_takes_commands_as_they_come_only_while_no_batch_is_in_flight() -> None:
    """A busy engine's commands go the fetch's way (batched as they came while it worked)."""
    in_flight: set[asyncio.Future[Any]] = set()
    stop = asyncio.Event()
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    scheduled: list[list[TaskMessage]] = []

    def schedule(messages: list[TaskMessage]) -> asyncio.Future[Any]:
        scheduled.append(messages)
        return done

    idle = WhenIdle(in_flight, stop, schedule)
    assert idle.ready()
    message = cast(TaskMessage, object())
    idle([message])
    assert scheduled == [[message]] and in_flight == {done}
    assert not idle.ready(), "a batch is in flight: the fetch's way"
    done.set_result(None)
    await asyncio.sleep(0)  # (its done callback)
    assert not in_flight and idle.ready()
    stop.set()
    assert not idle.ready(), "stopping: nothing handed over"


async def test_the_engine_takes_no_commands_as_they_come_while_some_are_in_hand() -> None:
    """A batch whose gather ended early (a run's group raised) leaves its other runs'
    commands in the engine's window with nothing in flight: no hand-over then (it could take
    the window past its bound), only fetches, which ask for what the window has room for."""
    in_flight: set[asyncio.Future[Any]] = set()
    window: set[TaskMessage] = {cast(TaskMessage, object())}  # still in hand
    idle = WhenIdle(in_flight, asyncio.Event(), lambda messages: asyncio.Future(), window)
    assert not idle.ready(), "commands in hand: the fetch's way"
    window.clear()
    assert idle.ready()
