"""A real stack for the HTTP worker bridge tests: an embedded nats-server, the engine, a
`TaskBridge` on the worker credential, and the bridge's routes served by uvicorn on a free
loopback port, with an httpx client and a DagNats client.

Until dagnats/api/app.py mounts the bridge, this serves a minimal Litestar app of the bridge's
routes alone (`bridge_app`). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import uvicorn
from litestar import Litestar

from dagnats.api.bridge import TaskBridge
from dagnats.api.bridge_routes import bridge_route_handlers
from dagnats.client import Client
from dagnats.runtime.protocols import CommandPublisher
from dagnats.runtime.serve import ServeInfo, Server
from kernel.errors import DagnatsError
from kernel.events import AnyEvent
from tests.nats_fixtures import wait_for

http_start_timeout_ms: Final = 10_000
stop_timeout_s: Final = 10.0
request_timeout_s: Final = 30.0


def bridge_app(bridge: TaskBridge) -> Litestar:
    """A Litestar app of the bridge's routes (what app.py's extra_route_handlers mounts)."""
    return Litestar(route_handlers=bridge_route_handlers(bridge))


@contextlib.asynccontextmanager
async def http_server(app: Litestar) -> AsyncIterator[str]:
    """`app` under uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout_ms=http_start_timeout_ms,
                       what="uvicorn to start")  # fmt: skip
        assert not task.done(), "uvicorn stopped at start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=stop_timeout_s)


@dataclass
class BridgeStack:
    info: ServeInfo
    client: Client
    bridge: TaskBridge
    base_url: str
    http: httpx.AsyncClient

    async def post(self, path: str, body: object = None, **kwargs: Any) -> httpx.Response:
        if isinstance(body, bytes):
            return await self.http.post(path, content=body, **kwargs)
        return await self.http.post(path, json=body, **kwargs)

    async def poll(self, task_type: str, *, timeout_ms: int = 5_000, max_tasks: int = 1,
                   worker_id: str = "") -> list[dict[str, Any]]:  # fmt: skip
        body = {"task_types": [task_type], "max_tasks": max_tasks, "timeout_ms": timeout_ms,
                "worker_id": worker_id}  # fmt: skip
        response = await self.post("/v1/tasks/poll", body)
        assert response.status_code == 200, response.text
        tasks: list[dict[str, Any]] = response.json()["tasks"]
        return tasks

    async def poll_one(self, task_type: str, *, within_ms: int = 15_000) -> dict[str, Any]:
        """The next task of `task_type`, polling until one comes (bounded)."""
        found: list[dict[str, Any]] = []

        async def came() -> bool:
            found.extend(await self.poll(task_type, timeout_ms=1_000))
            return bool(found)

        await wait_for(came, timeout_ms=within_ms, what=f"a task of {task_type}")
        assert len(found) == 1, found
        return found[0]

    async def events(self, run_id: str) -> list[AnyEvent]:
        return [e async for _, decision in self.client.history(run_id) for e in decision.events]


@contextlib.asynccontextmanager
async def bridge_stack(data_dir: Path, *, ack_wait_ms: int = 10_000) -> AsyncIterator[BridgeStack]:
    """Server + engine + bridge (heartbeat timeout `ack_wait_ms`) + HTTP, all stopped on exit."""
    server = Server(data_dir)
    info = await server.start()
    stop = asyncio.Event()
    engine = asyncio.create_task(server.run(stop))
    bridge = await TaskBridge.open(info.nats_url, ack_wait_ms=ack_wait_ms, data_dir=data_dir)
    client = await Client.connect(info.nats_url)
    try:
        async with (
            http_server(bridge_app(bridge)) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=request_timeout_s) as http,
        ):
            yield BridgeStack(info, client, bridge, base_url, http)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(engine, timeout=stop_timeout_s)
        await client.close()
        await bridge.close()
        await server.stop()


class GatedCommands:
    """The bridge's command publisher, each publish held until `opened` is set (the real
    publish to NATS follows): a result's send that has not come back yet."""

    def __init__(self, inner: CommandPublisher) -> None:
        self.inner = inner
        self.opened = asyncio.Event()
        self.waiting = 0

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        self.waiting += 1
        await self.opened.wait()
        await self.inner.publish_command(run_id, payload, msg_id, token=token)


class RefusingCommands:
    """A command publisher that refuses every command before sending it (as one refuses a
    command over its size bound): nothing is stored."""

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        raise DagnatsError(f"command {msg_id} refused before sending")
