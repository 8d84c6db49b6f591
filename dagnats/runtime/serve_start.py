"""Parts of `dagnats serve`'s start (runtime/serve.py) that keep a restart's path short.

`while_starting` does CPU-bound work (loading the step modules) while the nats-server child
starts on its own; `import_projection_modules` imports the projections' modules (sqlite-utils)
in a thread after the engine's first resume pass, so that the engine's loop goes on meanwhile
(issue 14, `bench.recovery`). `republish_history` gives a history stream made by an older
version the `republish` run watches need. Starts and stops nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime.resources import ensure_history_republish

log = logging.getLogger("dagnats.serve")

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


async def republish_history(admin: JetStreamContext) -> None:
    """Give the history stream its `republish` (run watches subscribe to it: one made by an
    older version has none); a failure is one warning line, and clients watch runs through
    consumers instead (dagnats/client/live_watch.py)."""
    try:
        if not await ensure_history_republish(admin):
            log.warning("the history stream republishes elsewhere (its own `republish`): run "
                        "watches use consumers")  # fmt: skip
    except (nats.errors.Error, nats.js.errors.Error) as error:
        log.warning("the history stream's republish could not be set (%s): run watches use "
                    "consumers", error)  # fmt: skip
