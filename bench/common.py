"""What the benches share: a server in a temporary directory, engine and worker processes,
workflows, starting runs, watching them end, and the one JSON line each bench prints.

The engine and the workers run in processes of their own (`bench.procs`), as they do in a
deployment, so a bench measures them and not its own bookkeeping; the bench process only
publishes commands and watches history with a core NATS subscription on `dagnats.history.>`
(every appended message passes through it; nothing is read back from the stream).

This module may start processes, create temporary directories, and publish to the commands
stream; it never writes history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bench.floor import measure_floor
from bench.metrics import CpuMeter, JsMeter
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources
from kernel import codec
from kernel.commands import StartRun
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Workflow

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
HISTORY_WILDCARD: Final = "dagnats.history.>"
TERMINAL_MARKERS: Final = (
    (b'"run.completed"', "completed"),
    (b'"run.failed"', "failed"),
    (b'"run.cancelled"', "cancelled"),
)
CHILD_READY_TIMEOUT_S: Final = 30.0
CHILD_STOP_TIMEOUT_S: Final = 15.0
START_PUBLISH_CONCURRENCY: Final = 256


def emit(line: Mapping[str, object]) -> None:
    """Print the bench's one JSON line on stdout."""
    assert {"bench", "value", "unit", "ratio"} <= set(line), f"missing keys in {line}"
    print(json.dumps(line, separators=(",", ":")), flush=True)


def rounded(value: float, digits: int = 4) -> float:
    return round(value, digits)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` (0..1) of the sorted values (nearest rank)."""
    assert values, "no values"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# -- workflows ---------------------------------------------------------------------------


def chain_workflow(name: str, steps: int, task: str) -> WorkflowDef:
    """s0 -> s1 -> ... -> s<steps-1>, every step a `task` step of type `task`."""
    builder = Workflow(name)
    for index in range(steps):
        depends = [f"s{index - 1}"] if index else []
        builder = builder.task(f"s{index}", task=task, depends_on=depends)
    return builder.build()


def fanout_workflow(name: str, width: int, task: str) -> WorkflowDef:
    """`width` independent steps p000.., then `join` depending on all of them."""
    builder = Workflow(name)
    parallel = [f"p{index:03d}" for index in range(width)]
    for step_id in parallel:
        builder = builder.task(step_id, task=task)
    return builder.task("join", task=task, depends_on=parallel).build()


def start_command(run_id: str, workflow: WorkflowDef, input_value: object = None) -> bytes:
    """The encoded StartRun command of a run, as `Client.start` builds it."""
    command = StartRun(
        run_id=run_id,
        at_ms=now_ms(),
        seed=new_seed(),
        workflow=workflow,
        input=msgspec.Raw(msgspec.json.encode(input_value)),
    )
    return codec.encode(command)


async def publish_starts(
    connection: Connection, workflow: WorkflowDef, run_ids: Sequence[str]
) -> None:
    """Publish the StartRun of every run, START_PUBLISH_CONCURRENCY awaited at a time."""
    for first in range(0, len(run_ids), START_PUBLISH_CONCURRENCY):
        chunk = run_ids[first : first + START_PUBLISH_CONCURRENCY]
        await asyncio.gather(
            *(
                connection.commands.publish_command(
                    run_id, start_command(run_id, workflow), f"start:{run_id}"
                )
                for run_id in chunk
            )
        )


# -- the server ---------------------------------------------------------------------------


@dataclass
class BenchServer:
    """An embedded nats-server with DagNats' resources, and one connection to it."""

    data_dir: Path
    nats: EmbeddedNats
    connection: Connection
    children: list[Child] = field(default_factory=list)
    roles: dict[str, int] = field(default_factory=dict)  # process name -> pid, for metering

    def metered(self) -> Metered:
        """CPU (this server, its engine and workers, this process) and JetStream counters
        per step (`bench.metrics`) of what runs between `start()` and `per_step()`."""
        assert self.nats.pid is not None
        pids = {"nats_server": self.nats.pid, **self.roles, "client": os.getpid()}
        return Metered(CpuMeter(pids), JsMeter(self.connection.js))

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def nc(self) -> NatsClient:
        return self.connection.nc

    async def floor(self) -> dict[str, float]:
        """The raw JetStream hop on this server (`bench.floor.measure_floor`)."""
        return await measure_floor(self.nc)

    async def engine(self, *, profile: Path | None = None) -> Child:
        """An engine process (`bench.procs engine`) on this server, without projections (the
        engine-only microbenches; `bench.throughput` and `bench.chain` run `dagnats serve`)."""
        arguments = ["engine", "--url", self.url]
        if profile is not None:
            arguments += ["--profile", str(profile)]
        child = await Child.start(procs_command(arguments), self.data_dir / "engine.log")
        self.children.append(child)
        self.roles["engine"] = child.pid
        return child

    async def worker(
        self,
        *,
        concurrency: int,
        kind: str = "noop",
        report_started: bool | None = None,
        profile: Path | None = None,
    ) -> Child:
        """A worker process (`bench.procs worker`) on this server."""
        arguments = ["worker", "--url", self.url, "--kind", kind]
        arguments += ["--concurrency", str(concurrency)]
        if report_started is not None:
            arguments += ["--report-started", "yes" if report_started else "no"]
        if profile is not None:
            arguments += ["--profile", str(profile)]
        log = self.data_dir / f"worker-{len(self.children)}.log"
        child = await Child.start(procs_command(arguments), log)
        self.children.append(child)
        self.roles[f"worker{sum(name.startswith('worker') for name in self.roles) or ''}"] = (
            child.pid
        )
        return child


class Metered:
    """CPU per step of named processes and JetStream counters per step, over one workload."""

    def __init__(self, cpu: CpuMeter, js: JsMeter) -> None:
        self.cpu, self.js = cpu, js

    async def start(self) -> None:
        await self.js.start()
        self.cpu.start()

    async def per_step(self, steps: int) -> dict[str, object]:
        cpu = self.cpu.per_step(steps)
        return {"cpu_ms_per_step": cpu, **await self.js.per_step(steps)}


@contextlib.asynccontextmanager
async def bench_server(name: str) -> AsyncIterator[BenchServer]:
    """Start a nats-server in a temporary directory, create the resources, connect; on exit
    stop every child process started through it, then the server."""
    with tempfile.TemporaryDirectory(prefix=f"dagnats-bench-{name}-") as directory:
        server = EmbeddedNats(directory)
        await server.start()
        try:
            connection = Connection(await nats.connect(server.url))
            try:
                await ensure_resources(connection.js)
                bench = BenchServer(Path(directory), server, connection)
                try:
                    yield bench
                finally:
                    for child in reversed(bench.children):
                        await child.stop()
            finally:
                await connection.close()
        finally:
            await server.stop()


# -- child processes ----------------------------------------------------------------------


def procs_command(arguments: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "bench.procs", *arguments]


class ChildError(RuntimeError):
    """A child process did not start, answer or stop as expected."""


class Child:
    """A process that prints JSON lines on stdout (a ready line first); stderr to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.ready: dict[str, object] = {}
        self.last_stats: dict[str, object] = {}
        self.started_at = time.perf_counter()

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = CHILD_READY_TIMEOUT_S,
    ) -> Child:
        """Start `command` and wait for its first JSON line on stdout.

        Raises:
            ChildError: it exited or printed nothing within ready_timeout_s.
        """
        started = time.perf_counter()
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        child = cls(process, log_path)
        child.started_at = started
        child.ready = await child.next_line(ready_timeout_s)
        return child

    async def next_line(self, timeout_s: float) -> dict[str, object]:
        """The next JSON object the child prints.

        Raises:
            ChildError: it exited, or printed nothing within timeout_s.
        """
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        except TimeoutError:
            raise ChildError(f"{self.describe()} printed nothing in {timeout_s}s") from None
        if not line:
            raise ChildError(f"{self.describe()} exited: {self.log_tail()}")
        value = json.loads(line)
        assert isinstance(value, dict), line
        return value

    async def stats(self, timeout_s: float = 10.0) -> dict[str, object]:
        """Ask for a stats line (SIGUSR1) and return it."""
        self.process.send_signal(signal.SIGUSR1)
        while True:
            line = await self.next_line(timeout_s)
            if line.get("kind") == "stats":
                self.last_stats = line
                return line

    async def stop(self, timeout_s: float = CHILD_STOP_TIMEOUT_S) -> dict[str, object]:
        """SIGTERM, then read lines until it exits (the last stats line is kept); SIGKILL
        after timeout_s."""
        if self.process.returncode is not None:
            return self.last_stats
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            except TimeoutError:
                break
            if not line:
                break
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict) and value.get("kind") == "stats":
                    self.last_stats = value
        if self.process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), max(0.1, deadline - time.monotonic()))
        if self.process.returncode is None:
            self.kill()
            await self.process.wait()
        return self.last_stats

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def describe(self) -> str:
        return f"child pid {self.process.pid} (log {self.log_path})"

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


# -- watching runs end --------------------------------------------------------------------


class RunWatcher:
    """Sees every history append (core subscription) and notes when runs end."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.appends = 0
        self.ended: dict[str, tuple[str, float]] = {}
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._first_appends: dict[str, asyncio.Future[None]] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(
            HISTORY_WILDCARD, cb=self._on_message, pending_msgs_limit=1_000_000
        )
        await self.nc.flush()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_message(self, message: Msg) -> None:
        self.appends += 1
        data = message.data
        if self._first_appends:
            first = self._first_appends.pop(message.subject.rsplit(".", 1)[-1], None)
            if first is not None and not first.done():
                first.set_result(None)
        for marker, status in TERMINAL_MARKERS:
            if marker in data:
                run_id = message.subject.rsplit(".", 1)[-1]
                if run_id not in self.ended:
                    self.ended[run_id] = (status, time.perf_counter())
                future = self._waiting.pop(run_id, None)
                if future is not None and not future.done():
                    future.set_result(status)
                return

    def expect_append(self, run_id: str) -> asyncio.Future[None]:
        """A future set at the run's next history append (create before it can happen)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first_appends[run_id] = future
        return future

    def expect(self, run_id: str) -> asyncio.Future[str]:
        """A future set to the run's final status when it ends (create before starting)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        ended = self.ended.get(run_id)
        if ended is not None:
            future.set_result(ended[0])
        else:
            self._waiting[run_id] = future
        return future

    async def wait_all(self, futures: Sequence[asyncio.Future[str]], timeout_s: float) -> None:
        """Wait until every future is set.

        Raises:
            TimeoutError: some runs did not end within timeout_s (the message says how many).
        """
        if not futures:
            return
        _, pending = await asyncio.wait(futures, timeout=timeout_s)
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futures)} runs did not end in {timeout_s}s")


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.1
) -> float:
    """Poll `condition` until true; returns the seconds it took.

    Raises:
        TimeoutError: not true within timeout_s (naming `what`).
    """
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started


def floor_fields(floor: Mapping[str, float]) -> dict[str, float]:
    """The floor's numbers as they go into a bench's JSON line."""
    return {
        "floor_serial_ms_per_hop": rounded(floor["serial_ms_per_hop"]),
        "floor_serial_hops_per_s": rounded(floor["serial_hops_per_s"], 1),
        "floor_batched_hops_per_s": rounded(floor["batched_hops_per_s"], 1),
    }
