"""Under `python -O` (or PYTHONOPTIMIZE) every `assert` vanishes, and with them the engine's
safety (a failed assertion parks one run): `dagnats serve`, `dagnats worker`, the `Engine` and
the `Worker` refuse to start, with one error line and the hint to run without -O."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from dagnats.runtime.assertions import (
    OPTIMIZE_HINT,
    AssertionsDisabledError,
    require_assertions,
)

ROOT: Final = Path(__file__).resolve().parent.parent
subprocess_timeout_s: Final = 60.0
# Each script prints the refusal it got (message | hint), or "started" when none came.
ENGINE_SCRIPT: Final = """
from dagnats.runtime.assertions import AssertionsDisabledError
from dagnats.runtime.engine import Engine
try:
    Engine(None, None, None, None)
except AssertionsDisabledError as error:
    print(f"{error} | {error.hint}")
else:
    print("started")
"""
WORKER_SCRIPT: Final = """
import asyncio
from dagnats import Worker
from dagnats.runtime.assertions import AssertionsDisabledError
try:
    asyncio.run(Worker().serve(None, None, None, asyncio.Event()))
except AssertionsDisabledError as error:
    print(f"{error} | {error.hint}")
else:
    print("started")
"""


def _run(
    arguments: list[str], optimize: str | None, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONOPTIMIZE"}
    env["HOME"] = str(tmp_path)  # nothing may touch ~/.dagnats
    if optimize is not None:
        env["PYTHONOPTIMIZE"] = optimize
    return subprocess.run(
        arguments, cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=subprocess_timeout_s, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["-O", "PYTHONOPTIMIZE=1"])
@pytest.mark.parametrize(
    ("command", "who"),
    [
        (["serve", "--nats-port", "0"], "dagnats serve"),
        (["worker", "examples.order.worker:worker"], "dagnats worker"),
    ],
)
def test_the_command_refuses_to_start_under_optimize(
    command: list[str], who: str, how: str, tmp_path: Path
) -> None:
    python = [sys.executable, "-O"] if how == "-O" else [sys.executable]
    arguments = [*python, "-m", "dagnats.cli", *command]
    if command[0] == "serve":
        arguments += ["--data-dir", str(tmp_path / "data")]
    result = _run(arguments, "1" if how != "-O" else None, tmp_path)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {who} refuses to start under python -O"), lines
    assert lines[1] == f"hint: {OPTIMIZE_HINT}", lines
    assert "ready" not in result.stdout and "serving" not in result.stderr
    assert not (tmp_path / "data").exists(), "serve started a nats-server before refusing"


@pytest.mark.parametrize(
    ("script", "who"), [(ENGINE_SCRIPT, "the engine"), (WORKER_SCRIPT, "the worker")]
)
def test_the_engine_and_the_worker_refuse_to_start_under_optimize(
    script: str, who: str, tmp_path: Path
) -> None:
    result = _run([sys.executable, "-O", "-c", script], None, tmp_path)
    assert result.returncode == 0, result.stderr
    message, _, hint = result.stdout.strip().partition(" | ")
    assert message.startswith(f"{who} refuses to start under python -O"), result.stdout
    assert hint == OPTIMIZE_HINT


def test_without_optimize_the_engine_starts(tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", ENGINE_SCRIPT], None, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_the_guard_passes_with_assertions_and_refuses_without() -> None:
    require_assertions("the engine")  # pytest runs with assertions on
    require_assertions("the engine", enabled=True)
    with pytest.raises(AssertionsDisabledError, match="the engine refuses to start") as caught:
        require_assertions("the engine", enabled=False)
    assert caught.value.hint == OPTIMIZE_HINT
    assert caught.value.what == "the engine"
