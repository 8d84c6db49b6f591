"""Parts of `dagnats serve`'s start (runtime/serve.py) that keep a restart's path short.

`while_starting` does CPU-bound work (loading the step modules) while the nats-server child
starts on its own; `import_projection_modules` imports the projections' modules (sqlite-utils)
in a thread after the engine's first resume pass, so that the engine's loop goes on meanwhile
(issue 14, `bench.recovery`). Starts and stops nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

Started = TypeVar("Started")
PROJECTION_MODULES: Final = (
    "dagnats.runtime.projector",
    "dagnats.runtime.projector_shared",
    "projections.sqlite",
)


def current_umask() -> int:
    """The process's umask (read by setting it and back: there is no getter)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def with_umask(mask: int, work: Callable[[], Started]) -> Started:
    """`work()` (synchronous: nothing else of the process runs meanwhile) under `mask`."""
    previous = os.umask(mask)
    try:
        return work()
    finally:
        os.umask(previous)


def import_projection_modules() -> None:
    """Import what `Server.start_projections` needs (serve runs it in a thread)."""
    for name in PROJECTION_MODULES:
        importlib.import_module(name)


async def while_starting(
    start: Coroutine[Any, Any, Started], work: Callable[[], object]
) -> Started:
    """What `start` returns, with `work` done after start's first step (the nats-server
    child is spawned before its first wait) and before waiting for the rest; when `work`
    fails, start is cancelled (an embedded server's start then kills its child and releases
    the data dir's lock) and the error raised."""
    starting = asyncio.ensure_future(start)
    try:
        await asyncio.sleep(0)
        work()
    except BaseException:
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        raise
    return await starting
