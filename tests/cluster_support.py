"""Helpers of the cluster tests (tests/test_cluster*.py) and their worker module.

`NatsCluster` runs three real nats-server processes on loopback (EmbeddedNats children of the
test process, each its own store), routed to each other with the cluster's route secret and
one shared credentials set, so a test can SIGKILL one node and start it again on the same
store and port. `owner_violations` reads every history message's `Dagnats-Owner` header
(runtime/partitions) and says where a partition saw an older owner's append after a newer
one's.

The worker (`dagnats worker tests.cluster_support:worker`): `cluster.work` records each call
(run, step, attempt, pid) in `$DAGNATS_FAULT_CALLS` first, fails attempt 1 of a step whose
metadata says `flaky` (a retryable error), and returns; `cluster.turn` is a two-turn agent
model that asks for one tool (`cluster.tool`) and then answers.

This module may start and signal the nats-server processes it made, and touch files under
the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

import nats
from nats.aio.client import Client as NatsClient
from nats.js import api

from dagnats import Continue, Done, TaskContext, ToolCall, Worker
from dagnats.runtime import cluster, credentials
from dagnats.runtime.nats_server import EmbeddedNats, pick_free_port
from dagnats.runtime.partitions import OWNER_HEADER
from dagnats.runtime.resources import HISTORY_STREAM, HISTORY_SUBJECTS
from tests.fault_support import Processes, Serve
from tests.fault_workers import CALLS_ENV, append_line

NODES: Final = 3
history_read_idle_s: Final = 5.0
history_messages_max: Final = 200_000
info_timeout_s: Final = 2.0  # a listener's first INFO (the node runs already)
info_bytes_max: Final = 65_536

worker = Worker(concurrency=64, worker_id=f"cluster-{os.getpid()}")


def _record(ctx: TaskContext) -> None:
    line = {"task": ctx.task_type, "run": ctx.run_id, "step": ctx.step_id,
            "attempt": ctx.attempt, "pid": os.getpid()}  # fmt: skip
    append_line(Path(os.environ[CALLS_ENV]), json.dumps(line))


async def work(ctx: TaskContext) -> dict[str, object]:
    """Record the call; attempt 1 of a `flaky` step fails (retryable)."""
    _record(ctx)
    if ctx.metadata.get("flaky") and ctx.attempt == 1:
        raise RuntimeError(f"step {ctx.step_id}: attempt 1 fails on purpose")
    return {"step": ctx.step_id, "attempt": ctx.attempt}


async def turn(ctx: TaskContext) -> Continue | Done:
    """Turn 1 asks for one tool; turn 2 answers with what it returned."""
    _record(ctx)
    if ctx.turn == 1:
        return Continue({"asked": 1}, [ToolCall("lookup", {"q": ctx.run_id})])
    return Done({"answer": [r.output for r in ctx.tool_results]})


async def tool(ctx: TaskContext) -> dict[str, object]:
    _record(ctx)
    return {"found": ctx.input}


worker.add("cluster.work", work)
worker.add("cluster.turn", turn)
worker.add("cluster.tool", tool)


class NatsCluster:
    """Three routed nats-server processes on loopback sharing one credentials set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shared = root / "shared"  # the credentials set every node and engine uses
        self.users = credentials.ensure_credentials(self.shared)
        secret = cluster.ensure_route_secret(self.shared)
        route_ports = [pick_free_port() for _ in range(NODES)]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in route_ports)
        self.nodes: list[EmbeddedNats] = []
        for index, route_port in enumerate(route_ports):
            spec = cluster.ClusterSpec(
                name="test", node_name=f"n{index}", listen_host="127.0.0.1",
                listen_port=route_port, routes=routes,
            )  # fmt: skip
            self.nodes.append(
                EmbeddedNats(
                    root / f"n{index}",
                    port=pick_free_port(),
                    authorization=credentials.server_authorization(self.users),
                    extra_config=cluster.server_config(spec, secret, "127.0.0.1"),
                )
            )

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{node.requested_port}" for node in self.nodes)

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes))

    async def kill(self, index: int) -> None:
        """SIGKILL node `index` (its store stays), then reap it."""
        pid = self.nodes[index].pid
        assert pid is not None, f"node {index} is not running"
        os.kill(pid, signal.SIGKILL)
        await self.nodes[index].stop()
        assert not self.nodes[index].is_running()

    async def restart(self, index: int) -> None:
        await self.nodes[index].start()

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)

    async def admin(self) -> NatsClient:
        """An admin connection to the whole cluster."""
        user = self.users["admin"]
        return await nats.connect(
            self.urls.split(","), user=user.user, password=user.password,
            inbox_prefix=f"_INBOX_{user.user}", connect_timeout=5,
            max_reconnect_attempts=-1, reconnect_time_wait=0.1,
        )  # fmt: skip


async def history_owners(nc: NatsClient) -> list[tuple[int, str, str]]:
    """(stream sequence, run id, owner header) of every history message, in order."""
    js = nc.jetstream()
    info = await js.stream_info(HISTORY_STREAM)
    last = info.state.last_seq
    assert last < history_messages_max, last
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    subscription = await js.subscribe(
        HISTORY_SUBJECTS, stream=HISTORY_STREAM, ordered_consumer=True, config=config
    )
    found: list[tuple[int, str, str]] = []
    try:
        while not found or found[-1][0] < last:
            message = await subscription.next_msg(timeout=history_read_idle_s)
            run_id = message.subject.split(".", 2)[2]
            owner = (message.headers or {}).get(OWNER_HEADER, "")
            found.append((message.metadata.sequence.stream, run_id, owner))
    finally:
        await subscription.unsubscribe()
    return found


def owner_violations(appends: list[tuple[int, str, str]]) -> list[str]:
    """Where a partition saw two writers at once: an append under an older term after one
    under a newer term, a term held by two engines, or an append with no owner header."""
    problems: list[str] = []
    newest: dict[str, int] = {}
    term_engine: dict[tuple[str, int], str] = {}
    for seq, run_id, owner in appends:
        if not owner:
            problems.append(f"seq {seq} (run {run_id}) has no {OWNER_HEADER} header")
            continue
        engine, partition, term_text = owner.split("/")
        term = int(term_text)
        if term == 0:
            continue  # not an owner's append (gates, admission follow-ups): OCC alone
        key = (partition, term)
        if term_engine.setdefault(key, engine) != engine:
            problems.append(f"seq {seq}: partition {partition} term {term} has two engines")
        if term < newest.get(partition, 0):
            problems.append(
                f"seq {seq} (run {run_id}): partition {partition} term {term} appended after "
                f"term {newest[partition]}"
            )
        newest[partition] = max(newest.get(partition, 0), term)
    return problems


def engines_by_partition(appends: list[tuple[int, str, str]]) -> dict[str, set[str]]:
    table: dict[str, set[str]] = defaultdict(set)
    for _, _, owner in appends:
        if owner:
            engine, partition, _ = owner.split("/")
            table[partition].add(engine)
    return table


# -- clusters of `dagnats serve --cluster` processes -------------------------------------------


class CertFiles:
    """A throwaway CA (trustme) and one certificate for 127.0.0.1 / localhost, as files; the
    nodes share the certificate (each could have its own signed by the CA)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1", "localhost")
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, self.cert, self.key = (directory / n for n in ("ca.pem", "node.pem", "node.key"))
        authority.cert_pem.write_to_path(str(self.ca))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))

    def env(self) -> dict[str, str]:
        """The `--tls-cert/--tls-key/--tls-ca` of every process, as their environment."""
        return {credentials.TLS_CERT_ENV: str(self.cert), credentials.TLS_KEY_ENV: str(self.key),
                credentials.TLS_CA_ENV: str(self.ca)}  # fmt: skip


class ServeCluster:
    """`NODES` `dagnats serve --cluster` processes on loopback (embedded NATS and an engine
    each), sharing one credentials set through `--credentials-from`."""

    def __init__(self, root: Path, name: str = "test") -> None:
        self.root = root
        self.name = name
        self.shared = root / "shared"
        credentials.ensure_credentials(self.shared)
        cluster.ensure_route_secret(self.shared)
        self.route_ports = [pick_free_port() for _ in range(NODES)]
        self.client_ports = [pick_free_port() for _ in range(NODES)]

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.client_ports)

    def serve_args(self, index: int, *extra: str) -> tuple[str, ...]:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.route_ports)
        return ("--cluster", "--cluster-name", self.name, "--node-name", f"n{index}",
                "--cluster-listen", f"127.0.0.1:{self.route_ports[index]}", "--routes", routes,
                "--credentials-from", str(self.shared), *extra)  # fmt: skip

    async def start(self, procs: Processes, *extra: str) -> list[Serve]:
        """Start every node (at once: a node waits for the others' quorum) and wait for
        each one's ready line."""
        starts = (
            procs.serve(self.root / f"n{index}", port=port, http=None,
                        extra_args=self.serve_args(index, *extra))
            for index, port in enumerate(self.client_ports)
        )  # fmt: skip
        return list(await asyncio.gather(*starts))


def first_info_line(port: int, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The INFO a listener on 127.0.0.1:`port` sends first, decoded ({} when it closes the
    connection, or sends nothing within `info_timeout_s`: a TLS-first route listener); with
    `tls`, read after a TLS handshake (which raises ssl.SSLError when it fails)."""
    received = b""
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(socket.create_connection(("127.0.0.1", port), info_timeout_s))
        connection = plain
        if tls is not None:
            wrapped = tls.wrap_socket(plain, server_hostname="127.0.0.1")
            connection = stack.enter_context(wrapped)
        with contextlib.suppress(TimeoutError):
            while b"\r\n" not in received and len(received) < info_bytes_max:
                chunk = connection.recv(4_096)
                if not chunk:
                    break
                received += chunk
    line = received.split(b"\r\n", 1)[0].decode()
    if not line.startswith("INFO "):
        assert not line, (port, line)
        return {}
    info: dict[str, Any] = json.loads(line[len("INFO ") :])
    return info
