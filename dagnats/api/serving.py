"""The HTTP API's part of `dagnats serve`: start it beside the engine, stop it with it.

`start_http(server, address, explicit=..., token=...)` checks the loopback rule (no token:
loopback only), binds, connects the API's clients and serves; a default address that is taken
is a warning and serve goes on without HTTP (an explicit `--http` that is taken is an error).
The bridge (`dagnats/api/bridge.py`, its `router`) is mounted when that module is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence

from litestar.types import ControllerRouterHandler

from dagnats.api.app import create_app
from dagnats.api.auth import require_token_beyond_loopback
from dagnats.api.server import HttpAddressError, HttpServer, parse_address
from dagnats.api.services import Services
from dagnats.runtime.serve import Server

log = logging.getLogger("dagnats.api")
BRIDGE_MODULE = "dagnats.api.bridge"


class RunningApi:
    """The HTTP server and the services it uses, stopped together."""

    def __init__(self, http: HttpServer, services: Services) -> None:
        self.http = http
        self.services = services

    @property
    def url(self) -> str:
        return self.http.url

    async def stop(self) -> None:
        await self.http.stop()
        await self.services.close()


def bridge_handlers() -> Sequence[ControllerRouterHandler]:
    """The HTTP worker bridge's router (`dagnats.api.bridge.router`) when installed."""
    if importlib.util.find_spec(BRIDGE_MODULE) is None:
        return ()
    router = getattr(importlib.import_module(BRIDGE_MODULE), "router", None)
    return () if router is None else (router,)


async def start_http(
    server: Server, address: str, *, explicit: bool, token: str | None
) -> RunningApi | None:
    """Serve the HTTP API of a started `server` on `address`.

    Returns None (after a warning) when the default address is taken.

    Raises:
        HttpAddressError: `address` is malformed, or (given explicitly) cannot be bound.
        TokenRequiredError: beyond loopback without a token.
    """
    host, port = parse_address(address)
    require_token_beyond_loopback(host, token)
    assert server.connection is not None, "start the server first"
    services = await Services.open(
        server.url,
        server.data_dir,
        js=server.connection.js,
        engine_running=lambda: server.engine_serving and not server.history_gone,
        ready=lambda: not server.history_gone,
    )
    try:
        app = create_app(services, token=token, extra_route_handlers=bridge_handlers())
        http = HttpServer(app, host, port)
        try:
            http.bind()
        except HttpAddressError as error:
            if explicit:
                raise
            log.warning("HTTP API not started: %s (%s)", error, error.hint)
            await services.close()
            return None
        await http.start()
    except BaseException:
        await services.close()
        raise
    return RunningApi(http, services)
