"""W3: recovery after the engine is SIGKILLed in the middle of a run.

`dagnats serve --json` runs as a subprocess (engine + its embedded nats-server on a fixed
port), and an instrumented worker process (`bench.workers.recovery_worker`) counts handler
calls per step in a file. A run of a 10-step chain starts; while step 6 (`s5`) is in its
handler (which blocks until a flag file appears), serve is SIGKILLed (its nats-server dies
with it). Then the flag file is created and serve is started again on the same data dir; the
clock starts at that process start. From the run's history (server timestamps of each
append), the bench takes the time to s5's result being recorded and to the run's end.
`steps_rerun` counts handler calls beyond one per step (s5's in-flight call counts as its
one). `value` is restart-to-done seconds for a worker as `dagnats worker` connects (its
connection's reconnect pace: every `reconnect_wait_fast_s` in the first seconds of an outage,
dagnats/runtime/connection.py). `ratio` is value over the
floor: a bare nats-server restart on the same data dir plus one serial raw JetStream hop per
remaining step, both measured in this run. Target: < 0.5 s with 0 steps rerun.
`python -m bench.recovery_phases` shows where the time goes, phase by phase.

Serve runs with its bytecode cached, as an installed serve has it (pip compiles a wheel's
modules; an editable install writes `__pycache__` on its first run): the first serve writes
the cache under the bench's temporary directory (`PYTHONPYCACHEPREFIX`, nothing written into
the checkout, also when `PYTHONDONTWRITEBYTECODE` is set) and the restarted one reads it.
Without it every restart compiles the project's ~200 modules again (about 0.2 s of CPU here).

`python -m bench.recovery` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Final

import nats

from bench.common import (
    Child,
    chain_workflow,
    emit,
    procs_command,
    publish_starts,
    rounded,
    wait_until,
)
from bench.floor import measure_floor
from bench.workers import (
    GO_FILE,
    RECOVERY_BLOCKING_STEP,
    RECOVERY_DIR_ENV,
    RECOVERY_TASK,
    read_calls,
)
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats, pick_free_port
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel import codec
from kernel.events import RunCompleted, RunFailed, StepCompleted

STEPS: Final = 10
REMAINING_HOPS: Final = STEPS - 5  # s5's result and s6..s9
STEP_WAIT_S: Final = 20.0
DONE_WAIT_S: Final = 20.0
FLOOR_HOPS: Final = 500
PROC_POLL_S: Final = 0.005
BYTECODE_CACHED = True  # False: every start compiles the project (PYTHONDONTWRITEBYTECODE)


def serve_command(data_dir: Path, port: int, trace: Path | None = None) -> list[str]:
    """`dagnats serve` as the console script runs it (`dagnats.cli:main`), importing the code
    of this checkout (the working directory comes first on sys.path with -c); with `trace`,
    its start-up phases marked in that file (bench.startup_trace)."""
    serve = ["serve", "--data-dir", str(data_dir), "--nats-port", str(port), "--json"]
    if trace is not None:
        return [sys.executable, "-m", "bench.startup_trace", str(trace), "serve", *serve]
    return [sys.executable, "-c", "from dagnats.cli import main; main()", *serve]


def serve_env(root: Path) -> dict[str, str]:
    """serve's environment: its bytecode cached under `root` (see the module's docstring)."""
    if not BYTECODE_CACHED:
        return {}
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(root / "pycache")}


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def is_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


async def history_times(
    url: str, run_id: str, timeout_s: float, data_dir: Path, appends: list[tuple[float, str]]
) -> dict[str, float]:
    """Server timestamps (epoch s) of s5's result and the run's end, read from its history;
    every append's (timestamp, its events' tags) added to `appends`."""
    connection = await Connection.open(url, role="client", data_dir=data_dir)
    times: dict[str, float] = {}
    try:
        subscription = await connection.js.subscribe(
            history_subject(run_id), stream=HISTORY_STREAM, ordered_consumer=True
        )
        deadline = time.monotonic() + timeout_s
        while "done" not in times and (remaining := deadline - time.monotonic()) > 0:
            try:
                message = await subscription.next_msg(timeout=remaining)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            stored = message.metadata.timestamp.timestamp()
            events = codec.decode_decision(message.data).events
            appends.append((stored, " ".join(describe(event) for event in events)))
            for event in events:
                if isinstance(event, StepCompleted) and event.step_id == RECOVERY_BLOCKING_STEP:
                    times["s5_result"] = stored
                if isinstance(event, RunCompleted | RunFailed):
                    times["done"] = stored
                    times["failed"] = float(isinstance(event, RunFailed))
        await subscription.unsubscribe()
    finally:
        await connection.close()
    return times


def describe(event: object) -> str:
    """An event's type, with its step for a step's events."""
    step = getattr(event, "step_id", None)
    return type(event).__name__ + (f"({step})" if isinstance(step, str) else "")


async def scenario(trace: Path | None = None) -> dict[str, object]:
    """One kill-and-restart; the times (s, from the restart) and the calls per step. With
    `trace`, the restarted serve's and the worker's start-up phases are marked in that file
    and the result holds them, the appends and the calls, each as seconds from the restart."""
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-recovery-") as directory:
        root = Path(directory)
        data_dir, calls_dir = root / "data", root / "calls"
        calls_dir.mkdir()
        port = pick_free_port()
        serve = await Child.start(
            serve_command(data_dir, port), root / "serve-1.log", env=serve_env(root)
        )
        url = str(serve.ready["nats_url"])
        worker_args = ["worker", "--url", url, "--kind", "recovery", "--concurrency", "4"]
        worker_args += ["--data-dir", str(data_dir)]  # its credential (serve enforces roles)
        worker_command = procs_command(worker_args)
        if trace is not None:
            worker_command = [sys.executable, "-m", "bench.startup_trace", str(trace), "procs"]
            worker_command += worker_args
        worker = await Child.start(
            worker_command, root / "worker.log", env={RECOVERY_DIR_ENV: str(calls_dir)}
        )
        try:
            run_id = f"rec-{uuid.uuid4().hex[:8]}"
            client = await Connection.open(url, role="client", data_dir=data_dir)
            workflow = chain_workflow("bench-recovery", STEPS, RECOVERY_TASK)
            await publish_starts(client, workflow, [run_id])
            await client.close()

            async def blocking_step_running() -> bool:
                return any(step == RECOVERY_BLOCKING_STEP for step, _, _ in read_calls(calls_dir))

            await wait_until(blocking_step_running, STEP_WAIT_S, "s5 called", PROC_POLL_S)
            nats_pids = children_of(serve.pid)
            serve.process.send_signal(signal.SIGKILL)
            await serve.process.wait()

            async def nats_gone() -> bool:
                return not any(is_alive(pid) for pid in nats_pids)

            await wait_until(nats_gone, 10.0, "nats-server gone", PROC_POLL_S)
            (calls_dir / GO_FILE).touch()
            restarted_at = time.time()
            serve = await Child.start(
                serve_command(data_dir, port, trace), root / "serve-2.log", env=serve_env(root)
            )
            ready_s = time.time() - restarted_at
            appends: list[tuple[float, str]] = []
            times = await history_times(url, run_id, DONE_WAIT_S, data_dir, appends)
        finally:
            await worker.stop()
            await serve.stop()
        floor = await restart_floor(data_dir)
        all_calls = read_calls(calls_dir)  # (inside: the directory goes with the block)
    return summary(restarted_at, ready_s, times, appends, all_calls, floor)


def summary(
    restarted_at: float,
    ready_s: float,
    times: dict[str, float],
    appends: list[tuple[float, str]],
    all_calls: list[tuple[str, int, float]],
    floor: tuple[float, float, float],
) -> dict[str, object]:
    """A scenario's result (see `scenario`)."""
    calls = Counter(step for step, _, _ in all_calls)
    since = [(at - restarted_at, f"append {tags}") for at, tags in appends]
    since += [(at - restarted_at, f"call {step}") for step, _, at in all_calls]
    floor_s, floor_hop_ms, nats_restart_s = floor
    return {
        "since_restart": sorted((offset, what) for offset, what in since if offset >= 0),
        "restarted_at": restarted_at,
        "serve_ready_s": ready_s,
        "s5_result_s": times.get("s5_result", float("nan")) - restarted_at,
        "done_s": times.get("done", float("nan")) - restarted_at,
        "completed": "done" in times and not times.get("failed"),
        "steps_rerun": sum(count - 1 for count in calls.values() if count > 1),
        "steps_called": len(calls),
        "s5_calls": calls[RECOVERY_BLOCKING_STEP],
        "floor_s": floor_s,
        "floor_serial_ms_per_hop": floor_hop_ms,
        "nats_restart_s": nats_restart_s,
    }


async def restart_floor(data_dir: Path) -> tuple[float, float, float]:
    """A bare nats-server restart on the data dir, plus REMAINING_HOPS raw serial hops."""
    server = EmbeddedNats(data_dir)
    started = time.perf_counter()
    await server.start()
    nats_restart_s = time.perf_counter() - started
    try:
        client = await nats.connect(server.url)
        try:
            floor = await measure_floor(client, serial_hops=FLOOR_HOPS, batched_hops=FLOOR_HOPS)
        finally:
            await client.close()
    finally:
        await server.stop()
    hop_ms = floor["serial_ms_per_hop"]
    return nats_restart_s + REMAINING_HOPS * hop_ms / 1000, hop_ms, nats_restart_s


async def measure() -> dict[str, object]:
    default = await scenario()
    done_s = default["done_s"]
    floor_s = default["floor_s"]
    assert isinstance(done_s, float) and isinstance(floor_s, float)
    line: dict[str, object] = {
        "bench": "recovery",
        "value": rounded(done_s, 3),
        "unit": "s",
        "ratio": rounded(done_s / floor_s, 3),
        "ratio_of": "restart-to-done / (bare nats-server restart + 5 serial hops) "
        "(target < 0.5 s, 0 rerun)",
        "steps_rerun": default["steps_rerun"],
        "completed": default["completed"],
    }
    for key in ("serve_ready_s", "s5_result_s", "done_s", "steps_rerun", "completed"):
        value = default[key]
        line[key] = rounded(value, 3) if isinstance(value, float) else value
    line["nats_restart_s"] = rounded(float(str(default["nats_restart_s"])), 3)
    line["floor_s"] = rounded(floor_s, 3)
    line["floor_serial_ms_per_hop"] = rounded(float(str(default["floor_serial_ms_per_hop"])))
    return line


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
