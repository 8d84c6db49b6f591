"""A command the engine cannot schedule must not stop the client's read loop: the standing
pull hands commands to the engine inside that loop (runtime/standing_pull
`CommandPull._changed`), so an exception there would end the loop for good (nats-py logs it
and stops reading), leaving a connection that looks connected and hears nothing. Against a
real nats-server: a command whose subject is not UTF-8 (any client allowed to publish on a
command subject can send one), then a good command, which the engine must still handle.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.queue import JetStreamCommandQueue
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_standing_pull import start_and_see_it_started

WAIT_MS = 10_000


async def test_a_command_with_a_subject_not_utf8_leaves_the_read_loop_running(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    engine = Engine(connection.history, connection.tasks, connection.timers, connection.commands)
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    other = await connect(private_server.url)
    try:

        async def standing() -> bool:
            pull = connection.commands._pull
            return pull is not None and pull.requests > 0

        await wait_for(standing, timeout_ms=WAIT_MS, what="the engine's pull stands")
        bad = b"dagnats.cmd.0.r\xff\xfe.client"
        await other._send_command(b"PUB %b 2\r\n{}\r\n" % bad)
        await other.flush()
        await start_and_see_it_started(connection, WAIT_MS)
        reading = connection.commands.js._nc._reading_task
        assert reading is not None and not reading.done(), "the read loop ended"
    finally:
        stop.set()
        await other.close()
        await asyncio.wait_for(asyncio.gather(serving, return_exceptions=True), WAIT_MS / 1000)


async def test_a_dispatch_that_raises_leaves_the_read_loop_running(
    private_server: EmbeddedNats, private_js: JetStreamContext
) -> None:
    """What `dispatch` raises goes to a fetch (the engine's serve), not the read loop: the
    commands stay held, in order, for the next fetch, and the one after raises it."""
    commands = JetStreamCommandQueue(private_js)

    class Raising:
        def ready(self) -> bool:
            return True

        def __call__(self, messages: list[TaskMessage]) -> None:
            raise RuntimeError("cannot take these")

    commands.dispatch_to(Raising())
    await commands.fetch_commands(batch=8, timeout_ms=50)  # (the pull stands from here on)
    run_id = unique("run")
    await commands.publish_command(run_id, b"c0", f"{run_id}:0")

    async def held() -> bool:
        return bool(commands.held())

    await wait_for(held, timeout_ms=WAIT_MS, what="the command came")
    reading = private_js._nc._reading_task
    assert reading is not None and not reading.done(), "the read loop ended"
    [message] = await commands.fetch_commands(batch=8, timeout_ms=WAIT_MS)  # (held, in order)
    assert message.data == b"c0"
    with pytest.raises(RuntimeError):
        await commands.fetch_commands(batch=8, timeout_ms=WAIT_MS)
    await message.ack()
    await commands.close()
