"""Roles on NATS, against the real embedded server that `Server` starts with its generated
credentials: every forbidden action is refused BY THE SERVER (a permissions violation from
nats-server, or an authorization violation at connect), never only by our client code; and
the engine's own second check (a command type its subject's kind may not carry, an
approval's `by`) on top. Waits are bounded; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from dagnats import Workflow
from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.connection import ConnectError
from dagnats.runtime.credentials import Credential
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    DEAD_STREAM,
    HISTORY_STREAM,
    command_subject,
    history_subject,
)
from dagnats.runtime.roles import inbox_prefix
from dagnats.runtime.serve import Server
from kernel import codec
from kernel.commands import CompleteTask, ResolveApproval
from steps import approvals
from tests.fault_support import REPO_ROOT, Process, Processes, dagnats_command
from tests.nats_fixtures import wait_for

WAIT_MS = 10_000
API = "$JS.API"


class Violations:
    """A NATS connection as one user, with the server's permission errors it received."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    async def refused(self, subject: str, payload: bytes = b"{}") -> str:
        """Publish on `subject`; return the server's permissions violation naming it."""
        assert self.nc is not None
        await self.nc.publish(subject, payload)
        await self.nc.flush()

        def seen() -> bool:
            # (nats-py lowercases the server's error line)
            return any(
                f'"{subject.lower()}"' in e and "permissions violation" in e for e in self.errors
            )

        await wait_for(seen, timeout_ms=WAIT_MS, what=f"a permissions violation for {subject}")
        return next(e for e in self.errors if subject.lower() in e)

    async def allowed(self, subject: str) -> None:
        """Publish on `subject` and see no violation for it (a ping round trip later)."""
        assert self.nc is not None
        await self.nc.publish(subject, b"{}")
        await self.nc.flush()
        assert not [e for e in self.errors if f'"{subject.lower()}"' in e], self.errors


@contextlib.asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[Server]:
    """serve's parts in this process: the embedded server with roles, and the engine."""
    the_server = Server(data_dir)
    await the_server.start()
    stop = asyncio.Event()
    engine = asyncio.create_task(the_server.run(stop))
    try:
        yield the_server
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(engine, timeout=10)
        await the_server.stop()


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path / "data") as the_server:
        yield the_server


def credential_of(server: Server, name: str) -> Credential:
    return credentials.read_credential(server.data_dir / "credentials" / f"{name}.json")


@contextlib.asynccontextmanager
async def connected_as(server: Server, name: str) -> AsyncIterator[Violations]:
    credential = credential_of(server, name)
    violations = Violations()
    violations.nc = await nats.connect(
        server.url, user=credential.user, password=credential.password,
        inbox_prefix=inbox_prefix(credential.user), error_cb=violations.on_error,
        allow_reconnect=False, connect_timeout=2,
    )  # fmt: skip
    try:
        yield violations
    finally:
        await violations.nc.close()


def forged_completion(run_id: str) -> bytes:
    command = CompleteTask(
        run_id=run_id, at_ms=1, seed=1, step_id="reserve", attempt=1,
        output=msgspec.Raw(b'{"forged": true}'),
    )  # fmt: skip
    return codec.encode(command)


# -- files -------------------------------------------------------------------------------


async def test_serve_generates_private_credentials_and_a_private_config(server: Server) -> None:
    data_dir = server.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "credentials").stat().st_mode) == 0o700
    names = sorted(p.stem for p in (data_dir / "credentials").glob("*.json"))
    assert names == ["admin", "approver", "client", "engine", "worker"], names
    for path in (data_dir / "credentials").glob("*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    config = data_dir / "nats-server.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    engine = credential_of(server, "engine")
    assert engine.password in config.read_text()  # the server's users come from the file...
    assert server.nats is not None and server.nats.pid is not None
    argv = Path(f"/proc/{server.nats.pid}/cmdline").read_bytes().split(b"\0")
    for name in ("engine", "worker", "client", "approver", "admin"):  # ... never argv
        secret = credential_of(server, name).password.encode()
        assert not any(secret in arg for arg in argv), name


async def test_a_data_dir_from_before_roles_gets_credentials_at_its_first_start(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    (data_dir / "nats-server.conf").write_text("max_payload: 1048576\n")
    os.chmod(data_dir / "nats-server.conf", 0o644)
    old = Server(data_dir)
    await old.start()
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "nats-server.conf").stat().st_mode) == 0o600
        first = credential_of(old, "client")
    finally:
        await old.stop()
    again = Server(data_dir)
    await again.start()
    try:
        assert credential_of(again, "client") == first  # kept, not regenerated
    finally:
        await again.stop()


# -- refused by the server --------------------------------------------------------------


async def test_an_unauthenticated_connection_is_refused_by_the_server(server: Server) -> None:
    assert server.nats is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.nats.port)
    try:
        info = await asyncio.wait_for(reader.readline(), WAIT_MS / 1000)
        assert info.startswith(b"INFO ") and b'"auth_required":true' in info, info
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), WAIT_MS / 1000)
        assert answer.startswith(b"-ERR 'Authorization Violation'"), answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_wrong_password_is_reported_as_such(server: Server, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    good = credential_of(server, "client")
    wrong.write_bytes(msgspec.json.encode(msgspec.structs.replace(good, password="guess")))
    with pytest.raises(ConnectError, match="refused the credential"):
        await Client.connect(server.url, creds=wrong)


@pytest.mark.parametrize("name", ["client", "worker", "approver"])
async def test_only_the_engine_appends_history(server: Server, name: str) -> None:
    async with connected_as(server, name) as user:
        await user.refused(history_subject("victim"), forged_completion("victim"))
    async with connected_as(server, "engine") as engine:
        await engine.allowed(history_subject("engine-may"))


async def test_a_client_cannot_publish_a_result_nor_on_the_old_subject(server: Server) -> None:
    async with connected_as(server, "client") as client:
        await client.refused(command_subject("r1", kind="result"), forged_completion("r1"))
        await client.refused(command_subject("r1"), forged_completion("r1"))  # old layout
        await client.refused(command_subject("r1", kind="engine"), forged_completion("r1"))
        await client.refused("dagnats.sched.r1.t1")  # a timer could fire anything anywhere
        await client.refused("$KV.dagnats_runs.r1")  # a forged snapshot the engine would load
        await client.allowed(command_subject("r1", kind="client"))


async def test_a_worker_cannot_approve_nor_send_client_commands(server: Server) -> None:
    identity = credential_of(server, "approver").identity
    async with connected_as(server, "worker") as worker:
        await worker.refused(command_subject("r1", kind=f"decision.{identity}"))
        await worker.refused(command_subject("r1", kind="client"))
        await worker.refused(f"{API}.CONSUMER.CREATE.{COMMANDS_STREAM}.steal")
        await worker.allowed(command_subject("r1", kind="result"))


async def test_an_approver_may_decide_only_under_its_own_identity(server: Server) -> None:
    identity = credential_of(server, "approver").identity
    async with connected_as(server, "approver") as approver:
        await approver.refused(command_subject("r1", kind="decision.somebody_else"))
        await approver.refused(command_subject("r1", kind="result"))
        await approver.refused(history_subject("r1"))
        await approver.allowed(command_subject("r1", kind=f"decision.{identity}"))


@pytest.mark.parametrize("name", ["client", "worker", "approver", "engine"])
async def test_nobody_but_admin_deletes_or_purges_the_history_stream(
    server: Server, name: str
) -> None:
    async with connected_as(server, name) as user:
        for verb in ("DELETE", "PURGE"):
            await user.refused(f"{API}.STREAM.{verb}.{HISTORY_STREAM}")
        await user.refused(f"{API}.STREAM.MSG.DELETE.{HISTORY_STREAM}")
    async with connected_as(server, "admin") as admin:
        assert admin.nc is not None
        js = admin.nc.jetstream()
        assert (await js.stream_info(HISTORY_STREAM)).config.name == HISTORY_STREAM  # intact
        assert await js.purge_stream(DEAD_STREAM)  # admin may


# -- the engine's own check, and the approver's identity ----------------------------------


def gate_workflow() -> Workflow:
    return Workflow("gated").step("gate", type="approval", config={"question": "Ship?"})


async def test_an_approval_is_recorded_under_the_credentials_identity(server: Server) -> None:
    identity = credential_of(server, "approver").identity
    async with await Client.connect(server.url, role="approver") as approver:
        async with await Client.connect(server.url) as client:
            await client.register_workflow(gate_workflow().build())
            run_id = await client.start("gated", {})
        await wait_for(
            lambda: _pending(approver, run_id), timeout_ms=WAIT_MS, what="the approval pending"
        )
        with pytest.raises(Exception, match="differs from the credential's identity"):
            await approver.approve(run_id, "gate", by="not-" + identity)
        # A forged `by` sent straight on the approver's own subject: the engine records the
        # identity the subject (pinned by the server's permission) names.
        forged = ResolveApproval(
            run_id=run_id, at_ms=1, seed=1, step_id="gate", decision="approve", by="mallory"
        )
        await approver.send(forged)
        state = await approver.wait(run_id, timeout_s=WAIT_MS / 1000)
    assert state.status == "completed"
    approval = approvals.find(state, "gate")
    assert approval is not None and approval.decision == "approve", approval
    assert approval.by == identity != "mallory", approval


async def _pending(client: Client, run_id: str) -> bool:
    return any(p.run_id == run_id for p in await client.pending_approvals())


async def test_a_client_cannot_approve_and_a_result_on_a_client_subject_is_set_aside(
    server: Server,
) -> None:
    async with await Client.connect(server.url) as client:
        await client.register_workflow(gate_workflow().build())
        run_id = await client.start("gated", {})
        with pytest.raises(Exception, match="may not decide approvals"):
            await client.approve(run_id, "gate")
        # A result dressed as a client command (an allowed subject): the engine refuses it.
        await client.connection.commands.publish_command(
            run_id, forged_completion(run_id), f"forged:{run_id}"
        )
        js = client.connection.js

        async def dead() -> bool:
            with contextlib.suppress(Exception):
                message = await js.get_last_msg(DEAD_STREAM, "dagnats.dead.forbidden")
                return run_id.encode() in (message.data or b"")
            return False

        await wait_for(dead, timeout_ms=WAIT_MS, what="the forged result dead-lettered")
        state = await client.get_run(run_id)
        assert state.status == "running", state.status


# -- the healthy path: serve + worker + CLI as separate processes -------------------------


async def test_serve_worker_and_cli_with_their_credentials_run_the_order_example(
    tmp_path: Path,
) -> None:
    processes = Processes(tmp_path)
    data_dir = tmp_path / "data"
    try:
        serve = await processes.serve(data_dir)
        env = {**processes.env(), "DAGNATS_DATA_DIR": str(data_dir)}  # finds the credentials
        argv = [*dagnats_command(), "worker", "examples.order.worker:worker"]
        worker = Process("order-worker", argv, env, processes.out_dir)
        processes.started.append(worker)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*dagnats_command(), *args], cwd=REPO_ROOT, env=env, capture_output=True,
                text=True, timeout=90, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip

        registered = cli("workflow", "register", "examples/order/workflow.json")
        assert registered.returncode == 0, registered.stderr
        started = cli(
            "run", "start", "order", "--input-file", "examples/order/input.json",
            "--wait", "--timeout", "60", "--json", "--nats-url", serve.url,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr + worker.tail()
        assert json.loads(started.stdout)["run"]["status"] == "completed", started.stdout
        assert worker.alive(), worker.tail()
        log = (data_dir / "nats-server.log").read_text()
        assert "Permissions Violation" not in log, log[-2000:]
    finally:
        await processes.close()
