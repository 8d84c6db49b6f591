"""The worker directory: which workers are live, what they serve, how busy they are.

A KV bucket (`dagnats_workers`, made by serve with a TTL of `worker_directory_ttl_ms`) holds
one entry per worker process under `<credential user>.<worker id>`: its task types, groups,
concurrency, in-flight count and last heartbeat. Each worker rewrites its own entry every
`beat_interval_ms` (dagnats/worker_groups.py) and deletes it when it stops; nats-server lets
a worker credential write only under its own user (runtime/roles). A reader counts an entry
live while its last heartbeat is within `worker_beat_misses_max` of its intervals, so a killed
worker leaves the list within a few seconds, and the bucket drops it for good after the TTL.

`dagnats workers list`, `GET /v1/workers` and `run show` (a task waiting for a group no live
worker serves) read it. This module does I/O on that bucket only.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.resources import WORKERS_BUCKET

KV_OPERATION_HEADER: Final = "KV-Operation"
_NOT_A_TOKEN: Final = re.compile(r"[^A-Za-z0-9_-]")
key_part_length_max: Final = 120
publish_timeout_s: Final = 2.0


class WorkerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One worker process as it last described itself."""

    worker_id: str
    user: str
    task_types: tuple[str, ...]
    groups: tuple[str, ...] = ()
    concurrency: int
    in_flight: int
    heartbeat_ms: int
    beat_interval_ms: int
    started_ms: int

    def live(self, now_ms: int) -> bool:
        """Whether its last heartbeat is recent enough to count it as running."""
        return now_ms - self.heartbeat_ms <= self.beat_interval_ms * settings.worker_beat_misses_max

    def serves(self, task_type: str, group: str) -> bool:
        """Whether it takes tasks of `task_type` for worker group `group` ("": ungrouped)."""
        if task_type not in self.task_types:
            return False
        return group in self.groups if self.groups else not group


def key_part(text: str) -> str:
    """`text` as one KV key token (anything but A-Z a-z 0-9 _ - becomes '_')."""
    return _NOT_A_TOKEN.sub("_", text)[:key_part_length_max] or "_"


def entry_key(user: str, worker_id: str) -> str:
    """The worker's key: under its credential's user, which its permission pins."""
    return f"{key_part(user or 'open')}.{key_part(worker_id)}"


class DirectoryWriter:
    """Writes and deletes one worker's entry (a KV put is a JetStream publish on
    `$KV.<bucket>.<key>`, so a worker needs only that subject, not the bucket's API)."""

    def __init__(self, js: JetStreamContext, user: str) -> None:
        self.js = js
        self.user = user

    def subject(self, worker_id: str) -> str:
        return f"$KV.{WORKERS_BUCKET}.{entry_key(self.user, worker_id)}"

    def connected(self) -> bool:
        """Whether the NATS connection is up (while it is down, its own outage lines say so)."""
        nc = getattr(self.js, "_nc", None)
        return bool(getattr(nc, "is_connected", True))

    async def put(self, entry: WorkerEntry) -> None:
        """Write the entry (raises what the publish raises: no bucket, no permission)."""
        await self.js.publish(
            self.subject(entry.worker_id), msgspec.json.encode(entry), timeout=publish_timeout_s
        )

    async def remove(self, worker_id: str) -> None:
        """Delete the entry (a stopped worker leaves the list at once)."""
        await self.js.publish(
            self.subject(worker_id), b"", headers={KV_OPERATION_HEADER: "DEL"},
            timeout=publish_timeout_s,
        )  # fmt: skip


async def list_workers(
    js: JetStreamContext, now_ms: int, *, include_stale: bool = False
) -> list[WorkerEntry]:
    """The workers in the directory, live ones only unless `include_stale`, by user and id;
    [] when the bucket does not exist yet (no serve made it) or is empty."""
    try:
        kv = await js.key_value(WORKERS_BUCKET)
    except nats.js.errors.NotFoundError:
        return []
    keys = await kv_keys(js, WORKERS_BUCKET)
    entries: list[WorkerEntry] = []
    for key in sorted(keys)[: settings.workers_listed_max]:
        try:
            found = await kv.get(key)
        except nats.js.errors.NotFoundError:
            continue  # deleted meanwhile
        if not found.value:
            continue
        try:
            entry = msgspec.json.decode(found.value, type=WorkerEntry)
        except msgspec.DecodeError:
            continue  # not one of ours: left for the TTL
        if include_stale or entry.live(now_ms):
            entries.append(entry)
    assert len(entries) <= settings.workers_listed_max
    return entries


def serving(entries: list[WorkerEntry], task_type: str, group: str) -> list[WorkerEntry]:
    """The entries that serve `task_type` in `group`."""
    return [entry for entry in entries if entry.serves(task_type, group)]


__all__ = [
    "DirectoryWriter",
    "WorkerEntry",
    "entry_key",
    "list_workers",
    "serving",
]
