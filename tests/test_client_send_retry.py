"""A client's command that no stream acknowledged is published again under the same
Nats-Msg-Id until one does, within `settings.command_send_ms_max` (dagnats/client/sending.py):
a start made while the commands stream is away (in a cluster, electing its leader) is stored
once when it is back, and one made while it stays away fails after the bound with the last
error. Real nats-server; the stream is deleted and made again to stand for the election."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from dagnats.client.sending import send_command
from dagnats.runtime.connection import Connection
from dagnats.runtime.resources import COMMANDS_STREAM, ensure_resources
from kernel import codec
from kernel.commands import CancelRun
from tests.nats_fixtures import unique

BACK_AFTER_S = 0.5  # the stream comes back this long after the first publish
SEND_MS_MAX = 20_000


async def stored_commands(connection: Connection) -> int:
    info = await connection.js.stream_info(COMMANDS_STREAM)
    return int(info.state.messages)


async def test_a_command_no_stream_answered_is_sent_again_and_stored_once(
    connection: Connection,
) -> None:
    run_id = unique("away")
    payload = codec.encode(CancelRun(run_id=run_id, at_ms=1, reason="test"))
    await connection.js.delete_stream(COMMANDS_STREAM)

    async def back_later() -> None:
        await asyncio.sleep(BACK_AFTER_S)
        await ensure_resources(connection.js)

    coming_back = asyncio.create_task(back_later())
    attempts = await send_command(
        connection.commands, run_id, payload, f"cancel:{run_id}", send_ms_max=SEND_MS_MAX
    )
    await coming_back
    assert attempts > 1, "the stream was away: the first publish cannot have been taken"
    assert await stored_commands(connection) == 1
    again = await send_command(connection.commands, run_id, payload, f"cancel:{run_id}")
    assert again == 1 and await stored_commands(connection) == 1  # the same id: stored once


async def test_a_command_no_stream_takes_within_the_bound_raises_the_last_error(
    connection: Connection,
) -> None:
    run_id = unique("gone")
    payload = codec.encode(CancelRun(run_id=run_id, at_ms=1, reason="test"))
    await connection.js.delete_stream(COMMANDS_STREAM)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await send_command(
            connection.commands, run_id, payload, f"cancel:{run_id}", send_ms_max=400
        )
