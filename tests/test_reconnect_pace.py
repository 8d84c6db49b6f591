"""A connection's reconnect pace (dagnats/runtime/connection.py `ConnectionWatch.pace`): in
the first `reconnect_fast_window_s` of an outage it tries every `reconnect_wait_fast_s` (a
restarted serve is back within ~0.3 s, and a worker's result waits for its reconnect), then
every `reconnect_wait_s`; once reconnected, the next outage starts quick again. Against a
real nats-server, stopped and started again on its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagnats.runtime import connection as connection_module
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from tests.nats_fixtures import wait_for

WINDOW_S = 3.0  # the fast window, shorter for the test (long enough for a loaded machine)


async def test_an_outage_is_tried_quickly_first_then_slower_and_quickly_again_after(
    server_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "reconnect_fast_window_s", WINDOW_S)
    fast, slow = connection_module.reconnect_wait_fast_s, connection_module.reconnect_wait_s
    assert fast < slow
    server = EmbeddedNats(server_dir)
    await server.start()
    opened = await Connection.open(server.url)
    nc = opened.nc
    try:
        assert nc.options["reconnect_time_wait"] == fast, "the first connect set the pace"
        port = server.port
        await server.stop()
        await wait_for(lambda: not nc.is_connected, timeout_ms=20_000, what="the outage seen")
        assert nc.options["reconnect_time_wait"] == fast, "the outage's first attempts are quick"
        await wait_for(
            lambda: nc.options["reconnect_time_wait"] == slow,
            timeout_ms=20_000, what="the slower pace after the fast window",
        )  # fmt: skip
        restarted = EmbeddedNats(server_dir, port=port)
        await restarted.start()
        try:
            await wait_for(lambda: nc.is_connected, timeout_ms=20_000, what="the reconnect")
            await wait_for(
                lambda: nc.options["reconnect_time_wait"] == fast,
                timeout_ms=20_000, what="the quick pace again once reconnected",
            )  # fmt: skip
        finally:
            await opened.close()
            await restarted.stop()
    finally:
        if server.is_running():
            await server.stop()
