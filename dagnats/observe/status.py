"""The facts `dagnats status` shows and the metrics' gauges are set from: the server, the
engines, the projections (position and lag), the workers, the streams and the work queues.

Every fact is read with what the `client` role may read (runtime/roles.py): stream info,
the `dagnats_projections` bucket, the SQLite query tables when they are local. What the client
may not read (consumers of the work queues, the engine's memory) the engine tells: each
serve process keeps an `EngineRecord` in `dagnats_projections` under `engine.<engine id>`,
refreshed every `settings.status_interval_ms` (`publish_record`), with the workers it saw
start an attempt lately. A record older than `settings.status_stale_ms` is an engine that
stopped (shown as such).

This module reads NATS and SQLite and writes only the engine's own record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
from pathlib import Path
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dagnats.runtime.clock import now_ms
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.log_read import holds_any
from dagnats.runtime.queue_anchor import queued
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    DEAD_STREAM,
    HISTORY_STREAM,
    HISTORY_SUBJECTS,
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    TASKS_ANCHOR_SUBJECT,
    TASKS_STREAM,
    WORKFLOWS_BUCKET,
)
from dagnats.runtime.settings import status_stale_ms
from kernel.state import TERMINAL_RUN_STATUSES
from projections.base import read_checkpoints

log = logging.getLogger("dagnats.status")
ENGINE_KEY_PREFIX: Final = "engine."
EVENTS_STREAM: Final = "DAGNATS_EVENTS"  # external_events.EVENTS_STREAM
STREAMS: Final = (
    HISTORY_STREAM, COMMANDS_STREAM, TASKS_STREAM, DEAD_STREAM, EVENTS_STREAM,
    f"KV_{WORKFLOWS_BUCKET}", f"KV_{RUNS_BUCKET}", f"KV_{PROJECTIONS_BUCKET}",
)  # fmt: skip
TASK_SUBJECT_PREFIX: Final = "dagnats.task."
COMMANDS_QUEUE: Final = "commands"
TASK_QUEUE_PREFIX: Final = "task:"
engine_records_max: Final = 64  # engine records `dagnats status` reads


class EngineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one serve process tells of its engine (kept in `dagnats_projections`)."""

    engine_id: str
    host: str
    pid: int
    started_at_ms: int
    updated_at_ms: int
    cached_runs: int = 0
    parked: int = 0
    resume_pending: int = 0
    counters: dict[str, int] = {}
    workers: list[str] = []  # started an attempt within settings.workers_seen_window_ms
    stale: bool = False  # set by the reader: not refreshed within settings.status_stale_ms


class StreamFacts(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    messages: int
    bytes: int
    consumers: int
    last_seq: int


class ProjectionFacts(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: str  # "sqlite" | "kv"
    position: int
    lag: int
    updated_at_ms: int | None = None


class ServerFacts(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    version: str
    streams: int = 0
    consumers: int = 0
    storage_bytes: int = 0
    memory_bytes: int = 0


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `dagnats status` shows (its `--json`), as of `at_ms`."""

    at_ms: int
    server: ServerFacts
    engine: EngineRecord | None  # the freshest record (None: no engine ever told)
    engines: list[EngineRecord]
    projections: list[ProjectionFacts]
    streams: list[StreamFacts]
    queues: dict[str, int]  # "commands" and "task:<type>" -> messages waiting or in flight
    workers: list[str]
    approvals_pending: int | None  # None: the query tables are not here
    # A partitioned deployment (README "Cluster"): engine id -> the partitions it owns.
    partitions: dict[str, list[int]] = {}


def engine_id() -> str:
    """This process's engine id (host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def publish_record(js: JetStreamContext, record: EngineRecord) -> None:
    """Keep this engine's record in `dagnats_projections` (overwritten each time)."""
    kv = await js.key_value(PROJECTIONS_BUCKET)
    await kv.put(ENGINE_KEY_PREFIX + record.engine_id, msgspec.json.encode(record))


async def remove_record(js: JetStreamContext, engine: str) -> None:
    """Delete this engine's record (a clean stop); a failure leaves it to go stale."""

    async def delete() -> None:
        await (await js.key_value(PROJECTIONS_BUCKET)).delete(ENGINE_KEY_PREFIX + engine)

    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await asyncio.wait_for(delete(), timeout=status_stale_ms / 1000)


async def collect(
    nc: NatsClient,
    js: JetStreamContext,
    *,
    url: str,
    sqlite_path: Path | None,
    own: EngineRecord | None = None,
) -> Facts:
    """The facts, read now. `own`: this process's engine record (serve), instead of reading
    the records the engines keep.

    Raises:
        nats.errors.Error: NATS does not answer (its JetStream API).
    """
    at_ms = now_ms()
    streams = await _streams(js)
    history_last = next((s.last_seq for s in streams if s.name == HISTORY_STREAM), 0)
    engines = [own] if own is not None else await _engine_records(js, at_ms)
    live = [engine for engine in engines if not engine.stale]
    freshest = max(engines, key=lambda e: e.updated_at_ms) if engines else None
    account = await js.account_info()
    server = ServerFacts(
        url=url, version=_server_version(nc), streams=account.streams,
        consumers=account.consumers, storage_bytes=account.storage, memory_bytes=account.memory,
    )  # fmt: skip
    return Facts(
        at_ms=at_ms,
        server=server,
        engine=freshest,
        engines=engines,
        projections=await _projections(js, sqlite_path, history_last),
        streams=streams,
        queues=await _queues(js, streams),
        workers=sorted({worker for engine in live for worker in engine.workers}),
        approvals_pending=_approvals_pending(sqlite_path),
        partitions=await _partitions(js),
    )


async def _partitions(js: JetStreamContext) -> dict[str, list[int]]:
    """Who owns which partition ({} when the deployment is not partitioned)."""
    from dagnats.runtime.partitions import owners_by_engine, read_owners

    try:
        return owners_by_engine(await read_owners(js))
    except (nats.errors.Error, TimeoutError):  # no owners bucket, or not readable here
        return {}


def _server_version(nc: NatsClient) -> str:
    version = nc.connected_server_version
    try:
        return f"{version.major}.{version.minor}.{version.patch}"
    except ValueError:  # not a semantic version: as the server wrote it
        return str(version)


async def _streams(js: JetStreamContext) -> list[StreamFacts]:
    found = []
    for name in STREAMS:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            continue
        state = info.state
        found.append(StreamFacts(
            name=name, messages=state.messages, bytes=state.bytes,
            consumers=state.consumer_count, last_seq=state.last_seq,
        ))  # fmt: skip
    return found


async def _queues(js: JetStreamContext, streams: list[StreamFacts]) -> dict[str, int]:
    """Messages waiting or in flight: the commands stream's, and each task type's; not the
    streams' anchors (runtime/queue_anchor: one message each that nobody consumes)."""
    queues: dict[str, int] = {}
    if any(stream.name == COMMANDS_STREAM for stream in streams):
        queues[COMMANDS_QUEUE] = await queued(js, COMMANDS_STREAM)
    if not any(stream.name == TASKS_STREAM and stream.messages for stream in streams):
        return queues
    info = await js.stream_info(TASKS_STREAM, subjects_filter=TASK_SUBJECT_PREFIX + ">")
    for subject, count in sorted((info.state.subjects or {}).items()):
        if subject != TASKS_ANCHOR_SUBJECT:
            queues[TASK_QUEUE_PREFIX + subject.removeprefix(TASK_SUBJECT_PREFIX)] = count
    return queues


async def _engine_records(js: JetStreamContext, at_ms: int) -> list[EngineRecord]:
    kv = await js.key_value(PROJECTIONS_BUCKET)
    keys = await kv_keys(js, PROJECTIONS_BUCKET, ENGINE_KEY_PREFIX.rstrip("."))
    records = []
    for key in sorted(keys)[:engine_records_max]:
        try:
            entry = await kv.get(key)
            record = msgspec.json.decode(entry.value or b"", type=EngineRecord)
        except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
            continue
        stale = at_ms - record.updated_at_ms > status_stale_ms
        records.append(msgspec.structs.replace(record, stale=stale))
    return records


async def projection_lag(js: JetStreamContext, seq: int, history_last: int) -> int:
    """History messages after a projection's checkpoint `seq` that it has still to apply: 0
    when the stream holds none of them any more (the runs appended last were purged before
    it applied them; its checkpoint stays where it is until something else is appended), as
    the projector's own status says (`Projector.lag`). One request, only when behind.

    Raises:
        nats.errors.Error: NATS does not answer.
    """
    behind = max(0, history_last - seq)
    if behind and not await holds_any(js, HISTORY_STREAM, HISTORY_SUBJECTS, seq + 1, history_last):
        return 0
    return behind


async def _projections(
    js: JetStreamContext, sqlite_path: Path | None, history_last: int
) -> list[ProjectionFacts]:
    from dagnats.runtime import projector  # (sqlite-utils: not on serve's path to its engine)

    found: list[ProjectionFacts] = []
    if sqlite_path is not None and sqlite_path.exists():
        database = projector.open_database(sqlite_path, readonly=True)
        try:
            for checkpoint in read_checkpoints(database):
                found.append(ProjectionFacts(
                    name=checkpoint.name, kind="sqlite", position=checkpoint.seq,
                    lag=await projection_lag(js, checkpoint.seq, history_last),
                    updated_at_ms=checkpoint.updated_at_ms,
                ))  # fmt: skip
        finally:
            database.close()
    snapshot = await projector.read_status(js, projector.SNAPSHOTS)
    if snapshot is not None:
        found.append(ProjectionFacts(
            name=projector.SNAPSHOTS, kind="kv", position=snapshot.seq,
            lag=await projection_lag(js, snapshot.seq, history_last),
            updated_at_ms=snapshot.updated_at_ms,
        ))  # fmt: skip
    return sorted(found, key=lambda p: p.name)


def _approvals_pending(sqlite_path: Path | None) -> int | None:
    """Approvals asked and not resolved, of runs that have not ended (query tables)."""
    if sqlite_path is None or not sqlite_path.exists():
        return None
    ended = ", ".join(f"'{status}'" for status in sorted(TERMINAL_RUN_STATUSES))
    sql = (
        "SELECT count(*) FROM approvals JOIN runs ON approvals.run_id = runs.run_id "
        f"WHERE approvals.resolved_at_ms IS NULL AND runs.status NOT IN ({ended})"
    )
    try:
        connection = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = connection.execute(sql).fetchone()
    except sqlite3.Error:  # the tables are not made yet
        return None
    finally:
        connection.close()
    return int(row[0]) if row is not None else None
