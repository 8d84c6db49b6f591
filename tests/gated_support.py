"""A local stack (serve's parts and a worker in this process) whose handlers hold on gates
the test opens; every gate is opened before the stack stops, so no handler holds its drain.
Shared by the admission end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from dagnats import Client, Worker
from dagnats.runtime.serve import local_stack


@contextlib.asynccontextmanager
async def gated_stack(
    data_dir: Path, worker: Worker, gates: Mapping[Any, asyncio.Event]
) -> AsyncIterator[Client]:
    """`local_stack` with `worker`; `gates` (the test's, filled as handlers ask) all set at
    the end."""
    async with local_stack(data_dir, worker) as (_info, client):
        try:
            yield client
        finally:
            for event in gates.values():
                event.set()
