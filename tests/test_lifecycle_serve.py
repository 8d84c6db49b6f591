"""`dagnats serve --die-with-parent`: a real serve, started by a real parent process that is
then SIGKILLed, stops (its nats-server child with it); without the option it stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_support import children_named, dagnats_command, process_is_gone
from tests.nats_fixtures import wait_for

# The parent: starts serve, prints serve's pid and ready line, then waits to be killed.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(child.pid, flush=True)
print(child.stdout.readline(), end="", flush=True)
time.sleep(120)
"""


async def _serve_under_a_parent(
    tmp_path: Path, *options: str
) -> tuple[subprocess.Popen[str], int, int]:
    """(parent pid, serve pid, nats-server pid) of a serve started by a fresh parent."""
    argv = [*dagnats_command(), "serve", "--data-dir", str(tmp_path / "data"), "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGNATS_")}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *argv, *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert parent.stdout is not None
    serve_pid = int(parent.stdout.readline())
    ready = json.loads(parent.stdout.readline())
    assert ready["embedded"] is True, ready
    [nats_pid] = children_named(serve_pid, "nats-server")
    parent.stdout.close()
    return parent, serve_pid, nats_pid


def _kill(pid: int) -> None:
    if not process_is_gone(pid):
        os.kill(pid, signal.SIGKILL)


async def test_serve_dies_with_its_parent(tmp_path: Path) -> None:
    parent, serve, nats = await _serve_under_a_parent(tmp_path, "--die-with-parent")
    try:
        parent.kill()
        parent.wait(timeout=10)
        await wait_for(lambda: process_is_gone(serve), timeout_ms=15_000, what="serve to stop")
        await wait_for(lambda: process_is_gone(nats), timeout_ms=5_000, what="its nats child")
    finally:
        for pid in (serve, nats):
            _kill(pid)


@pytest.mark.parametrize("option", [()])
async def test_serve_without_the_option_outlives_its_parent(
    tmp_path: Path, option: tuple[str, ...]
) -> None:
    parent, serve, nats = await _serve_under_a_parent(tmp_path, *option)
    try:
        parent.kill()
        parent.wait(timeout=10)
        with pytest.raises(AssertionError, match="timed out"):
            await wait_for(lambda: process_is_gone(serve), timeout_ms=1_500, what="serve")
        assert not process_is_gone(nats)
    finally:
        for pid in (serve, nats):
            _kill(pid)
