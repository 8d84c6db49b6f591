"""The projector: runs projections against the history stream (catch up, then tail live).

A `Projector` follows `DAGNATS_HISTORY` from a target's checkpoint with an ordered consumer
(`JetStreamEventLog.tail`), hands it bounded batches, and measures position, lag and rate. The
targets say where a projection lives:

- `SqliteTarget`: a `projections.base.SqliteProjection` in a SQLite file (by default
  `<data dir>/dagnats.sqlite`); its checkpoint is written in the same transaction as its rows.
- `SnapshotTarget`: run snapshots in the `dagnats_runs` KV bucket (`projections.snapshot`);
  its checkpoint is a key of `dagnats_projections`. Each snapshot carries its own last sequence,
  so a batch applied twice after a crash changes nothing.

Every projector also mirrors its status (position, lag, rate) into `dagnats_projections` for
`dagnats projection status`. A rebuild (`projection rebuild NAME`) moves the stored checkpoint
back; the running projector sees it at its next batch (or idle check) and starts over.

This module reads the history stream and writes KV and SQLite; it never writes history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol, cast

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from sqlite_utils import Database

from dagnats.loading import load_attribute
from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.resources import (
    HISTORY_STREAM,
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    BucketSpec,
    check_token,
    ensure_bucket,
)
from kernel import codec
from kernel.errors import DagnatsError
from kernel.events import Decision
from kernel.state import INITIAL_STATE, RunState
from projections.base import (
    CheckpointMovedError,
    Message,
    SqliteProjection,
    SqliteRunner,
    batch_messages_max,
    read_checkpoint,
)
from projections.snapshot import (
    SCHEMA,
    Snapshot,
    SnapshotFolder,
    decode_snapshot,
    encode_snapshot,
    fold_messages,
)

log = logging.getLogger("dagnats.projector")

SQLITE_FILE: Final = "dagnats.sqlite"
SNAPSHOTS: Final = "snapshots"
STATUS_PREFIX: Final = "status."
idle_check_ms: Final = 500  # how often an idle projector looks for a rebuild or a stop
status_interval_ms: Final = 1_000  # how often the status is mirrored into KV
retry_delay_ms: Final = 1_000  # after a failed batch, before starting again
sqlite_busy_timeout_s: Final = 30.0
snapshot_puts_in_flight_max: Final = 256
name_length_max: Final = 64


class ProjectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What `projection status` shows; kept in `dagnats_projections` (see `status_key`)."""

    name: str
    kind: str  # "sqlite" | "kv"
    version: str
    seq: int
    lag: int = 0
    events_per_s: float = 0.0
    events: int = 0
    updated_at_ms: int = 0
    where: str = ""


class ProjectionTarget(Protocol):
    """Where a projection lives; the Projector feeds it batches."""

    name: str
    kind: str
    version: str
    where: str

    async def open(self) -> int:
        """Prepare (rebuilding on a version change); the sequence to resume after."""
        ...

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        """Apply a batch atomically with its checkpoint; (new checkpoint, events applied).

        Raises:
            CheckpointMovedError: the stored checkpoint is not after_seq (rebuilt meanwhile).
        """
        ...

    async def stored_seq(self) -> int:
        """The stored checkpoint (0 when none)."""
        ...

    async def close(self) -> None: ...


def check_name(name: str) -> str:
    """A projection name is a KV key and a SQLite-safe word."""
    return check_token("projection name", name, name_length_max)


# -- SQLite ------------------------------------------------------------------------------


def open_database(path: Path, *, readonly: bool = False) -> Database:
    """A SQLite database for projections (WAL, usable from a worker thread), or read-only.

    Raises:
        DagnatsError: a read-only open of a file that does not exist.
    """
    if readonly:
        if not path.exists():
            raise DagnatsError(f"{path} does not exist (no projection has written it yet)")
        connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False,
            timeout=sqlite_busy_timeout_s,
        )  # fmt: skip
        connection.execute("PRAGMA query_only = ON")
        return Database(connection)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False, timeout=sqlite_busy_timeout_s)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    return Database(connection)


class SqliteTarget:
    """A SqliteProjection in a SQLite file; batches run in a worker thread."""

    kind = "sqlite"

    def __init__(self, path: Path, projection: SqliteProjection) -> None:
        self.name = check_name(projection.name)
        self.version = str(projection.version)
        self.path = path
        self.where = str(path)
        self.projection = projection
        self.db: Database | None = None
        self.runner: SqliteRunner | None = None

    async def open(self) -> int:
        if self.db is None:
            self.db = open_database(self.path)
            self.runner = SqliteRunner(self.db, self.projection)
        runner = self.runner
        assert runner is not None
        return await asyncio.to_thread(runner.open, now_ms())

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        runner = self.runner
        assert runner is not None, "open first"
        result = await asyncio.to_thread(
            runner.apply_batch, messages, after_seq=after_seq, now_ms=now_ms()
        )
        problems = [*result.problems, *_drain_problems(self.projection)]
        for problem in problems[:10]:
            log.warning("projection %s: %s", self.name, problem)
        return result.seq, result.applied

    async def stored_seq(self) -> int:
        if self.db is None:
            return 0
        stored = await asyncio.to_thread(read_checkpoint, self.db, self.projection.name)
        return stored.seq if stored is not None and str(stored.version) == self.version else 0

    async def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
            self.runner = None


def _drain_problems(projection: object) -> list[str]:
    problems = getattr(projection, "problems", None)
    if not isinstance(problems, list):
        return []
    drained = [str(problem) for problem in problems]
    problems.clear()
    return drained


# -- KV snapshots --------------------------------------------------------------------------


class KvSnapshotStore:
    """Run snapshots in the `dagnats_runs` bucket; any failure to read is "no snapshot"."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(RUNS_BUCKET)
        return self._kv

    async def get(self, run_id: str) -> Snapshot | None:
        """The run's usable snapshot, or None (missing, corrupt, old schema, no bucket)."""
        try:
            entry = await (await self.bucket()).get(run_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError):
            self._kv = None  # the bucket may have been deleted: look it up again next time
            return None
        return decode_snapshot(entry.value, run_id)

    async def put_many(self, snapshots: Sequence[Snapshot]) -> None:
        """Store snapshots (pipelined, a bounded number in flight)."""
        kv = await self.bucket()
        slots = asyncio.Semaphore(snapshot_puts_in_flight_max)

        async def put(snapshot: Snapshot) -> None:
            async with slots:
                await kv.put(snapshot.run_id, encode_snapshot(snapshot))

        await asyncio.gather(*(put(snapshot) for snapshot in snapshots))


class SnapshotTarget:
    """The snapshot projection: folds runs and writes their snapshots to KV."""

    kind = "kv"
    name = SNAPSHOTS
    version = SCHEMA
    where = f"KV {RUNS_BUCKET}"

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.store = KvSnapshotStore(js)
        self.history = JetStreamEventLog(js)
        self.folder = SnapshotFolder()
        self._events_total = 0

    async def _checkpoints(self) -> KeyValue:
        return await self.js.key_value(PROJECTIONS_BUCKET)

    async def open(self) -> int:
        self.folder.clear()
        self.store._kv = None
        await ensure_bucket(self.js, BucketSpec(PROJECTIONS_BUCKET, 1), replicas=1)
        try:
            await self.js.stream_info(f"KV_{RUNS_BUCKET}")
        except nats.js.errors.NotFoundError:
            log.info("bucket %s is missing: rebuilding every snapshot", RUNS_BUCKET)
            await ensure_bucket(self.js, BucketSpec(RUNS_BUCKET, 1), replicas=1)
            await self._write_checkpoint(0, 0, 0.0, 0)
            return 0
        return await self.stored_seq()

    async def stored_seq(self) -> int:
        status = await read_status(self.js, SNAPSHOTS)
        if status is None or status.version != SCHEMA:
            self._events_total = 0
            return 0
        self._events_total = status.events
        return status.seq

    async def _write_checkpoint(self, seq: int, lag: int, rate: float, events: int) -> None:
        status = ProjectionStatus(
            name=SNAPSHOTS, kind=self.kind, version=SCHEMA, seq=seq, lag=lag,
            events_per_s=rate, events=events, updated_at_ms=now_ms(), where=self.where,
        )  # fmt: skip
        await (await self._checkpoints()).put(SNAPSHOTS, codec.encode(status))

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        stored = await self.stored_seq()
        if stored != after_seq:
            raise CheckpointMovedError(SNAPSHOTS, after_seq, stored)
        decoded: list[tuple[int, str, Decision]] = []
        events = 0
        for seq, run_id, data in messages:
            try:
                decision = codec.decode_decision(data)
            except DagnatsError as error:
                log.warning("snapshots: message %d of run %s skipped: %s", seq, run_id, error)
                continue
            decoded.append((seq, run_id, decision))
            events += len(decision.events)
        for run_id in self.folder.to_load(decoded):
            await self._load(run_id)
        due = self.folder.apply(decoded)
        for problem in self.folder.problems[:10]:
            log.warning("snapshots: %s", problem)
        self.folder.problems.clear()
        await self.store.put_many(due)
        self.folder.written(due)
        last_seq = max([after_seq, *(message[0] for message in messages)])
        self._events_total += events
        await self._write_checkpoint(last_seq, 0, 0.0, self._events_total)
        return last_seq, events

    async def _load(self, run_id: str) -> None:
        """Seed the folder with the run's snapshot + tail (or its whole history)."""
        snapshot = await self.store.get(run_id)
        state, last_seq = (snapshot.state, snapshot.last_seq) if snapshot else (INITIAL_STATE, 0)
        try:
            tail = [item async for item in self.history.read(run_id, after_seq=last_seq)]
            state, last_seq = fold_messages(state, last_seq, tail)
        except (DagnatsError, AssertionError) as error:
            log.warning("snapshots: run %s does not fold (%s); skipped", run_id, error)
            return
        self.folder.seed(run_id, state, last_seq, stored=snapshot)

    async def close(self) -> None:
        self.folder.clear()


def status_key(name: str) -> str:
    """The `dagnats_projections` key of a projector's status (`status.<name>`); the snapshot
    projection's checkpoint is the key `snapshots` itself."""
    return f"{STATUS_PREFIX}{name}"


async def read_status(js: JetStreamContext, key: str) -> ProjectionStatus | None:
    """A ProjectionStatus kept in `dagnats_projections` under `key`, or None."""
    try:
        entry = await (await js.key_value(PROJECTIONS_BUCKET)).get(key)
    except (nats.errors.Error, TimeoutError):
        return None
    if not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=ProjectionStatus)
    except msgspec.DecodeError:
        return None


async def stream_last_seq(js: JetStreamContext) -> int:
    """The last sequence of the history stream (0 when empty)."""
    info = await js.stream_info(HISTORY_STREAM)
    return int(info.state.last_seq)


# -- the runner ----------------------------------------------------------------------------


class Projector:
    """Feeds one target from the history stream: catch up from its checkpoint, then tail."""

    def __init__(
        self,
        js: JetStreamContext,
        target: ProjectionTarget,
        *,
        batch_max: int = batch_messages_max,
        idle_ms: int = idle_check_ms,
    ) -> None:
        assert 1 <= batch_max <= batch_messages_max, batch_max
        assert idle_ms > 0
        self.js = js
        self.target = target
        self.batch_max = batch_max
        self.idle_s = idle_ms / 1000
        self.history = JetStreamEventLog(js)
        self.position = 0
        self.events = 0
        self.rate = 0.0
        self._window_started = time.monotonic()
        self._window_events = 0
        self._status_due = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until `stop` is set; failures are logged and retried."""
        while not stop.is_set():
            try:
                self.position = await self.target.open()
                await self._follow(stop, until_seq=None)
            except CheckpointMovedError as moved:
                log.info("projection %s: %s; starting over", self.target.name, moved)
            except Exception as error:  # a bad batch must not end the projector for good
                log.warning("projection %s failed (%s); retrying", self.target.name, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry_delay_ms / 1000)
        await self._write_status()

    async def catch_up(self) -> int:
        """Apply everything up to the stream's last sequence as of now; return the checkpoint."""
        self.position = await self.target.open()
        until = await stream_last_seq(self.js)
        if until > self.position:
            await self._follow(asyncio.Event(), until_seq=until)
        await self._write_status()
        return self.position

    async def _follow(self, stop: asyncio.Event, until_seq: int | None) -> None:
        queue: asyncio.Queue[Message] = asyncio.Queue(self.batch_max * 2)
        pump = asyncio.create_task(self._pump(self.position, queue))
        try:
            while not stop.is_set():
                if until_seq is not None and self.position >= until_seq:
                    return
                try:
                    first = await asyncio.wait_for(queue.get(), self.idle_s)
                except TimeoutError:
                    await self._idle(pump, until_seq)
                    continue
                batch = [first]
                while len(batch) < self.batch_max and not queue.empty():
                    batch.append(queue.get_nowait())
                seq, applied = await self.target.apply(batch, self.position)
                self.position = seq
                self._count(applied)
                if time.monotonic() >= self._status_due:
                    await self._write_status()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _idle(self, pump: asyncio.Task[None], until_seq: int | None) -> None:
        if pump.done():
            pump.result()  # raise what stopped the reader
            raise DagnatsError("the history reader stopped")
        stored = await self.target.stored_seq()
        if stored != self.position:
            raise CheckpointMovedError(self.target.name, self.position, stored)
        if until_seq is not None and await stream_last_seq(self.js) <= self.position:
            raise DagnatsError(f"history ends before sequence {until_seq}")
        self._count(0)
        await self._write_status()

    async def _pump(self, after_seq: int, queue: asyncio.Queue[Message]) -> None:
        async for message in self.history.tail(after_seq):
            await queue.put(message)

    def _count(self, applied: int) -> None:
        self.events += applied
        self._window_events += applied
        elapsed = time.monotonic() - self._window_started
        if elapsed >= status_interval_ms / 1000:
            self.rate = self._window_events / elapsed
            self._window_started = time.monotonic()
            self._window_events = 0

    async def lag(self) -> int:
        """Messages of the stream not yet applied."""
        return max(0, await stream_last_seq(self.js) - self.position)

    async def _write_status(self) -> None:
        self._status_due = time.monotonic() + status_interval_ms / 1000
        try:
            status = ProjectionStatus(
                name=self.target.name, kind=self.target.kind, version=self.target.version,
                seq=self.position, lag=await self.lag(), events_per_s=round(self.rate, 1),
                events=self.events, updated_at_ms=now_ms(), where=self.target.where,
            )  # fmt: skip
            await (await self.js.key_value(PROJECTIONS_BUCKET)).put(
                status_key(self.target.name), codec.encode(status)
            )
        except (nats.errors.Error, TimeoutError) as error:
            log.debug("projection %s: status not written (%s)", self.target.name, error)


# -- loading users' projections ------------------------------------------------------------


def load_projection(spec: str) -> SqliteProjection:
    """An instance of the SqliteProjection class named by `MODULE:CLASS` (or `file.py:CLASS`).

    Raises:
        DagnatsError: the module or class cannot be loaded, or is not a projection.
    """
    cls = load_attribute(spec, "projection")
    if not isinstance(cls, type):
        raise DagnatsError(f"{spec} is a {type(cls).__name__}, not a projection class")
    projection = cls()
    missing = [
        attribute
        for attribute in (
            "name",
            "version",
            "events",
            "tables",
            "create",
            "apply",
            "flush",
            "discard",
        )
        if not hasattr(projection, attribute)
    ]
    if missing:
        raise DagnatsError(
            f"{spec} is not a SqliteProjection: it lacks {', '.join(missing)} "
            "(subclass projections.base.SqliteProjectionBase)"
        )
    check_name(projection.name)
    return cast(SqliteProjection, projection)


# -- loading a run: snapshot + tail --------------------------------------------------------


async def load_state(
    history: JetStreamEventLog, snapshots: KvSnapshotStore | None, run_id: str
) -> tuple[RunState, int]:
    """A run's state and last sequence: its snapshot plus the history after it, or (without a
    usable snapshot, or when the snapshot disagrees with history) the fold of its whole history.

    Raises:
        DagnatsError: a history message does not decode. AssertionError: it does not fold.
    """
    snapshot = await snapshots.get(run_id) if snapshots is not None else None
    if snapshot is not None:
        try:
            tail = [item async for item in history.read(run_id, after_seq=snapshot.last_seq)]
            state, last_seq = fold_messages(snapshot.state, snapshot.last_seq, tail)
            if tail or await history.last_seq(run_id) == snapshot.last_seq:
                return state, last_seq
        except (DagnatsError, AssertionError):
            pass  # perhaps the snapshot is what is wrong: fold the whole history
        log.warning("run %s: its snapshot disagrees with history; ignored", run_id)
    state, last_seq = INITIAL_STATE, 0
    async for seq, data in history.read(run_id):
        state, last_seq = fold_messages(state, last_seq, [(seq, data)])
    return state, last_seq
