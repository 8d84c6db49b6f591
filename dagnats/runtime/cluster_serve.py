"""What `dagnats serve` does differently on a cluster: wait for JetStream's quorum while it
creates the resources, choose the replicas, and set up the partitioned engine's parts.

A clustered start creates the streams and buckets like a single one (idempotently, with the
replica count of the cluster's size) but a cluster that is still electing its meta leader, or
has fewer live nodes than the replicas asked, answers "unavailable": the start retries for up
to `settings.cluster_form_timeout_ms`, saying once that it waits.

This module talks to the JetStream API (resources, the partitions record, one old consumer);
it does not start processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime import cluster, external_events, settings
from dagnats.runtime.credentials import TlsFiles
from dagnats.runtime.nats_server import LOOPBACK_HOST
from dagnats.runtime.partitions import (
    OwnedEventLog,
    OwnedMessage,
    Ownership,
    PartitionedCommands,
    stored_partitions,
)
from dagnats.runtime.queue import JetStreamCommandQueue
from dagnats.runtime.queue_anchor import ensure_anchors, only_anchor_stored
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    ENGINE_CONSUMER,
    HISTORY_STREAM,
    ensure_resources,
    ensure_stream,
)
from kernel.errors import DagnatsError

log = logging.getLogger("dagnats.cluster")
T = TypeVar("T")
retry_interval_s = 0.5


@dataclass(frozen=True)
class Placement:
    """What this serve runs and where: a cluster node's spec (None: a lone server), its
    client listener, the replicas asked, and whether an engine runs here."""

    cluster: cluster.ClusterSpec | None = None
    nats_host: str = LOOPBACK_HOST
    replicas: int | None = None
    engine: bool = True
    partitions: int | None = None  # --partitions: the count a first start stores
    tls: TlsFiles | None = None  # a lone server's client TLS (a node's: cluster.tls)

    def clustered(self, url: str) -> bool:
        """A cluster node, several NATS URLs, or replicas asked: partitioned engines."""
        return self.cluster is not None or "," in url or (self.replicas or 1) > 1

    def stream_replicas(self, url: str) -> int:
        """--replicas, else the cluster's default (R3 from three nodes on: a node's routes,
        or the URLs of --nats-url), else 1."""
        if self.replicas is not None:
            return self.replicas
        if self.cluster is not None:
            return cluster.default_replicas(cluster.node_count(self.cluster))
        return cluster.default_replicas(len([part for part in url.split(",") if part.strip()]))

    def server_config(self, data_dir: Path) -> str:
        """The embedded server's cluster block (a lone server: its client TLS, or "")."""
        if self.cluster is None:
            return cluster.client_tls_config(self.tls) if self.tls is not None else ""
        secret = cluster.ensure_route_secret(data_dir)
        return cluster.server_config(self.cluster, secret, self.nats_host)


class PartitionedSource:
    """`protocols.CommandQueue` of a partitioned engine: fetches from its partitions,
    publishes like the connection's queue."""

    def __init__(self, commands: PartitionedCommands, publisher: JetStreamCommandQueue) -> None:
        self.commands = commands
        self.publisher = publisher

    async def fetch_commands(self, *, batch: int, timeout_ms: int) -> Sequence[OwnedMessage]:
        return await self.commands.fetch_commands(batch=batch, timeout_ms=timeout_ms)

    def held(self) -> list[OwnedMessage]:
        """What the partitions' pumps buffered and no fetch took yet (the engine's pump keeps
        it in progress: runtime/command_pump `keep_in_progress`)."""
        return self.commands.held()

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        await self.publisher.publish_command(run_id, payload, msg_id, token=token)


class ClusterNotFormedError(DagnatsError):
    """JetStream did not answer within the cluster's formation time."""

    hint = "start the other nodes (a cluster needs a majority of its nodes), or see their logs"

    def __init__(self, what: str, timeout_ms: int, last_error: str) -> None:
        super().__init__(
            f"the NATS cluster did not {what} within {timeout_ms} ms (last answer: {last_error})"
        )


async def until_formed(
    what: str, step: Callable[[], Awaitable[T]], timeout_ms: int = settings.cluster_form_timeout_ms
) -> T:
    """Run `step` until it does not fail for want of a quorum, within timeout_ms.

    Raises:
        ClusterNotFormedError: the last failure, after timeout_ms.
    """
    assert timeout_ms > 0
    deadline = time.monotonic() + timeout_ms / 1000
    said = False
    while True:
        try:
            return await step()
        except (nats.errors.Error, TimeoutError) as error:
            if isinstance(error, nats.js.errors.NotFoundError):
                raise
            if time.monotonic() >= deadline:
                raise ClusterNotFormedError(what, timeout_ms, str(error) or "timeout") from None
            if not said:
                log.warning("waiting for the NATS cluster to %s (%s)", what, error or "timeout")
                said = True
        await asyncio.sleep(retry_interval_s)


async def ensure_cluster_resources(js: JetStreamContext, replicas: int) -> None:
    """Every stream and bucket with `replicas` copies (idempotent; waits for the quorum)."""

    async def create() -> None:
        await ensure_resources(js, replicas=replicas)
        config = external_events.stream_config(replicas)
        await ensure_stream(js, config, note_replicas=True)

    await until_formed("create its streams", create)
    await ensure_anchors(js)  # the work queues keep their last block (queue_anchor)


@dataclass(frozen=True)
class PartitionedParts:
    """A partitioned engine's ownership, history log (owner headers) and command source."""

    ownership: Ownership
    history: OwnedEventLog
    commands: PartitionedCommands


class PartitionCountError(DagnatsError):
    """`--partitions` asks for a count this deployment cannot take; `hint` says what can."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


async def settle_partitions(
    js: JetStreamContext, *, asked: int | None, first_start: bool
) -> int | None:
    """The deployment's partition count: the stored one, else stored now (`asked`, else the
    default) when this start is partitioned (`first_start`: clustered) or asks a count;
    None for an unpartitioned deployment.

    Raises:
        PartitionCountError: `asked` differs from the stored count, or a count other than
            the default is asked of streams that already hold commands under the default.
    """
    assert asked is None or 1 <= asked <= settings.partitions_max, asked
    stored = await until_formed(
        "read the partition count", lambda: stored_partitions(js, create_with=None)
    )
    if stored is None and asked is None and not first_start:
        return None
    if stored is None:
        count = asked or settings.partitions_default
        used = await until_formed("answer", lambda: _has_commands(js))
        if count != settings.partitions_default and used:
            raise PartitionCountError(
                f"--partitions {count}: this deployment's streams already hold runs under "
                f"the default partition count {settings.partitions_default} (the count is "
                "chosen at the first start)",
                f"drop --partitions, or pass --partitions {settings.partitions_default}",
            )
        stored = await until_formed(
            "store the partition count", lambda: stored_partitions(js, create_with=count)
        )
        assert stored is not None
    if asked is not None and asked != stored:  # (also a concurrent first start's other count)
        raise PartitionCountError(
            f"--partitions {asked} differs from this deployment's partition count {stored} "
            "(stored at its first start; it never changes)",
            f"drop --partitions, or pass --partitions {stored}",
        )
    return stored


async def _has_commands(js: JetStreamContext) -> bool:
    """Whether a command or a history message was ever stored (a used deployment); the
    commands stream's anchor alone (runtime/queue_anchor) is no command."""
    for stream in (COMMANDS_STREAM, HISTORY_STREAM):
        info = await js.stream_info(stream)
        if info.state.last_seq > 0 and not await only_anchor_stored(js, stream):
            return True
    return False


async def partitioned_parts(
    js: JetStreamContext, count: int | None, *, engine_id: str = ""
) -> PartitionedParts | None:
    """The partitioned engine's parts when the deployment is partitioned (`count`, from
    `settle_partitions`), else None.

    The single engine consumer of an unpartitioned deployment (`dagnats_engine`, filter
    `dagnats.cmd.>`) would overlap the partitions' consumers on the work-queue stream, so it
    is deleted here; its commands not yet acked stay in the stream for the partitions."""
    if count is None:
        return None
    try:
        await js.delete_consumer(COMMANDS_STREAM, ENGINE_CONSUMER)
        log.warning("deleted the unpartitioned engine consumer %s", ENGINE_CONSUMER)
    except nats.js.errors.NotFoundError:
        pass
    ownership = Ownership(js, count, engine_id=engine_id)
    return PartitionedParts(
        ownership=ownership,
        history=OwnedEventLog(js, ownership),
        commands=PartitionedCommands(js, ownership),
    )
