"""The cluster's configuration rules (runtime/cluster, cli/cluster) and the owner-header check
of the cluster test, without a cluster: what serve refuses, what it writes for nats-server, and
that `owner_violations` does catch two writers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dagnats.cli.cluster import copy_credentials
from dagnats.runtime import cluster, credentials
from dagnats.runtime.credentials import CredentialError, TlsFiles
from tests.cluster_support import owner_violations
from tests.fault_support import dagnats_command


def spec(**fields: object) -> cluster.ClusterSpec:
    base: dict[str, object] = {
        "name": "c", "node_name": "n1", "listen_host": "127.0.0.1", "listen_port": 6222,
        "routes": ("nats://127.0.0.1:6223", "nats://127.0.0.1:6224"),
    }  # fmt: skip
    return cluster.ClusterSpec(**(base | fields))  # type: ignore[arg-type]


def test_routes_must_be_nats_urls_with_host_and_port_and_no_user() -> None:
    assert cluster.parse_routes("nats://a:1, nats://b:2") == ("nats://a:1", "nats://b:2")
    for bad in ("http://a:1", "nats://a", "nats://u:p@a:1"):
        with pytest.raises(cluster.ClusterError, match="--routes entry"):
            cluster.parse_routes(bad)


def test_listen_addresses_and_names_are_checked() -> None:
    assert cluster.parse_listen(":7000") == ("127.0.0.1", 7000)
    assert cluster.parse_listen("0.0.0.0:6222") == ("0.0.0.0", 6222)
    with pytest.raises(cluster.ClusterError, match="HOST:PORT"):
        cluster.parse_listen("0.0.0.0:99999")
    with pytest.raises(cluster.ClusterError, match="--node-name 'a b'"):
        cluster.check_cluster_name("--node-name", "a b")


def test_replicas_follow_the_cluster_size() -> None:
    assert cluster.node_count(spec()) == 3
    assert cluster.node_count(spec(routes=("nats://127.0.0.1:6222",))) == 1  # itself listed
    assert [cluster.default_replicas(n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]
    with pytest.raises(cluster.ClusterError, match="--replicas 7"):
        cluster.check_replicas(7)


def test_binding_beyond_loopback_needs_tls_or_insecure() -> None:
    cluster.check_exposure(spec(), "127.0.0.1")  # loopback: fine
    with pytest.raises(
        cluster.ClusterError, match=r"--cluster-listen 0\.0\.0\.0 \(beyond loopback\) without TLS"
    ):
        cluster.check_exposure(spec(listen_host="0.0.0.0"), "127.0.0.1")
    with pytest.raises(cluster.ClusterError, match=re.escape("--nats-host 10.1.2.3")):
        cluster.check_exposure(spec(), "10.1.2.3")
    cluster.check_exposure(spec(listen_host="0.0.0.0", insecure=True), "127.0.0.1")
    tls = TlsFiles(cert="c.pem", key="k.pem", ca="ca.pem")
    cluster.check_exposure(spec(listen_host="0.0.0.0", tls=tls), "0.0.0.0")


def test_the_server_config_names_the_node_and_authenticates_routes(tmp_path: Path) -> None:
    secret = cluster.ensure_route_secret(tmp_path)
    assert cluster.ensure_route_secret(tmp_path) == secret  # kept, not made anew
    assert (cluster.route_secret_path(tmp_path).stat().st_mode & 0o777) == 0o600
    text = cluster.server_config(spec(), secret, "127.0.0.1")
    assert 'server_name: "n1"' in text
    assert f"nats-route://{cluster.ROUTE_USER}:{secret}@127.0.0.1:6223" in text
    assert f'"password": "{secret}"' in text
    assert "tls" not in text
    tls = TlsFiles(cert="c.pem", key="k.pem", ca="ca.pem")
    wide = cluster.server_config(spec(listen_host="0.0.0.0", tls=tls), secret, "0.0.0.0")
    assert wide.count('"cert_file": "c.pem"') == 2  # routes and clients
    assert '"verify": true' in wide


def test_serve_refuses_a_wide_cluster_without_tls(tmp_path: Path) -> None:
    argv = [*dagnats_command(), "serve", "--data-dir", str(tmp_path), "--cluster",
            "--cluster-listen", "0.0.0.0:6222", "--routes", "nats://10.0.0.2:6222"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "beyond loopback" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "nats-server.conf").exists()  # refused before anything started


def test_credentials_are_shared_whole_and_never_overwritten(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    made = credentials.ensure_credentials(first)
    cluster.ensure_route_secret(first)
    copied = copy_credentials(first, second)
    assert {p.name for p in copied} >= {"engine.json", "admin.json", cluster.ROUTE_SECRET_FILE}
    assert credentials.ensure_credentials(second)["engine"] == made["engine"]
    assert copy_credentials(first, second) == []  # the same files: nothing to do
    other = tmp_path / "other"
    credentials.ensure_credentials(other)
    with pytest.raises(CredentialError, match="another deployment"):
        copy_credentials(other, second)
    with pytest.raises(CredentialError, match=re.escape("no engine.json")):
        copy_credentials(tmp_path / "nothing", second)


def test_owner_violations_catch_two_writers_of_one_partition() -> None:
    clean = [(1, "r", "a/3/5"), (2, "r", "a/3/5"), (3, "s", "b/3/9"), (4, "t", "c/4/0")]
    assert owner_violations(clean) == []
    late = [*clean, (5, "r", "a/3/5")]  # the old owner appended after the new one
    assert owner_violations(late) == ["seq 5 (run r): partition 3 term 5 appended after term 9"]
    two = [(1, "r", "a/3/5"), (2, "r", "b/3/5")]
    assert owner_violations(two) == ["seq 2: partition 3 term 5 has two engines"]
    assert owner_violations([(1, "r", "")]) == ["seq 1 (run r) has no Dagnats-Owner header"]
