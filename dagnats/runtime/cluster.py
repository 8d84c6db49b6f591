"""A NATS cluster for `dagnats serve --cluster`: the nats-server cluster block, its route
secret, the exposure rule, and how many copies each stream keeps.

The cluster is NATS JetStream's own (RAFT per stream and per consumer); DagNats adds nothing
to it but the configuration. Each node of a cluster runs one nats-server with the same users
(every node shares one credentials set: `dagnats credential export/import`, or
`serve --credentials-from DIR`), a `server_name` of its own, the cluster's name, a route
listener and the routes to the other nodes. Routes authenticate with the cluster's route
secret (`<data dir>/credentials/cluster-route.secret`, 0600, shared like the credentials).

A cluster whose route listener (or client listener) binds beyond loopback carries passwords
and every run's data over the network: it refuses to start without TLS files unless told
`--insecure`.

This module renders text and reads and writes the route secret; it does not start processes
nor talk to NATS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import msgspec

from dagnats.runtime.credentials import CREDENTIALS_DIR, TlsFiles
from kernel.errors import DagnatsError

ROUTE_USER: Final = "dagnats_route"
ROUTE_SECRET_FILE: Final = "cluster-route.secret"
ROUTE_SCHEME: Final = "nats-route"
routes_max: Final = 64  # routes one node lists
cluster_name_length_max: Final = 64
replicas_clustered: Final = 3  # a stream's copies when the cluster has at least this many nodes
replicas_max: Final = 5  # JetStream's own maximum
route_secret_bytes: Final = 32
tls_handshake_timeout_s: Final = 5  # nats-server's default (0.5 s) is short for a loaded host
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class ClusterError(DagnatsError):
    """A cluster option that cannot work; `hint` says what to pass instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.hint = hint
        super().__init__(message)


class ClusterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One node's place in a cluster."""

    name: str  # the cluster's name, the same on every node
    node_name: str  # this node's `server_name`, unique in the cluster
    listen_host: str
    listen_port: int
    routes: tuple[str, ...] = ()  # nats://host:port of the other nodes (itself may be listed)
    tls: TlsFiles | None = None  # route (and client) TLS
    insecure: bool = False  # beyond loopback without TLS, on purpose


def check_cluster_name(field: str, value: str) -> str:
    """`value` if it can name a cluster or a node, else raise ClusterError."""
    if _NAME.fullmatch(value) is None:
        raise ClusterError(
            f"{field} {value!r} must be 1..{cluster_name_length_max} characters of A-Z a-z 0-9 _ -"
        )
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, loopback) of --cluster-listen.

    Raises:
        ClusterError: not HOST:PORT with a port in 1..65535.
    """
    host, separator, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not separator or not port_text.isdigit() or not 0 < int(port_text) < 65_536:
        raise ClusterError(
            f"--cluster-listen {text!r} must be HOST:PORT with a port in 1..65535",
            "for example --cluster-listen 0.0.0.0:6222",
        )
    return host, int(port_text)


def parse_routes(text: str) -> tuple[str, ...]:
    """The comma-separated `nats://host:port` URLs of --routes, validated.

    Raises:
        ClusterError: a URL without host and port, another scheme, or too many.
    """
    routes = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(routes) > routes_max:
        raise ClusterError(f"--routes names {len(routes)} nodes; at most {routes_max}")
    for route in routes:
        parts = urlsplit(route)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("nats", ROUTE_SCHEME) or not parts.hostname or port is None:
            raise ClusterError(
                f"--routes entry {route!r} must be nats://HOST:PORT (a node's cluster listener)",
                "for example --routes nats://10.0.0.2:6222,nats://10.0.0.3:6222",
            )
        if parts.username or parts.password:
            raise ClusterError(
                f"--routes entry {route!r} carries a user: routes authenticate with the "
                "cluster's route secret",
                "drop the user:password part",
            )
    return routes


def is_loopback(host: str) -> bool:
    """Whether `host` binds only this machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve anywhere


def check_exposure(spec: ClusterSpec, client_host: str) -> None:
    """Refuse a cluster that binds beyond loopback without TLS, unless `insecure`.

    Raises:
        ClusterError: naming the address and what to pass.
    """
    listeners = (("--cluster-listen", spec.listen_host), ("--nats-host", client_host))
    check_listeners(listeners, spec.tls, insecure=spec.insecure)


def check_listeners(
    listeners: Sequence[tuple[str, str]], tls: TlsFiles | None, *, insecure: bool
) -> None:
    """Refuse listeners (option, host) beyond loopback without TLS (a server's cert and
    key), unless `insecure`; refuse a cert without its key (or the reverse).

    Raises:
        ClusterError: naming the address (or the missing file) and what to pass.
    """
    if tls is not None and (tls.cert is None or tls.key is None):
        raise ClusterError(
            "--tls-cert and --tls-key go together: a node needs both to serve TLS",
            "pass both (and --tls-ca for the CA the other nodes' certificates are signed by)",
        )
    wide = [(option, host) for option, host in listeners if not is_loopback(host)]
    if wide and tls is None and not insecure:
        option, host = wide[0]
        raise ClusterError(
            f"{option} {host} (beyond loopback) without TLS: passwords and run "
            "data would cross the network in clear",
            "pass --tls-cert/--tls-key/--tls-ca, or --insecure on a network you trust",
        )


def node_count(spec: ClusterSpec) -> int:
    """The nodes the routes name, this one included (listed or not)."""
    own = {f"{spec.listen_host}:{spec.listen_port}"}
    others = {f"{urlsplit(route).hostname}:{urlsplit(route).port}" for route in spec.routes}
    return len(others | own)


def default_replicas(nodes: int) -> int:
    """Copies of each stream: R3 with three nodes or more, else R1 (two copies cannot
    outvote a lost one, so a 2-node cluster gains nothing from R2)."""
    assert nodes >= 1, nodes
    return replicas_clustered if nodes >= replicas_clustered else 1


def check_replicas(replicas: int) -> int:
    """`replicas` if JetStream allows it (1..5), else raise ClusterError."""
    if not 1 <= replicas <= replicas_max:
        raise ClusterError(
            f"--replicas {replicas} is outside 1..{replicas_max} (JetStream's range)",
            "3 survives losing one node; 5 survives two",
        )
    return replicas


# -- the route secret ------------------------------------------------------------------------


def route_secret_path(data_dir: Path) -> Path:
    return data_dir / CREDENTIALS_DIR / ROUTE_SECRET_FILE


def ensure_route_secret(data_dir: Path) -> str:
    """The cluster's route password, generated (0600) on the first clustered start.

    Raises:
        ClusterError: the file exists but cannot be read or is empty.
    """
    path = route_secret_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(route_secret_bytes) + "\n")
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ClusterError(f"route secret {path} cannot be read: {error.strerror}") from None
    if not secret or any(char in secret for char in "\"'\\ \n"):
        raise ClusterError(
            f"route secret {path} is empty or holds quotes or spaces",
            "copy it again from another node of the cluster (dagnats credential export)",
        )
    return secret


# -- the nats-server config ------------------------------------------------------------------


def server_config(spec: ClusterSpec, secret: str, client_host: str) -> str:
    """The config lines a clustered node adds to the embedded server's: its name, the cluster
    block with route auth (and TLS), and client TLS when clients connect from beyond
    loopback with TLS files given."""
    check_cluster_name("--cluster-name", spec.name)
    check_cluster_name("--node-name", spec.node_name)
    routes = [_route_with_auth(route, secret) for route in spec.routes]
    cluster: dict[str, object] = {
        "name": spec.name,
        "listen": f"{spec.listen_host}:{spec.listen_port}",
        "authorization": {"user": ROUTE_USER, "password": secret, "timeout": 2},
        "routes": routes,
    }
    if spec.tls is not None:
        cluster["tls"] = _tls_block(spec.tls)
    lines = [
        f"server_name: {json.dumps(spec.node_name)}",
        "cluster: " + json.dumps(cluster, indent=1),
    ]
    if spec.tls is not None:
        lines.append(client_tls_config(spec.tls))
    return "\n".join(lines) + "\n"


def client_tls_config(tls: TlsFiles) -> str:
    """The server's client `tls` block: every client connection is TLS (loopback too, so a
    client without the CA learns it at its first connect, wherever it is). Clients present
    no certificate of their own: their role credential authenticates them."""
    assert tls.cert is not None and tls.key is not None, "a server needs a cert and a key"
    block: dict[str, object] = {"cert_file": tls.cert, "key_file": tls.key}
    if tls.ca is not None:
        block["ca_file"] = tls.ca
    block["timeout"] = tls_handshake_timeout_s
    return "tls: " + json.dumps(block, indent=1)


def _route_with_auth(route: str, secret: str) -> str:
    parts = urlsplit(route)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{ROUTE_SCHEME}://{ROUTE_USER}:{secret}@{host}:{parts.port}"


def _tls_block(tls: TlsFiles) -> dict[str, object]:
    block: dict[str, object] = {"cert_file": tls.cert, "key_file": tls.key}
    if tls.ca is not None:  # routes are mutual: each node shows its certificate to the other
        block |= {"ca_file": tls.ca, "verify": True}
    return block | {"timeout": tls_handshake_timeout_s}


def absolute_tls(tls: TlsFiles | None) -> TlsFiles | None:
    """`tls` with absolute paths (nats-server reads them from its own config file)."""
    if tls is None:
        return None
    return TlsFiles(cert=_absolute(tls.cert), key=_absolute(tls.key), ca=_absolute(tls.ca))


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())
