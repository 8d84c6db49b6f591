"""Wall-clock marks of a process's start-up phases, for `bench.recovery_phases`.

`install(path)` wraps a few functions of the serve and worker start-up path (nats-server's
start, each connection's open, the resources' checks, the engine's resume pass, the first
command fetch, a reconnect) so that each appends `{"phase": ..., "at": <epoch s>}` to
`path` when it starts and ends. Nothing here changes what the wrapped functions do; it is
imported only by the bench's traced children, never by the product.

`python -m bench.startup_trace PATH serve ...` runs `dagnats` (the console script's `main`)
traced; `python -m bench.startup_trace PATH procs ...` runs `bench.procs` traced.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED_AT = time.time()
process = ["?"]  # which process marks: "serve" or "procs" (set by main)


def mark(path: Path, phase: str, at: float | None = None) -> None:
    line = {"process": process[0], "phase": phase, "at": time.time() if at is None else at}
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")


def _wrap_async(path: Path, owner: Any, name: str, label: str, *, once: bool = False) -> None:
    original = getattr(owner, name)
    raw = original.__func__ if isinstance(original, classmethod) else original
    done: list[bool] = []

    @functools.wraps(raw)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        if once and done:
            return await raw(*args, **kwargs)
        done.append(True)
        role = kwargs.get("role")
        tag = f"{label}[{role}]" if isinstance(role, str) else label
        mark(path, f"{tag}:start")
        try:
            return await raw(*args, **kwargs)
        finally:
            mark(path, f"{tag}:end")

    setattr(owner, name, classmethod(wrapped) if isinstance(original, classmethod) else wrapped)


def _wrap_sync_callback(path: Path, owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        mark(path, label)
        return await original(*args, **kwargs)

    setattr(owner, name, wrapped)


def install(path: Path) -> None:
    """Wrap the start-up path's functions (see the module's docstring)."""
    from dagnats.runtime import connection, engine, nats_server, serve
    from dagnats.runtime.links import RunLinks
    from dagnats.runtime.queue import JetStreamCommandQueue

    mark(path, "imports:end")
    _wrap_async(path, nats_server.EmbeddedNats, "start", "nats_start")
    _wrap_async(path, connection.Connection, "open", "connect")
    _wrap_async(path, serve, "history_gone", "history_check", once=True)
    _wrap_async(path, serve, "_ensure_local_resources", "ensure_resources", once=True)
    _wrap_async(path, serve.Server, "_settle_partitions", "settle_partitions")
    _wrap_async(path, serve.Server, "start", "server_start")
    _wrap_async(path, RunLinks, "open_routing", "open_routing")
    _wrap_async(path, engine.Engine, "resume_all", "resume_all")
    _wrap_async(path, JetStreamCommandQueue, "fetch_commands", "first_fetch", once=True)
    _wrap_sync_callback(path, connection.ConnectionWatch, "on_reconnected", "reconnected")
    _wrap_sync_callback(path, connection.ConnectionWatch, "on_disconnected", "disconnected")


def main() -> None:
    path = Path(sys.argv[1])
    what = sys.argv[2]
    sys.argv = [what, *sys.argv[3:]]
    process[0] = what
    mark(path, "interpreter:start", STARTED_AT)
    if what == "procs":
        from bench import procs

        install(path)
        procs.main()
        return
    from dagnats.cli import main as dagnats_main

    install(path)
    dagnats_main()


if __name__ == "__main__":
    main()
