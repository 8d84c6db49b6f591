"""The processes the benches start: an engine alone, or a worker alone, against a NATS URL.

    python -m bench.procs engine --url URL [--profile FILE]
    python -m bench.procs worker --url URL --kind noop|recovery [--concurrency N]
                                 [--report-started default|yes|no]
                                 [--data-dir DIR] [--profile FILE]

Each prints one JSON line `{"kind": "ready", "pid": ...}` on stdout when connected, a
`{"kind": "stats", ...}` line on SIGUSR1 (the engine: its VmRSS/VmHWM, cached runs, counters;
the worker: tasks handled) and a last stats line after SIGTERM or SIGINT, when it has stopped.
With --data-dir, the worker connects with that data dir's worker credential (a `dagnats
serve`'s, which enforces roles). With --profile, the process runs under cProfile and writes
its stats to FILE at exit.

This module may connect to the given URL only; it creates no streams (the bench does).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import signal
from pathlib import Path
from typing import Final

from bench.workers import noop_worker, recovery_worker
from dagnats.runtime import collector
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.worker import Worker

STATUS_FILE: Final = Path("/proc/self/status")


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM of this process in kB (Linux), from /proc/self/status."""
    found: dict[str, int] = {}
    for line in STATUS_FILE.read_text(encoding="ascii").splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(rest.split()[0])
    return {"rss_kb": found.get("VmRSS", 0), "hwm_kb": found.get("VmHWM", 0)}


def say(line: dict[str, object]) -> None:
    print(json.dumps(line, separators=(",", ":")), flush=True)


def engine_stats(engine: Engine) -> dict[str, object]:
    return {
        "kind": "stats",
        **memory_kb(),
        "cached_runs": engine.cached_runs(),
        "cache_runs_max": engine.cache_runs_max,
        "counters": dict(engine.counters),
        "needs_resume": len(engine.needs_resume),
        "parked": len(engine.parked),
    }


def install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_engine(url: str) -> None:
    connection = await Connection.open(url, role="engine")
    engine = Engine(connection.history, connection.tasks, connection.timers, connection.commands)
    stop = asyncio.Event()
    install_signals(stop)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: say(engine_stats(engine)))
    collector.settle()  # as `dagnats serve` and `dagnats worker` do once up
    say({"kind": "ready", "pid": os.getpid()})
    try:
        await engine.serve(connection.commands, stop)
    finally:
        stop.set()
        say(engine_stats(engine))
        await connection.close()


async def run_worker(
    url: str,
    kind: str,
    concurrency: int,
    report_started: bool | None,
    data_dir: Path | None = None,
) -> None:
    # What `dagnats worker` uses; with a data dir, its worker credential (a serve's roles).
    connection = await Connection.open(url, role="worker", data_dir=data_dir)
    worker: Worker = (
        noop_worker(concurrency, report_started=report_started)
        if kind == "noop"
        else recovery_worker(concurrency)
    )
    stop = asyncio.Event()
    install_signals(stop)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: say({"kind": "stats", "handled": worker.handled, **memory_kb()})
    )
    collector.settle()  # as `dagnats serve` and `dagnats worker` do once up
    say({"kind": "ready", "pid": os.getpid()})
    try:
        await worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    finally:
        say({"kind": "stats", "handled": worker.handled, **memory_kb()})
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.procs")
    parser.add_argument("role", choices=["engine", "worker"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["noop", "recovery"], default="noop")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--report-started", choices=["default", "yes", "no"], default="default")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if arguments.role == "engine":
        coroutine = run_engine(arguments.url)
    else:
        coroutine = run_worker(
            arguments.url,
            arguments.kind,
            arguments.concurrency,
            {"default": None, "yes": True, "no": False}[arguments.report_started],
            arguments.data_dir,
        )
    if arguments.profile is None:
        asyncio.run(coroutine)
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        asyncio.run(coroutine)
    finally:
        profile.disable()
        profile.dump_stats(str(arguments.profile))


if __name__ == "__main__":
    main()
