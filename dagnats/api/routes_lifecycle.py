"""`/v1/workers`: the live workers (the worker directory, README "Worker groups").

Mirrors `dagnats workers list`.
"""

from __future__ import annotations

import msgspec
from litestar import Router, get

from dagnats.api.services import Services
from dagnats.client import lifecycle as client_lifecycle
from dagnats.runtime.workers_directory import WorkerEntry


class WorkersView(msgspec.Struct, frozen=True, kw_only=True):
    workers: list[WorkerEntry]


@get("/", summary="List the live workers: task types, groups, concurrency, in flight")
async def list_workers(services: Services, stale: bool = False) -> WorkersView:
    """Workers whose last heartbeat is recent (`stale=true`: also those that stopped lately)."""
    entries = await client_lifecycle.list_workers(services.client, include_stale=stale)
    return WorkersView(workers=entries)


workers_router = Router(path="/v1/workers", route_handlers=[list_workers], tags=["workers"])
router = Router(path="/", route_handlers=[workers_router])
