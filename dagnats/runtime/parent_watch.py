"""`dagnats serve --die-with-parent`: stop when the process that started serve dies.

A supervisor or an IDE plugin that starts `dagnats serve` may die without stopping it (a
SIGKILL leaves no chance to). The watch compares the parent process id with the one serve
started under, every `settings.parent_watch_interval_ms`; when the parent is gone the
process is re-parented (to init or a subreaper), so the id changes, and the watch sets the
stop event: serve then stops as on Ctrl-C (the engine drains, the nats-server child is
stopped). It only reads its own parent's id.
"""

from __future__ import annotations

import asyncio
import logging
import os

from dagnats.runtime import settings

log = logging.getLogger("dagnats.serve")


async def watch_parent(stop: asyncio.Event, parent_pid: int | None = None) -> None:
    """Set `stop` once the parent process (`parent_pid`, the current one by default) dies;
    return when `stop` is set either way."""
    parent = os.getppid() if parent_pid is None else parent_pid
    assert parent > 0, f"parent pid {parent}"
    interval_s = settings.parent_watch_interval_ms / 1000
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the parent process %d is gone: stopping (--die-with-parent)", parent)
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            continue
