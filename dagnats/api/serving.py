"""The HTTP API's part of `dagnats serve`: start it beside the engine, stop it with it.

`start_http(server, address, explicit=..., token=...)` checks the loopback rule (no token:
loopback only), binds, connects the API's clients and serves; a default address that is taken
is a warning and serve goes on without HTTP (an explicit `--http` that is taken is an error).
The HTTP worker bridge (`dagnats/api/bridge.py`, routes under `/v1/tasks`) is mounted on its
own connection with the `worker` credential, and closed with the API. Its heartbeat timeout
(the task consumers' ack wait, which every worker of a task type shares) is
`$DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT` seconds (0.5..3600, as `dagnats worker --heartbeat-timeout`)
or the default 10 s.
"""

from __future__ import annotations

import asyncio
import logging

from litestar import Response, Router, get
from litestar.handlers import HTTPRouteHandler

from dagnats.api.app import create_app
from dagnats.api.bridge import TaskBridge
from dagnats.api.bridge_routes import bridge_route_handlers
from dagnats.api.checks import (
    HttpAddressError,
    bridge_ack_wait_ms,
    parse_address,
    require_token_beyond_loopback,
)
from dagnats.api.server import HttpServer
from dagnats.api.services import Services
from dagnats.api.triggers_routes import Hooks, hook_route_handlers
from dagnats.console import console_handlers
from dagnats.observe.metrics import CONTENT_TYPE, Metrics, render
from dagnats.runtime.serve import Server

log = logging.getLogger("dagnats.api")


class RunningApi:
    """The HTTP server and the services it uses, stopped together."""

    def __init__(self, http: HttpServer, services: Services, bridge: TaskBridge) -> None:
        self.http = http
        self.services = services
        self.bridge = bridge

    @property
    def url(self) -> str:
        return self.http.url

    async def stop(self) -> None:
        await self.http.stop()
        await self.bridge.close()
        await self.services.close()


def metrics_route(metrics: Metrics) -> HTTPRouteHandler:
    """`GET /metrics`: the serve's Prometheus metrics (README "Observability"); behind the
    API token when one is set, like every route but /health."""

    @get("/metrics", summary="Prometheus metrics", tags=["health"], media_type=CONTENT_TYPE,
         sync_to_thread=False)  # fmt: skip
    def metrics_text() -> Response[bytes]:
        return Response(render(metrics), media_type=CONTENT_TYPE)

    return metrics_text


async def start_http(
    server: Server, address: str, *, explicit: bool, token: str | None
) -> RunningApi | None:
    """Serve the HTTP API of a started `server` on `address`.

    Returns None (after a warning) when the default address is taken.

    Raises:
        HttpAddressError: `address` is malformed, or (given explicitly) cannot be bound.
        TokenRequiredError: beyond loopback without a token.
        BridgeSettingError: $DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT out of its bounds.
    """
    host, port = parse_address(address)
    require_token_beyond_loopback(host, token)
    ack_wait_ms = bridge_ack_wait_ms()
    assert server.connection is not None, "start the server first"
    services = await Services.open(
        server.url,
        server.data_dir,
        js=server.connection.js,
        engine_running=lambda: server.engine_serving and not server.history_gone,
        ready=lambda: not server.history_gone,
    )
    bridge: TaskBridge | None = None
    try:
        bridge = await TaskBridge.open(
            server.url, data_dir=server.data_dir, ack_wait_ms=ack_wait_ms
        )
        handlers: list[Router | HTTPRouteHandler] = [*bridge_route_handlers(bridge)]
        handlers.append(metrics_route(server.metrics))
        hooks = Hooks(server.connection.js, services.client.connection)
        services.triggers_changed = hooks.forget_routes  # a trigger made here answers at once
        handlers += hook_route_handlers(hooks)
        handlers.extend(console_handlers(token))  # the web console (README "Console")
        # CPU-bound (route registration): in a thread, so that the engine's loop goes on
        app = await asyncio.to_thread(
            create_app, services, token=token, extra_route_handlers=handlers
        )
        http = HttpServer(app, host, port)
        try:
            http.bind()
        except HttpAddressError as error:
            if explicit:
                raise
            log.warning("HTTP API not started: %s (%s)", error, error.hint)
            await bridge.close()
            await services.close()
            return None
        await http.start()
    except BaseException:
        if bridge is not None:
            await bridge.close()
        await services.close()
        raise
    return RunningApi(http, services, bridge)
