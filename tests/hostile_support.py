"""Shared parts of the hostile-input suite (tests/test_hostile_*.py).

`Stack` is one real `dagnats serve` (subprocess, embedded nats-server, temporary data dir) and
one real worker (`dagnats worker tests.fault_workers:worker`), started once per test module,
with the workflows the cases use registered and a healthy run started at once: it waits on a
signal, and the module's last test sends it and checks the run completes (the hostile cases
in between must not stop it). CLI cases run in-process through typer's CliRunner (the same
code and output as the console script) or as real subprocesses; `one_line_error` checks
the exit code, that the error is one readable `error:` line (plus at most a `hint:`
line) naming what it must, and that no traceback was printed.

This module starts and kills only the processes it started (by pid, via `Processes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from typer.testing import CliRunner

from dagnats.cli import app
from dagnats.client import Client
from kernel.state import RunState
from tests.fault_support import Processes, Serve, connected, workflow

cli_timeout_s: Final = 60.0
run_wait_s: Final = 30.0
HEALTHY_SIGNAL: Final = "go"


class Stack:
    """A live serve + worker, its URL and data dir, and the ids the cases refer to."""

    def __init__(self, procs: Processes, serve: Serve, data_dir: Path, files: Path) -> None:
        self.procs = procs
        self.serve = serve
        self.url = serve.url
        self.data_dir = data_dir
        self.files = files
        self.healthy_run = "healthy-run"
        self.runner = CliRunner()

    def env(self) -> dict[str, str]:
        return {"DAGNATS_NATS_URL": self.url, "DAGNATS_DATA_DIR": str(self.data_dir)}

    def cli(self, *args: str) -> Result:
        """One `dagnats` command in-process (CliRunner): exit code, stdout, stderr."""
        result = self.runner.invoke(app, list(args), env=self.env())
        exception = result.exception
        assert exception is None or isinstance(exception, SystemExit), (
            f"dagnats {' '.join(args)} raised {exception!r}"
        )
        return Result(result.exit_code, result.stdout, result.stderr)

    def cli_process(self, *args: str) -> Result:
        """One `dagnats` command as a real subprocess (the console script)."""
        completed = self.procs.cli(
            *args, "--nats-url", self.url, timeout_s=cli_timeout_s
        )  # fmt: skip
        return Result(completed.returncode, completed.stdout, completed.stderr)

    def file(self, name: str, data: bytes) -> Path:
        path = self.files / name
        path.write_bytes(data)
        return path

    def run(self, coroutine_function: Any) -> Any:
        """Run `coroutine_function(client)` with a fresh Client (sync tests)."""

        async def main() -> Any:
            async with connected(self.url) as client:
                return await coroutine_function(client)

        return asyncio.run(main())


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def problems_error(result: Result, *needles: str) -> None:
    """Assert a refused workflow file: exit 1, problem lines then one `error:` line, each
    needle in a problem line, no traceback."""
    assert result.code == 1, result
    assert "Traceback" not in result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert sum(line.startswith("error:") for line in lines) == 1, result
    problems = [line for line in lines if line.startswith("  ")]
    assert problems, result
    for needle in needles:
        assert any(needle in line for line in problems), (needle, result)


def one_line_error(result: Result, code: int, *needles: str) -> str:
    """Assert a refused command: exit `code`, one `error:` line naming each needle (and at
    most one `hint:` line), no traceback; returns the error line."""
    assert result.code == code, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result
    assert lines[0] == errors[0], result  # the error comes first
    extra = [line for line in lines[1:] if not line.startswith("hint:")]
    assert extra == [], result
    for needle in needles:
        assert needle in errors[0], (needle, result)
    return errors[0]


SIMPLE_STEPS: Final[list[dict[str, Any]]] = [{"id": "one", "task": "fault.work"}]
HEALTHY_STEPS: Final[list[dict[str, Any]]] = [
    {"id": "first", "task": "fault.work"},
    {"id": "hold", "type": "wait_signal", "depends_on": ["first"],
     "config": {"signal": HEALTHY_SIGNAL}},
    {"id": "last", "task": "fault.other", "depends_on": ["hold"]},
]  # fmt: skip
APPROVAL_STEPS: Final[list[dict[str, Any]]] = [
    {"id": "gate", "type": "approval", "config": {"question": "Ship it?"}},
]
SIGNAL_STEPS: Final[list[dict[str, Any]]] = [
    {"id": "hold", "type": "wait_signal", "config": {"signal": HEALTHY_SIGNAL}},
]
WORKFLOWS: Final[dict[str, list[dict[str, Any]]]] = {
    "hostile-simple": SIMPLE_STEPS,
    "hostile-healthy": HEALTHY_STEPS,
    "hostile-approval": APPROVAL_STEPS,
    "hostile-signal": SIGNAL_STEPS,
}


async def start_stack(procs: Processes, base: Path) -> Stack:
    data_dir = base / "data"
    files = base / "files"
    files.mkdir()
    serve = await procs.serve(data_dir)
    procs.cli_worker(serve.url)
    stack = Stack(procs, serve, data_dir, files)
    async with connected(serve.url) as client:
        for name, steps in WORKFLOWS.items():
            await client.register_workflow(workflow(name, steps))
        await client.start("hostile-healthy", {"n": 1}, run_id=stack.healthy_run)
        await client.start("hostile-approval", None, run_id="approval-run")
        await client.start("hostile-signal", None, run_id="signal-run")
        await client.start("hostile-simple", {"n": 2}, run_id="done-run")
        done = await client.wait("done-run", timeout_s=run_wait_s)
        assert done.status == "completed", done
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One serve + worker for the whole module (killed at its end)."""
    base = tmp_path_factory.mktemp("hostile")
    procs = Processes(base)
    try:
        yield asyncio.run(start_stack(procs, base))
    finally:
        asyncio.run(procs.close())


def probe(stack: Stack) -> None:
    """The engine and worker still serve: a fresh one-step run completes."""

    async def action(client: Client) -> RunState:
        run_id = await client.start("hostile-simple", {"probe": True})
        return await client.wait(run_id, timeout_s=run_wait_s)

    state = stack.run(action)
    assert state.status == "completed", state


def finish_healthy_run(stack: Stack) -> None:
    """Signal the healthy run (started before every case) and check it completes."""

    async def action(client: Client) -> RunState:
        before = await client.get_run(stack.healthy_run)
        assert before.status == "running", before
        assert [s.status for s in before.steps][:1] == ["completed"], before.steps
        await client.signal(stack.healthy_run, HEALTHY_SIGNAL, {"ok": True})
        return await client.wait(stack.healthy_run, timeout_s=run_wait_s)

    state = stack.run(action)
    assert state.status == "completed", state
    assert [(s.step_id, s.status) for s in state.steps] == [
        ("first", "completed"), ("hold", "completed"), ("last", "completed")
    ]  # fmt: skip


__all__ = [
    "Result",
    "Stack",
    "finish_healthy_run",
    "one_line_error",
    "probe",
    "problems_error",
    "stack",
    "start_stack",
]
