"""A TLS cluster (README "Cluster"): three `dagnats serve --cluster` processes on loopback
started with `--tls-cert/--tls-key/--tls-ca` (a throwaway CA made by trustme), so both their
client listeners and their routes require TLS, routes mutually verified against the CA.

The cluster forms over TLS routes (its streams get three replicas), a real worker and a
client with the CA run a workflow to completion, a client without the CA is refused at its
first connect in one readable line, and a node that would bind beyond loopback without TLS
refuses to start unless told `--insecure`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
import pytest_asyncio

from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.connection import ConnectError
from dagnats.runtime.credentials import TlsFiles
from dagnats.runtime.resources import HISTORY_STREAM
from tests.cluster_support import CertFiles, ServeCluster, first_info_line
from tests.fault_support import Processes, dagnats_command, workflow
from tests.nats_fixtures import wait_for

RUNS: Final = 6
done_timeout_ms: Final = 30_000
WORKFLOW: Final = workflow(
    "tls-flow",
    [
        {"id": "a", "task": "cluster.work"},
        {"id": "b", "task": "cluster.work", "depends_on": ["a"]},
    ],
)


@pytest_asyncio.fixture
async def procs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Processes]:
    for name in (credentials.TLS_CERT_ENV, credentials.TLS_KEY_ENV, credentials.TLS_CA_ENV):
        monkeypatch.delenv(name, raising=False)  # this process connects as told, no more
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        await processes.close()


async def test_a_tls_cluster_runs_workflows_and_refuses_clients_without_the_ca(
    procs: Processes, tmp_path: Path
) -> None:
    certs = CertFiles(tmp_path / "certs")
    nodes = ServeCluster(tmp_path / "cluster", name="tls")
    procs.extra_env.update(certs.env())  # every serve and worker: `--tls-*` by environment
    await nodes.start(procs)
    for port in nodes.client_ports:  # clients: INFO in clear, then TLS
        assert first_info_line(port).get("tls_required") is True, port
    mutual = TlsFiles(cert=str(certs.cert), key=str(certs.key), ca=str(certs.ca)).context()
    for port in nodes.route_ports:  # routes: TLS first, with a certificate of the CA
        assert first_info_line(port) == {}, port  # nothing in clear
        assert first_info_line(port, mutual).get("tls_required") is True, port

    argv = [*dagnats_command(), "worker", "tests.cluster_support:worker", "--nats-url", nodes.urls]
    procs.start("worker", argv)
    tls = TlsFiles(ca=str(certs.ca))
    client = await Client.connect(nodes.urls, role="client", data_dir=nodes.shared, tls=tls)
    try:
        info = await client.connection.js.stream_info(HISTORY_STREAM)
        assert info.config.num_replicas == 3, info.config  # the cluster formed over TLS routes
        await client.register_workflow(WORKFLOW)
        run_ids = [f"tls-{index}" for index in range(RUNS)]
        for run_id in run_ids:
            await client.start("tls-flow", {}, run_id=run_id)

        async def all_done() -> bool:
            states = await asyncio.gather(*(client.get_run(r) for r in run_ids))
            assert all(s.status in ("new", "pending", "running", "completed") for s in states)
            return all(s.status == "completed" for s in states)

        await wait_for(all_done, timeout_ms=done_timeout_ms, what=f"{RUNS} runs over TLS")
    finally:
        await client.close()
    assert {(c["run"], c["step"]) for c in procs.calls()} == {
        (r, s) for r in run_ids for s in ("a", "b")
    }

    with pytest.raises(ConnectError) as raised:  # no CA: the system's CAs do not know it
        await Client.connect(nodes.urls, role="client", data_dir=nodes.shared)
    message = str(raised.value)
    assert message.startswith("TLS with NATS at") and "\n" not in message, message
    assert "--tls-ca" in raised.value.hint


async def test_a_node_beyond_loopback_needs_tls_or_insecure(
    tmp_path: Path, procs: Processes
) -> None:
    node = ("serve", "--data-dir", str(tmp_path / "n0"), "--no-http", "--cluster",
            "--cluster-listen", "0.0.0.0:6222", "--routes", "nats://127.0.0.1:6223")  # fmt: skip
    refused = procs.cli(*node)
    assert refused.returncode == 2, refused.stderr
    first = refused.stderr.strip().splitlines()[0]
    assert "0.0.0.0 (beyond loopback) without TLS" in first, refused.stderr
    assert "--insecure" in refused.stderr and "Traceback" not in refused.stderr
    lone = procs.cli("serve", "--data-dir", str(tmp_path / "lone"), "--nats-host", "0.0.0.0")
    assert lone.returncode == 2 and "beyond loopback" in lone.stderr, lone.stderr
    assert not (tmp_path / "lone" / "nats-server.conf").exists()  # refused before starting
    told = await procs.serve(tmp_path / "lone", http=None,
                             extra_args=("--nats-host", "0.0.0.0", "--insecure"))  # fmt: skip
    assert told.process.alive()
    assert first_info_line(told.port).get("tls_required") is not True  # plain, as told
