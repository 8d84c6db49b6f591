"""Helpers of the fault tests (tests/test_faults.py): real processes, killed for real.

`Processes` starts `dagnats serve` and worker subprocesses with their output in files under
the test's tmp_path, reads serve's ready JSON line with a bounded wait, finds serve's
nats-server child, SIGKILLs what a test asks, and at teardown kills whatever it started (by
pid, never by name) and prints the tail of every output file (pytest shows it when a test
fails). The history helpers fold and count a run's events; `read_dead` reads the dead letters
back. Every wait is bounded and says what it waited for.

This module may start, signal and wait for the processes it started, and read and write
under the test's tmp_path; it never touches a process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest_asyncio
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.resources import DEAD_REASON_HEADER, DEAD_STREAM
from dagnats.runtime.roles import Role
from kernel.events import AnyEvent, Decision, event_tag
from tests.fault_workers import CALLS_ENV, GATES_ENV
from tests.nats_fixtures import wait_for

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
serve_ready_timeout_ms: Final = 20_000
process_exit_timeout_ms: Final = 10_000
client_close_timeout_s: Final = 5.0
tail_lines: Final = 40
dead_letters_read_max: Final = 10_000


def dagnats_command() -> list[str]:
    """The `dagnats` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "dagnats"
    if script.exists():
        return [str(script)]
    found = shutil.which("dagnats")
    assert found is not None, "the `dagnats` console script is not installed"
    return [found]


def process_is_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def children_named(parent_pid: int, name: str) -> list[int]:
    """Pids of the live processes called `name` whose parent is parent_pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if command == name[:15] and int(fields[1]) == parent_pid and fields[0] not in "ZX":
            found.append(int(entry.name))
    return found


class Process:
    """A subprocess started by a test, its stdout and stderr in files."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], out_dir: Path):
        self.name = name
        self.argv = list(argv)
        self.stdout_path = out_dir / f"{name}.out"
        self.stderr_path = out_dir / f"{name}.err"
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # a signal to the test's group does not reach it
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self, lines: int = tail_lines) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    async def wait_exit(self, timeout_ms: int = process_exit_timeout_ms) -> int:
        """The exit code, waiting at most timeout_ms (fails the test with the tails)."""
        await wait_for(
            lambda: not self.alive(),
            timeout_ms=timeout_ms,
            what=f"{self.name} (pid {self.pid}) to exit (its output is printed below)",
        )
        code = self.popen.returncode
        assert code is not None
        return code

    async def kill(self) -> None:
        """SIGKILL, then reap it (bounded)."""
        was_alive = self.alive()
        if was_alive:
            os.kill(self.pid, signal.SIGKILL)
        code = await self.wait_exit()
        assert not was_alive or code == -signal.SIGKILL, f"{self.name} exited with {code}"

    async def terminate(self, timeout_ms: int = process_exit_timeout_ms) -> int:
        """SIGTERM and wait for a clean exit (bounded)."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        return await self.wait_exit(timeout_ms)


class Serve:
    """A `dagnats serve` subprocess and what its ready line said."""

    def __init__(self, process: Process, info: dict[str, Any]) -> None:
        self.process = process
        self.info = info
        self.url: str = info["nats_url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.http_url: str = info.get("http_url", "")  # the HTTP API's, "" without one

    def nats_pid(self) -> int:
        """The pid of the embedded nats-server child (exactly one)."""
        pids = children_named(self.process.pid, "nats-server")
        assert len(pids) == 1, f"serve {self.process.pid} has nats-server children {pids}"
        return pids[0]


class Processes:
    """The processes of one test; all killed at the end, their output tails printed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.out_dir = tmp_path / "output"
        self.out_dir.mkdir(exist_ok=True)
        self.calls_path = tmp_path / "calls.jsonl"
        self.gates_dir = tmp_path / "gates"
        self.gates_dir.mkdir(exist_ok=True)
        self.started: list[Process] = []
        self._names: Counter[str] = Counter()
        self.data_dir: Path | None = None  # the last serve's: its credentials (runtime/roles)
        self.extra_env: dict[str, str] = {}  # more environment for the processes started next

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGNATS_")}
        env.update(self.extra_env)
        pythonpath = [str(REPO_ROOT), env.get("PYTHONPATH", "")]
        env.update(
            PYTHONPATH=os.pathsep.join(part for part in pythonpath if part),
            PYTHONUNBUFFERED="1",
            DAGNATS_DATA_DIR=str(self.data_dir or self.tmp_path / "default-data-dir"),
        )
        env[CALLS_ENV] = str(self.calls_path)
        env[GATES_ENV] = str(self.gates_dir)
        return env

    def start(self, name: str, argv: Sequence[str]) -> Process:
        self._names[name] += 1
        unique_name = f"{name}-{self._names[name]}"
        process = Process(unique_name, argv, self.env(), self.out_dir)
        self.started.append(process)
        return process

    async def serve(
        self, data_dir: Path, *, port: int = 0, nats_url: str | None = None,
        http: str | None = "127.0.0.1:0", extra_args: Sequence[str] = (),
    ) -> Serve:  # fmt: skip
        """Start `dagnats serve --json` and wait (bounded) for its ready line. Its HTTP API
        on a free loopback port by default (`http=None`: `--no-http`)."""
        argv = [*dagnats_command(), "serve", "--data-dir", str(data_dir), "--json"]
        argv += ["--nats-port", str(port)] if nats_url is None else ["--nats-url", nats_url]
        argv += ["--no-http"] if http is None else ["--http", http]
        argv += list(extra_args)
        process = self.start("serve", argv)
        info: dict[str, Any] = {}

        def ready() -> bool:
            assert process.alive(), f"serve exited with {process.popen.returncode}\n" + (
                process.tail()
            )
            first, newline, _ = process.stdout().partition("\n")
            if not newline:
                return False
            info.update(json.loads(first))
            return True

        await wait_for(ready, timeout_ms=serve_ready_timeout_ms, what="serve's ready JSON line")
        assert info["nats_url"].startswith("nats://127.0.0.1:"), info
        if nats_url is None:  # its credentials: for this process's clients and later children
            self.data_dir = data_dir
            credentials.register_local_server(info["nats_url"], data_dir)
        serve = Serve(process, info)
        if nats_url is None:
            assert info["embedded"] is True and info["data_dir"] == str(data_dir), info
        else:
            assert info["embedded"] is False and info["nats_url"] == nats_url, info
        return serve

    def worker(
        self, url: str, *, ack_wait_ms: int = 30_000, heartbeat_ms: int = 1_000,
        js_timeout_s: float | None = None,
    ) -> tuple[Process, Path]:  # fmt: skip
        """A worker of tests.fault_workers with the given heartbeat timeout (and JetStream
        publish timeout); returns it and its connection events file."""
        self._names["worker-events"] += 1
        events = self.tmp_path / f"worker-events-{self._names['worker-events']}.txt"
        argv = [
            sys.executable, "-m", "tests.fault_workers", "--nats-url", url,
            "--ack-wait-ms", str(ack_wait_ms), "--heartbeat-ms", str(heartbeat_ms),
            "--events-file", str(events),
        ]  # fmt: skip
        if js_timeout_s is not None:
            argv += ["--js-timeout-s", str(js_timeout_s)]
        return self.start("worker", argv), events

    def cli_worker(self, url: str, *, heartbeat_timeout_s: float | None = None) -> Process:
        """`dagnats worker tests.fault_workers:worker` (the CLI's own worker command), with
        `--heartbeat-timeout` when given."""
        argv = [*dagnats_command(), "worker", _WORKER_SPEC, "--nats-url", url]
        if heartbeat_timeout_s is not None:
            argv += ["--heartbeat-timeout", str(heartbeat_timeout_s)]
        return self.start("cli-worker", argv)

    def cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run one `dagnats` command to its end (bounded), capturing its output."""
        return subprocess.run(
            [*dagnats_command(), *args],
            cwd=REPO_ROOT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def open_gate(self, name: str) -> None:
        (self.gates_dir / name).touch()

    def calls(self) -> list[dict[str, Any]]:
        """Every handler call so far, in the order they were recorded."""
        if not self.calls_path.exists():
            return []
        lines = self.calls_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def calls_of(self, run_id: str, step_id: str) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c["run"] == run_id and c["step"] == step_id]

    def report(self) -> str:
        return "\n".join(
            f"=== {p.name} pid {p.pid} argv {p.argv}\n{p.tail()}" for p in self.started
        )

    async def close(self) -> None:
        """Kill every started process still alive (by its pid), reap each, print tails."""
        for process in self.started:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + process_exit_timeout_ms / 1000
        for process in self.started:
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=remaining)
        print(self.report())


_WORKER_SPEC: Final = "tests.fault_workers:worker"


@contextlib.asynccontextmanager
async def connected(url: str, role: Role = "client") -> AsyncIterator[Client]:
    """A Client (in `role`) for the duration of a block, closed with a bound."""
    client = await asyncio.wait_for(Client.connect(url, role=role), timeout=client_close_timeout_s)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout=client_close_timeout_s)


# -- workflows and histories ----------------------------------------------------------------


def workflow(name: str, steps: list[dict[str, Any]], **fields: Any) -> bytes:
    """A workflow document (JSON bytes) of `steps`."""
    return json.dumps({"name": name, "version": "1", "steps": steps, **fields}).encode()


async def decisions_of(client: Client, run_id: str) -> list[Decision]:
    return [decision async for _, decision in client.history(run_id)]


def events_of(decisions: Sequence[Decision]) -> list[AnyEvent]:
    return [event for decision in decisions for event in decision.events]


def count_events(events: Sequence[AnyEvent], tag: str) -> Counter[str]:
    """How many events of `tag` each step has ("" for run-level events)."""
    counts: Counter[str] = Counter()
    for event in events:
        if event_tag(type(event)) == tag:
            counts[str(getattr(event, "step_id", ""))] += 1
    return counts


def attempts_started(events: Sequence[AnyEvent], step_id: str) -> set[int]:
    """The attempts of a step that history shows scheduled or started."""
    return {
        int(getattr(event, "attempt", 0))
        for event in events
        if event_tag(type(event)) in ("step.scheduled", "step.started")
        and getattr(event, "step_id", None) == step_id
    }


def has_event(events: Sequence[AnyEvent], tag: str, step_id: str, attempt: int = 0) -> bool:
    return any(
        event_tag(type(event)) == tag
        and getattr(event, "step_id", None) == step_id
        and (attempt == 0 or getattr(event, "attempt", None) == attempt)
        for event in events
    )


class DeadLetter(msgspec.Struct, frozen=True):
    subject: str
    data: bytes
    reason: str


async def read_dead(js: JetStreamContext) -> list[DeadLetter]:
    """Every message of the dead-letter stream, in order, with its reason header."""
    info = await js.stream_info(DEAD_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    assert last - first < dead_letters_read_max, (first, last)
    letters = []
    for seq in range(max(first, 1), last + 1):
        message = await js.get_msg(DEAD_STREAM, seq)
        headers = message.headers or {}
        assert message.subject is not None and message.data is not None
        letters.append(
            DeadLetter(message.subject, message.data, headers.get(DEAD_REASON_HEADER, ""))
        )
    return letters


def role_options(data_dir: Path, role: Role = "admin") -> dict[str, Any]:
    """nats.connect options authenticating as `role` of a serve's data dir (tests that forge
    messages connect as admin: the server refuses anyone else)."""
    options = credentials.connect_options("nats://127.0.0.1", role=role, data_dir=data_dir)
    options.pop("credential", None)
    return options


@pytest_asyncio.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    """Real `dagnats serve`/worker/CLI processes of one test, all killed after it (tests use it
    through tests/conftest.py; a test module may define its own `procs` instead)."""
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        await processes.close()


@pytest_asyncio.fixture
async def processes(procs: Processes) -> Processes:
    """`procs` under the other name some test modules use."""
    return procs
