"""serve loads the step modules while its nats-server child starts (issue 14: recovery).

`runtime/serve_start.while_starting` spawns the child, does CPU-bound work while it starts on its
own, then waits for it; work that fails leaves no child and no data dir lock behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.serve_start import current_umask, while_starting, with_umask


async def test_the_work_runs_while_the_child_starts(tmp_path: Path) -> None:
    nats = EmbeddedNats(tmp_path / "data")
    seen: list[tuple[bool, bool]] = []

    async def start() -> EmbeddedNats:
        await nats.start()
        return nats

    def work() -> None:  # (spawned: a child process; not ready: no port yet)
        seen.append((nats.is_running(), nats.port == 0))

    started = await while_starting(start(), work)
    try:
        assert started is nats and nats.is_running()
        assert seen == [(True, True)], seen
    finally:
        await nats.stop()


async def test_work_that_fails_leaves_no_child_and_no_lock(tmp_path: Path) -> None:
    nats = EmbeddedNats(tmp_path / "data")

    async def start() -> EmbeddedNats:
        await nats.start()
        return nats

    def work() -> None:
        raise RuntimeError("the step modules did not load")

    with pytest.raises(RuntimeError, match="did not load"):
        await while_starting(start(), work)
    assert not nats.is_running()
    again = EmbeddedNats(tmp_path / "data")  # the data dir's lock was released
    await again.start()
    await again.stop()


def test_the_work_runs_under_the_given_umask_and_the_private_one_comes_back() -> None:
    """serve loads the step modules under the umask it had before its private one (their
    bytecode cache stays readable as the install's), and goes on with the private one."""
    before = os.umask(0o077)  # as within serve's private_umask
    try:
        assert with_umask(0o022, current_umask) == 0o022
        assert current_umask() == 0o077
        with pytest.raises(RuntimeError):
            with_umask(0o022, _fails)
        assert current_umask() == 0o077
    finally:
        os.umask(before)


def _fails() -> None:
    raise RuntimeError("failed")
