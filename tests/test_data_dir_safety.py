"""The data dir is private and serve never harms another server's files or shows secrets.

Real `dagnats serve` subprocesses (tests/fault_support.py): the data dir and everything in it
(the query tables with inputs in clear, the NATS store, the URL and port files, the log) are
owner-only; a second serve refused on the same data dir leaves the running one's `nats.url`,
and clients still find it; no password shows in serve's banner or in any process's arguments
(`/proc/<pid>/cmdline`, what `ps` shows): the nats-server child is given only a config file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from dagnats.runtime import credentials
from dagnats.runtime.connection import URL_FILE
from dagnats.runtime.data_dir import remove_if_ours, write_private
from dagnats.runtime.serve import redact_url
from tests.fault_support import Processes, connected, dagnats_command, workflow
from tests.nats_fixtures import wait_for

run_timeout_s: Final = 30.0
# The only flags serve gives its nats-server child; secrets go in the config file (0600).
CHILD_FLAGS: Final = frozenset({"--config", "--jetstream", "--store_dir", "--addr", "--port",
                                "--log"})  # fmt: skip
SECRET_FILE_WORDS: Final = ("cred", "pass", "secret", "token", "nkey", ".key", "seed")



def loose_paths(root: Path) -> list[str]:
    """Every path under root (root included) that group or others may use. A path that is
    gone by the time it is looked at (nats-server removes a message block it compacted while
    the walk runs) is skipped: what is gone exposes nothing."""
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077 and not path.is_symlink():
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_the_data_dir_and_every_file_in_it_are_owner_only(procs: Processes) -> None:
    data_dir = procs.tmp_path / "data"
    serve = await procs.serve(data_dir)
    async with connected(serve.url) as client:
        await client.register_workflow(
            workflow("private", [{"id": "a", "type": "log", "config": {"message": "hi"}}])
        )
        run_id = await client.start("private", {"card": "4111-1111"})
        final = await client.wait(run_id, timeout_s=run_timeout_s)
    assert final.status == "completed", final.error
    await wait_for((data_dir / "dagnats.sqlite").exists, timeout_ms=10_000,
                   what="the query tables")  # fmt: skip
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "dagnats.sqlite").stat().st_mode) == 0o600
    assert list((data_dir / "store").rglob("*")), "the NATS store holds files"
    assert loose_paths(data_dir) == []


async def test_an_existing_loose_data_dir_is_tightened(procs: Processes) -> None:
    data_dir = procs.tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "dagnats.sqlite").write_bytes(b"")
    (data_dir / "dagnats.sqlite").chmod(0o644)
    await procs.serve(data_dir)
    assert loose_paths(data_dir) == []


async def test_a_refused_second_serve_leaves_the_running_ones_url(procs: Processes) -> None:
    data_dir = procs.tmp_path / "data"
    first = await procs.serve(data_dir)
    url_text = (data_dir / URL_FILE).read_text()
    second = procs.start("serve", [*dagnats_command(), "serve", "--data-dir", str(data_dir)])
    assert await second.wait_exit() == 1
    assert "locked by another dagnats server" in second.stderr()
    assert "Traceback" not in second.stderr()
    assert (data_dir / URL_FILE).read_text() == url_text
    listed = procs.cli("workflow", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr  # clients still find the first serve
    assert first.process.alive()
    assert await first.process.terminate() == 0
    assert not (data_dir / URL_FILE).exists()  # the first removes its own on a clean stop


def test_a_file_is_removed_only_while_it_holds_what_we_wrote(tmp_path: Path) -> None:
    path = tmp_path / "nats.url"
    write_private(path, "nats://127.0.0.1:1\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_private(path, "nats://127.0.0.1:2\n")  # another server wrote since
    assert not remove_if_ours(path, "nats://127.0.0.1:1\n") and path.exists()
    assert remove_if_ours(path, "nats://127.0.0.1:2\n") and not path.exists()


def test_a_urls_password_is_redacted() -> None:
    assert redact_url("nats://alice:s3cret@10.0.0.1:4222") == "nats://alice:***@10.0.0.1:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert "tok" not in redact_url("tls://:tok@host")


def secrets_in(data_dir: Path) -> list[str]:
    """The lines of every credential-like file in the data dir (none today: then the check
    below is on the flags alone)."""
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file() and any(word in path.name.lower() for word in SECRET_FILE_WORDS):
            text = path.read_text(errors="replace")
            found += [line.strip() for line in text.splitlines() if len(line.strip()) >= 8]
    return found


async def test_no_secret_in_the_banner_or_any_process_arguments(procs: Processes) -> None:
    data_dir = procs.tmp_path / "data"
    serve = await procs.serve(data_dir)
    child = cmdline(serve.nats_pid())
    flags = {arg for arg in child if arg.startswith("-")}
    assert flags <= CHILD_FLAGS, f"nats-server is given {flags - CHILD_FLAGS}"
    config = child[child.index("--config") + 1]
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    arguments = " ".join(child + cmdline(serve.process.pid))
    for secret in secrets_in(data_dir):
        assert secret not in arguments and secret not in serve.process.stdout()
    # An external server reached with a password in its URL: the banner shows `***`.
    engine = credentials.read_credential(data_dir / "credentials" / "engine.json")
    secret_url = serve.url.replace("nats://", f"nats://{engine.user}:{engine.password}@")
    banner = procs.start("serve", [*dagnats_command(), "serve", "--nats-url", secret_url,
                                   "--data-dir", str(procs.tmp_path / "ext")])  # fmt: skip
    await wait_for(lambda: "ready" in banner.stdout() or not banner.alive(), timeout_ms=20_000,
                   what="the external serve's banner")  # fmt: skip
    assert banner.alive(), banner.tail()
    assert f"{engine.user}:***@" in banner.stdout()
    assert engine.password not in banner.stdout() + banner.stderr()
    assert await banner.terminate() == 0
