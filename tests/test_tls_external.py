"""Connecting to an external NATS over TLS, against a real nats-server that requires it.

The server is the wheel's nats-server with a `tls` block (a certificate for 127.0.0.1 issued
by a throwaway CA, made by `trustme`) and the generated per-role users. The client side is
DagNats' own: `--tls-ca` / `$DAGNATS_TLS_CA` with a credential file, through the public
`Client` and the CLI. Without the CA the connection is refused with one readable line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import trustme

from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.connection import ConnectError
from dagnats.runtime.credentials import TlsFiles
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources
from tests.fault_support import REPO_ROOT, dagnats_command


class TlsServer:
    def __init__(self, server: EmbeddedNats, ca: Path, data_dir: Path) -> None:
        self.server = server
        self.ca = ca
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return self.server.url.replace("nats://", "tls://", 1)

    def creds(self, role: str) -> Path:
        return self.data_dir / "credentials" / f"{role}.json"


@pytest_asyncio.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = certs / "ca.pem", certs / "server.pem", certs / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    data_dir = tmp_path / "data"
    users = credentials.ensure_credentials(data_dir)
    tls_block = f'tls: {{ cert_file: "{cert}", key_file: "{key}", timeout: 5 }}\n'
    server = EmbeddedNats(
        data_dir, authorization=credentials.server_authorization(users) + tls_block
    )
    await server.start()
    try:
        tls = TlsServer(server, ca, data_dir)
        admin = await Client.connect(
            tls.url, creds=tls.creds("admin"), tls=TlsFiles(ca=str(ca))
        )
        try:
            await ensure_resources(admin.connection.js)
        finally:
            await admin.close()
        yield tls
    finally:
        await server.stop()


async def test_a_client_with_the_ca_connects_over_tls(tls_server: TlsServer) -> None:
    client = await Client.connect(
        tls_server.url, creds=tls_server.creds("client"), tls=TlsFiles(ca=str(tls_server.ca))
    )
    try:
        assert client.connection.nc.is_connected
        assert await client.list_workflows() == []
    finally:
        await client.close()


async def test_without_the_ca_the_connection_is_refused_in_one_line(
    tls_server: TlsServer,
) -> None:
    with pytest.raises(ConnectError) as raised:
        await Client.connect(tls_server.url, creds=tls_server.creds("client"))
    message = str(raised.value)
    assert tls_server.url.split("//")[1] in message and "\n" not in message, message


def test_the_cli_takes_tls_ca_and_creds(tls_server: TlsServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGNATS_")}
    env["DAGNATS_DATA_DIR"] = str(tls_server.data_dir.parent / "elsewhere")
    creds_and_command = ["--creds", str(tls_server.creds("client")),
                         "workflow", "list", "--nats-url", tls_server.url]  # fmt: skip
    argv = [*dagnats_command(), "--tls-ca", str(tls_server.ca), *creds_and_command]
    listed = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "Traceback" not in listed.stderr, listed.stderr
    assert "no workflows registered" in listed.stderr, listed.stderr
    without_ca = [*dagnats_command(), *creds_and_command]
    refused = subprocess.run(without_ca, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "TLS with NATS" in refused.stderr and "--tls-ca" in refused.stderr, refused.stderr
