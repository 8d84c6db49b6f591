"""What a (re)starting `dagnats serve` imports before its engine resumes runs (issue 14:
recovery), and that serve's HTTP API waits for the engine's first resume pass.

`dagnats serve` runs in an app of its own (`dagnats/cli/__init__.main`): it does not import
the other commands' modules (the client, the simulator, rich's progress bars). The engine's
modules do not import jsonschema (only a workflow with an `input_schema` needs it, imported at
its first check), the client package, the worker, nor the OpenTelemetry SDK. The input schema
is still checked when it is used (tests/test_admission_serve.py and test_bulk_start_e2e.py run
it end to end; the last test here checks it in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dagnats.cli import command_of
from dagnats.input_schema import input_errors
from dagnats.runtime import projector, serve_start
from dagnats.runtime.engine import Engine
from dagnats.runtime.serve import ServeEngine, Server
from kernel.workflow.parse import parse_workflow
from tests.nats_fixtures import wait_for

PROBE_TIMEOUT_S = 60.0  # a fresh interpreter on a loaded machine
RESUMED_WAIT_S = 30.0
NOT_ON_SERVE_PATH = (
    "jsonschema",
    "dagnats.client",
    "dagnats.worker",
    "dagnats.sim",
    "dagnats.cli.assembly",
    "rich.progress",
    "opentelemetry.sdk",
    "litestar",
    "sqlite_utils",  # the query tables: imported when the projections start (after resume)
)


def imported_after(code: str, names: tuple[str, ...]) -> dict[str, bool]:
    """Which of `names` a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\n"
    probe += f"print(json.dumps({{name: name in sys.modules for name in {names!r}}}))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, dict)
    return loaded


def test_the_engines_modules_leave_what_only_some_paths_need() -> None:
    loaded = imported_after("import dagnats.runtime.serve", NOT_ON_SERVE_PATH)
    assert not any(loaded.values()), loaded


def test_the_serve_command_leaves_the_other_commands_modules() -> None:
    # what `main()` imports for `dagnats serve`: the root options and the serve command
    code = "import dagnats.cli\nfrom dagnats.cli.root import new_app\nimport dagnats.cli.serve"
    loaded = imported_after(code, NOT_ON_SERVE_PATH)
    assert not any(loaded.values()), loaded


def test_the_whole_app_still_imports_every_command() -> None:
    # the other side of the checks above: the probe sees these modules when they are there
    loaded = imported_after("from dagnats.cli import app", ("dagnats.client", "dagnats.sim"))
    assert all(loaded.values()), loaded


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["serve", "--no-http"], "serve"),
        (["--creds", "serve", "serve"], "serve"),  # a value named like a command is a value
        (["--creds", "/tmp/x.creds", "run", "list"], "run"),
        (["--version"], None),
        ([], None),
        (["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "workflow", "serve"], "workflow"),
    ],
)
def test_the_command_is_the_first_word_past_the_root_options(
    args: list[str], command: str | None
) -> None:
    assert command_of(args) == command


def test_serve_with_the_root_options_runs_the_serve_command(tmp_path: Path) -> None:
    # `--creds X serve --help` reaches serve's own help through the serve-only app
    result = subprocess.run(
        [sys.executable, "-m", "dagnats.cli", "--creds", str(tmp_path / "c"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--no-http" in result.stdout and "--data-dir" in result.stdout, result.stdout


async def test_serve_says_when_its_engine_has_resumed_the_unfinished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, release = asyncio.Event(), asyncio.Event()
    real_resume, real_projections = Engine.resume_all, Server.start_projections
    started_when_released: list[bool] = []

    async def gated_resume(self: Engine) -> int:
        held.set()
        await release.wait()  # the resume pass is under way until the test releases it
        return await real_resume(self)

    def projections(self: Server, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        started_when_released.append(release.is_set())
        return real_projections(self, stop)

    monkeypatch.setattr(Engine, "resume_all", gated_resume)
    monkeypatch.setattr(Server, "start_projections", projections)
    server = Server(tmp_path / "data")
    sqlite = tmp_path / "data" / projector.SQLITE_FILE
    await server.start()
    assert isinstance(server.engine, ServeEngine)
    assert not server.resumed.is_set()  # nothing has run yet
    stop = asyncio.Event()
    running = asyncio.create_task(server.run(stop))
    try:
        await asyncio.wait_for(held.wait(), timeout=RESUMED_WAIT_S)
        for _ in range(20):  # the other parts' tasks get their turns
            await asyncio.sleep(0)
        assert not server.resumed.is_set() and not sqlite.exists(), "they wait for the resume"
        assert started_when_released == []
        release.set()
        await asyncio.wait_for(server.resumed.wait(), timeout=RESUMED_WAIT_S)
        assert not running.done()
        # then the query tables start (their file is created by the projections' start)
        await wait_for(sqlite.exists, timeout_ms=int(RESUMED_WAIT_S * 1000), what="the file")
        assert started_when_released == [True], started_when_released
    finally:
        release.set()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=RESUMED_WAIT_S)
        await server.stop()


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[asyncio.Task[None]]:
    """The started server's run in a task; stopped and awaited (bounded) at the end."""
    await server.start()
    stop = asyncio.Event()
    running = asyncio.create_task(server.run(stop))
    try:
        yield running
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=RESUMED_WAIT_S)
        await server.stop()


async def test_the_projections_modules_are_imported_off_the_engines_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite-utils' import on the loop held the engine's first steps after a restart back
    # (bench.recovery: 80-110 ms on the hop after the resume pass).
    order: list[str] = []
    real_import, real_projections = serve_start.import_projection_modules, Server.start_projections

    def recorded_import() -> None:
        on_main = threading.current_thread() is threading.main_thread()
        order.append("import on the loop's thread" if on_main else "import in a thread")
        real_import()

    def projections(self: Server, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        order.append("projections")
        return real_projections(self, stop)

    monkeypatch.setattr(serve_start, "import_projection_modules", recorded_import)
    monkeypatch.setattr(Server, "start_projections", projections)
    async with serving(Server(tmp_path / "data")):
        await wait_for(lambda: "projections" in order, timeout_ms=int(RESUMED_WAIT_S * 1000),
                       what="the projections' start")  # fmt: skip
        assert order == ["import in a thread", "projections"], order
        assert all(name in sys.modules for name in serve_start.PROJECTION_MODULES)


async def test_projections_whose_modules_do_not_import_are_said_and_the_engine_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ImportError("No module named 'sqlite_utils'")

    monkeypatch.setattr(serve_start, "import_projection_modules", broken)
    async with serving(Server(tmp_path / "data")) as running:
        await wait_for(lambda: "projections not started" in caplog.text,
                       timeout_ms=int(RESUMED_WAIT_S * 1000), what="the error line")  # fmt: skip
        assert "sqlite_utils" in caplog.text
        assert not running.done(), "serve (its engine) goes on"


def test_an_input_schema_is_checked_on_first_use() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    steps = [{"id": "a", "type": "task", "task": "t"}]
    document = {"name": "schema-checked", "version": "1", "steps": steps, "input_schema": schema}
    workflow = parse_workflow(json.dumps(document).encode())
    assert input_errors(workflow, b'{"n": 1}') == ()
    (error,) = input_errors(workflow, b'{"n": "x"}')
    assert error.startswith('$.n: "x"') and "integer" in error, error
