"""The cluster side of the CLI: `serve`'s cluster and placement options, `dagnats admin
replicas|stepdown`, and `dagnats credential export|import` (README "Cluster").

Imports `dagnats.cli.common` and the runtime, never `dagnats.cli`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Final

import typer

from dagnats.cli.common import DataDirOption, JsonOption, UrlOption, fail, out, run_async
from dagnats.runtime import cluster, credentials, settings
from dagnats.runtime.cluster_serve import Placement
from dagnats.runtime.connection import ConnectError, Connection, default_data_dir
from dagnats.runtime.nats_server import LOOPBACK_HOST
from dagnats.runtime.resources import HISTORY_STREAM, set_replicas

STEPDOWN_API: Final = "$JS.API.STREAM.LEADER.STEPDOWN"
api_timeout_s: Final = 10.0

ClusterOption = Annotated[
    bool, typer.Option("--cluster", help="Run the embedded NATS as a node of a cluster.")
]
ClusterNameOption = Annotated[
    str, typer.Option("--cluster-name", help="The cluster's name (the same on every node).")
]
NodeNameOption = Annotated[
    str | None, typer.Option("--node-name", help="This node's name (unique; default: host).")
]
RoutesOption = Annotated[
    str | None,
    typer.Option(
        "--routes", metavar="URLS", help="The nodes' cluster listeners: nats://host:port,..."
    ),
]
ClusterListenOption = Annotated[
    str,
    typer.Option("--cluster-listen", metavar="ADDR", help="This node's route listener HOST:PORT."),
]
NatsHostOption = Annotated[
    str,
    typer.Option("--nats-host", help="Where the embedded NATS listens for clients (loopback)."),
]
ReplicasOption = Annotated[
    int | None,
    typer.Option(
        "--replicas", help="Copies of each new stream (default: 3 with 3+ nodes, else 1)."
    ),
]
InsecureOption = Annotated[
    bool, typer.Option("--insecure", help="Bind beyond loopback without TLS (trusted networks).")
]
EngineOnlyOption = Annotated[
    bool, typer.Option("--engine-only", help="Run the engine only (no NATS, no HTTP): --nats-url.")
]
NoEngineOption = Annotated[
    bool, typer.Option("--no-engine", help="Run NATS (and HTTP) only; engines run elsewhere.")
]
CredentialsFromOption = Annotated[
    Path | None,
    typer.Option(
        "--credentials-from", metavar="DIR", help="Take the cluster's credentials from DIR."
    ),
]
PartitionsOption = Annotated[
    int | None,
    typer.Option(
        "--partitions",
        help="Partitions of the commands, chosen at the first start and stored (default "
        f"{settings.partitions_default}; at most {settings.partitions_max}); later starts "
        "read the stored count.",
    ),
]
CLUSTER_LISTEN_DEFAULT: Final = f"{LOOPBACK_HOST}:6222"


def placement(
    *,
    clustered: bool,
    name: str,
    node_name: str | None,
    routes: str | None,
    listen: str,
    nats_host: str,
    replicas: int | None,
    insecure: bool,
    engine_only: bool,
    no_engine: bool,
    nats_url: str | None,
    partitions: int | None = None,
) -> Placement:
    """The serve's Placement from its options; a wrong combination exits 2 with a hint."""
    if engine_only and no_engine:
        raise fail("--engine-only and --no-engine exclude each other", "pass one of them", 2)
    if engine_only and nats_url is None:
        raise fail("--engine-only needs --nats-url", "name the cluster's NATS URLs", 2)
    if not clustered and (routes is not None or node_name is not None):
        raise fail("--routes and --node-name need --cluster", "add --cluster", 2)
    if partitions is not None and not 1 <= partitions <= settings.partitions_max:
        raise fail(
            f"--partitions {partitions} is outside 1..{settings.partitions_max} "
            "(settings.partitions_max)",
            f"the default, {settings.partitions_default}, suits up to a few engines",
            2,
        )
    try:
        if replicas is not None:
            cluster.check_replicas(replicas)
        tls = cluster.absolute_tls(credentials.TlsFiles.from_env())
        if not clustered:
            # (a CA alone is a client's setting; a cert or key asks this server to serve TLS)
            served = tls if tls is not None and (tls.cert or tls.key) else None
            if nats_url is None:  # (an external server's TLS is that server's business)
                listeners = (("--nats-host", nats_host),)
                cluster.check_listeners(listeners, served, insecure=insecure)
            return Placement(
                nats_host=nats_host, replicas=replicas, engine=not no_engine,
                partitions=partitions, tls=served if nats_url is None else None,
            )  # fmt: skip
        host, port = cluster.parse_listen(listen)
        spec = cluster.ClusterSpec(
            name=cluster.check_cluster_name("--cluster-name", name),
            node_name=cluster.check_cluster_name("--node-name", node_name or _host_name()),
            listen_host=host,
            listen_port=port,
            routes=cluster.parse_routes(routes or ""),
            tls=tls,
            insecure=insecure,
        )
        cluster.check_exposure(spec, nats_host)
    except cluster.ClusterError as error:
        raise fail(str(error), error.hint, 2) from None
    return Placement(
        cluster=spec, nats_host=nats_host, replicas=replicas, engine=not no_engine,
        partitions=partitions,
    )  # fmt: skip


def _host_name() -> str:
    import os
    import re

    return re.sub(r"[^A-Za-z0-9_-]", "_", os.uname().nodename)[:64] or "node"


# -- sharing credentials ---------------------------------------------------------------------


def copy_credentials(source: Path, data_dir: Path) -> list[Path]:
    """Copy a cluster's credentials (the role files and the route secret) from `source` (a
    data dir or its credentials dir) into `data_dir`, 0600; the same files are kept, others
    already there refuse.

    Raises:
        CredentialError: nothing to copy, or a file there differs.
    """
    origin = source / credentials.CREDENTIALS_DIR if (source / "credentials").is_dir() else source
    files = sorted([*origin.glob("*.json"), *origin.glob("*.secret")])
    if not any(path.name == "engine.json" for path in files):
        raise credentials.CredentialError(
            f"{origin} holds no engine.json: not a DagNats credentials dir",
            "pass the data dir (or its credentials dir) of a node of the cluster",
        )
    target = credentials.credentials_dir(data_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    copied: list[Path] = []
    for path in files:
        destination = target / path.name
        if destination.exists():
            if destination.read_bytes() != path.read_bytes():
                raise credentials.CredentialError(
                    f"{destination} exists and differs from {path}: this data dir has "
                    "credentials of another deployment",
                    "start from an empty data dir, or remove its credentials dir",
                )
            continue
        shutil.copyfile(path, destination)
        destination.chmod(0o600)
        copied.append(destination)
    return copied


def share_credentials(source: Path | None, data_dir: Path) -> None:
    """`serve --credentials-from DIR`: copy them in before the server starts."""
    if source is None:
        return
    try:
        copy_credentials(source.expanduser(), data_dir.expanduser().absolute())
    except (credentials.CredentialError, OSError) as error:
        raise fail(f"--credentials-from {source}: {error}", getattr(error, "hint", "")) from None


def register_credentials(credential_app: typer.Typer) -> None:
    """Add `credential export` and `credential import`."""

    @credential_app.command("export")
    def export(directory: Path, data_dir: DataDirOption = None) -> None:
        """Copy this data dir's credentials (and route secret) into DIRECTORY (0700), for the
        other nodes of a cluster (`credential import` or `serve --credentials-from`)."""
        source = data_dir or default_data_dir()
        try:
            copied = copy_credentials(source, directory)
        except (credentials.CredentialError, OSError) as error:
            raise fail(str(error), getattr(error, "hint", "")) from None
        out.print(f"exported {len(copied)} file(s) to {directory} (keep it private)")

    @credential_app.command("import")
    def import_(directory: Path, data_dir: DataDirOption = None) -> None:
        """Take a cluster's credentials from DIRECTORY into this data dir (before serve)."""
        try:
            copied = copy_credentials(directory, data_dir or default_data_dir())
        except (credentials.CredentialError, OSError) as error:
            raise fail(str(error), getattr(error, "hint", "")) from None
        out.print(f"imported {len(copied)} file(s)")


# -- dagnats admin ---------------------------------------------------------------------------

admin_app = typer.Typer(
    help="Cluster administration with the admin credential (replicas, leader step-down).",
    no_args_is_help=True,
)


@admin_app.command("replicas")
def replicas_command(
    count: Annotated[int, typer.Argument(help="Copies of each stream: 1..5 (3 survives one).")],
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the replicas of every DagNats stream and bucket (JetStream copies the data)."""
    try:
        cluster.check_replicas(count)
    except cluster.ClusterError as error:
        raise fail(str(error), error.hint, 2) from None

    async def main() -> list[tuple[str, int, int]]:
        from dagnats.runtime.external_events import EVENTS_STREAM

        connection = await _admin(nats_url)
        try:
            return await set_replicas(connection.js, count, extra=(EVENTS_STREAM,))
        finally:
            await connection.close()

    changed = run_async(main())
    if as_json:
        import json

        rows = [{"stream": s, "before": b, "after": a} for s, b, a in changed]
        out.print(json.dumps(rows), highlight=False, soft_wrap=True)
        return
    for stream, before, after in changed:
        out.print(f"{stream:<28} {before} -> {after}", highlight=False)


@admin_app.command("stepdown")
def stepdown_command(
    stream: Annotated[str, typer.Argument(help="The stream whose RAFT leader steps down.")] = (
        HISTORY_STREAM
    ),
    nats_url: UrlOption = None,
) -> None:
    """Ask a stream's RAFT leader to step down (another replica leads; nothing is lost)."""

    async def main() -> str:
        connection = await _admin(nats_url)
        try:
            reply = await connection.nc.request(
                f"{STEPDOWN_API}.{stream}", b"", timeout=api_timeout_s
            )
            return reply.data.decode()
        finally:
            await connection.close()

    answer = run_async(main())
    if '"success":true' not in answer.replace(" ", ""):
        raise fail(f"step-down of {stream} refused: {answer}", "is the stream replicated (R3)?")
    out.print(f"{stream}: leader stepped down", highlight=False)


async def _admin(nats_url: str | None) -> Connection:
    try:
        return await Connection.open(nats_url, role="admin")
    except ConnectError as error:
        raise fail(str(error), error.hint) from None
