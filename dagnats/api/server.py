"""The HTTP API inside the serve process: uvicorn on the serve's own asyncio loop.

`HttpServer` binds its socket itself (so a taken port is one clear error and port 0 reports
the port it got), then runs uvicorn on it without uvicorn's signal handlers (serve's own stop
on SIGINT/SIGTERM stops it). `checks.parse_address` reads `--http` (`HOST:PORT`, `[V6]:PORT`,
`PORT`). The bridge needs nothing here: it is a router of the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from litestar import Litestar

from dagnats.api import limits as api_limits
from dagnats.api.checks import HttpAddressError

log = logging.getLogger("dagnats.api")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: serve owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving `app` on (host, port) until `stop()`."""

    def __init__(self, app: Litestar, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int:
        """Bind the listening socket; returns the port (the one chosen for port 0).

        Raises:
            HttpAddressError: the address is taken or not this machine's.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
        # it (they inherit the listener's); with proto 0 each response waited for the
        # client's delayed ACK (Nagle): ~40 ms per request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise HttpAddressError(
                f"--http {self.host}:{self.port} cannot be bound: {error.strerror or error}",
                "pass another --http address (port 0 = a free one), or --no-http",
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Serve (binding first when not bound yet); returns the URL."""
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        config = uvicorn.Config(
            self.app, lifespan="off", log_level="warning", access_log=False,
            timeout_graceful_shutdown=int(api_limits.http_stop_timeout_s),
            server_header=False,
        )  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        await asyncio.sleep(0)
        return self.url

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop serving within `http_stop_timeout_s` (open streams are cut after it)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, api_limits.http_stop_timeout_s * 2)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception as error:  # uvicorn's own failure: logged, serve still stops
                log.warning("the HTTP server stopped with %s", error)
        if self._socket is not None:
            self._socket.close()
        self._task = None
        self._server = None
        self._socket = None
