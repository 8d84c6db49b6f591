"""A client reaches the trigger resources serve made without a forbidden request: the client
role may not create streams, and nats-server answers a forbidden request with nothing (only a
permissions violation on the connection), so each `dagnats trigger` command, trigger route and
console page used to wait out nats-py's 5 s request timeout first."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime.serve import Server
from dagnats.runtime.triggers import FIRES_STREAM, load_entries, reach_trigger_resources
from dagnats.runtime.triggers_plan import STATE_BUCKET, TRIGGERS_BUCKET
from tests.nats_fixtures import wait_for
from tests.test_roles_nats import connected_as, server  # noqa: F401 (the fixture)

WAIT_MS = 20_000


async def _made(js: JetStreamContext) -> bool:
    """Whether serve made all three (the fires stream first, then the two buckets)."""
    try:
        for name in (FIRES_STREAM, f"KV_{STATE_BUCKET}", f"KV_{TRIGGERS_BUCKET}"):
            await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_a_client_reads_the_triggers_without_a_forbidden_request(server: Server) -> None:  # noqa: F811
    async with connected_as(server, "client") as seen:
        assert seen.nc is not None
        js = seen.nc.jetstream()
        await wait_for(
            lambda: _made(js), timeout_ms=WAIT_MS, what="serve to make the trigger resources"
        )
        await reach_trigger_resources(js)
        assert await load_entries(js) == []
        await seen.nc.flush()
        assert not [e for e in seen.errors if "permissions violation" in e], seen.errors
