"""The deployment's partition count, as every connection reads it (README "Cluster").

The count is chosen at the first partitioned start (`dagnats serve --partitions N`, else
`settings.partitions_default`) and stored once, create-only, in the cluster bucket
(`dagnats_cluster`, key `partitions`: runtime/partitions.stored_partitions). A command's
subject carries `partition_of(run_id, count)`, so whoever publishes commands (clients,
workers, the engine, timers) must use the stored count: each connection reads it once with a
message get (a permission every role has) and keeps it, since it never changes. A deployment
with no stored count (one unpartitioned engine) uses the default; that absence is read again
after `settings.partitions_recheck_ms` (a cluster's first start may store it meanwhile).

This module reads one KV message; it writes nothing.
"""

from __future__ import annotations

import time
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.resources import CLUSTER_BUCKET

PARTITIONS_KEY: Final = "partitions"
CLUSTER_KV_STREAM: Final = f"KV_{CLUSTER_BUCKET}"
PARTITIONS_SUBJECT: Final = f"$KV.{CLUSTER_BUCKET}.{PARTITIONS_KEY}"


class PartitionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster bucket's `partitions` value."""

    count: int


def decode_count(data: bytes) -> int:
    """The count of a stored record (asserted within 1..settings.partitions_max)."""
    count = msgspec.json.decode(data, type=PartitionRecord).count
    assert 1 <= count <= settings.partitions_max, count
    return count


async def read_partition_count(js: JetStreamContext) -> int | None:
    """The stored partition count, None when none is stored (or no cluster bucket exists).

    Raises:
        nats.errors.Error: the server did not answer (an outage: the caller's publish
            would fail too).
    """
    try:
        found = await js.get_last_msg(CLUSTER_KV_STREAM, PARTITIONS_SUBJECT)
    except nats.js.errors.NotFoundError:
        return None
    if not found.data:  # a delete marker: never written by DagNats, read as none
        return None
    return decode_count(found.data)


class PartitionCount:
    """One connection's view of the partition count: read once, then kept."""

    def __init__(self, js: JetStreamContext, fixed: int | None = None) -> None:
        assert fixed is None or 1 <= fixed <= settings.partitions_max, fixed
        self.js = js
        self._count = fixed
        self._default_until = 0.0  # monotonic time until which "none stored" is trusted

    def known(self, count: int) -> None:
        """Keep `count` (serve learnt it while storing or checking the record)."""
        assert 1 <= count <= settings.partitions_max, count
        self._count = count

    async def get(self) -> int:
        """The stored count, else `settings.partitions_default`."""
        if self._count is not None:
            return self._count
        if time.monotonic() < self._default_until:
            return settings.partitions_default
        stored = await read_partition_count(self.js)
        if stored is not None:
            self._count = stored
            return stored
        self._default_until = time.monotonic() + settings.partitions_recheck_ms / 1000
        return settings.partitions_default
