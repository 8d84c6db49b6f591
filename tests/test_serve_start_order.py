"""`dagnats serve`'s start order (issue 14: recovery): the engine first, the HTTP API after.

Serve checks `--http` and the API token before anything starts, without importing the HTTP
framework (Litestar, uvicorn, Jinja2): those are imported, in a thread, once the engine runs.
An explicit `--http` address that cannot be bound still ends serve with one clear line, and
the engine already started for it is stopped: no ready line, the data dir released.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dagnats.api.checks import HEARTBEAT_ENV
from dagnats.cli import serve as cli_serve
from dagnats.runtime.nats_server import LOCK_FILE_NAME, NatsServerError
from kernel.errors import DagnatsError

HTTP_MODULES = ("litestar", "uvicorn", "jinja2")
SERVE_EXIT_TIMEOUT_S = 60.0  # a loaded machine starts nats-server and the engine slowly


def imported_after(code: str) -> dict[str, bool]:
    """Which of HTTP_MODULES (and dagnats.client) a fresh interpreter holds after `code`."""
    probe = f"{code}\nimport json, sys\n"
    probe += "names = (*" + repr(HTTP_MODULES) + ", 'dagnats.client')\n"
    probe += "print(json.dumps({name: name in sys.modules for name in names}))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, dict)
    return loaded


def test_serve_checks_its_http_options_without_importing_the_http_framework() -> None:
    code = (
        "from dagnats.cli import serve\n"
        "assert serve._http_checks(None, False, None) is None\n"
        "assert serve._http_checks('127.0.0.1:0', False, None) is None\n"
    )
    loaded = imported_after(code)
    assert not any(loaded[name] for name in HTTP_MODULES), loaded


def test_the_api_module_does_import_the_http_framework() -> None:
    # the other side of the check above: the probe sees these modules when they are there
    loaded = imported_after(f"import {'dagnats.api.serving'}")
    assert all(loaded[name] for name in HTTP_MODULES), loaded


def test_importing_dagnats_imports_its_public_names_on_first_use() -> None:
    assert imported_after("import dagnats")["dagnats.client"] is False
    code = "import dagnats\nfrom dagnats import Client, Worker, Workflow\nassert Client.connect"
    assert imported_after(code)["dagnats.client"] is True


def test_an_explicit_http_address_taken_ends_serve_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "dagnats.cli", "serve", "--data-dir", str(data_dir)]
        command += ["--http", f"127.0.0.1:{port}", "--json"]
        result = subprocess.run(
            command, check=False, capture_output=True, text=True,
            timeout=SERVE_EXIT_TIMEOUT_S,
            env={**os.environ, "DAGNATS_DATA_DIR": str(data_dir)},
        )  # fmt: skip
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert f"127.0.0.1:{port} cannot be bound" in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip() == "", result.stdout  # never said "ready"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(said) <= 2 and said[0].startswith("error:"), result.stderr[-2000:]  # one line
    assert not (data_dir / "nats.url").exists()  # serve stopped its nats-server and cleaned up
    with (data_dir / LOCK_FILE_NAME).open("a+") as lock:  # and released the data dir
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_bad_bridge_heartbeat_timeout_ends_serve_before_anything_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "dagnats.cli", "serve", "--data-dir", str(data_dir)]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=SERVE_EXIT_TIMEOUT_S,
        env={**os.environ, HEARTBEAT_ENV: "0.1", "DAGNATS_DATA_DIR": str(data_dir)},
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert HEARTBEAT_ENV in errors[0] and "'0.1'" in errors[0] and "0.5..3600" in errors[0]
    assert not (data_dir / "nats.url").exists(), "nats-server was never started"


class EngineFailsWhileResuming:
    """The part of `Server` that serve's start order uses; its engine fails before resuming."""

    def __init__(self) -> None:
        self.resumed = asyncio.Event()  # never set: the engine fails first
        self.stopped = False

    async def start(self) -> object:
        return object()

    async def run(self, stop: asyncio.Event) -> None:
        raise NatsServerError("nats-server went away while resuming", hint="look at its log")

    async def stop(self) -> None:
        self.stopped = True


async def test_an_engine_that_fails_while_resuming_says_its_own_error_not_the_apis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started_api: list[object] = []

    async def start_api(*args: object) -> None:
        started_api.append(args)
        raise DagnatsError("the API cannot connect: the engine's error is the one to say")

    monkeypatch.setattr(cli_serve, "_start_api", start_api)
    server = EngineFailsWhileResuming()
    with pytest.raises(NatsServerError, match="went away while resuming"):
        await asyncio.wait_for(
            cli_serve._serve(server, None, False, None, False, None, False),  # type: ignore[arg-type]
            SERVE_EXIT_TIMEOUT_S,
        )
    assert started_api == [], "no API started after the engine ended"
    assert server.stopped
