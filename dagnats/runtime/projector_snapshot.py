"""The snapshot projection's target (for `dagnats.runtime.projector`, which re-exports these
names): run snapshots in the `dagnats_runs` KV bucket (`KvSnapshotStore`), and `SnapshotTarget`,
which folds history batches into them (`projections.snapshot.SnapshotFolder`) and keeps its
checkpoint in `dagnats_projections` under a revision check, with a marker key in the runs
bucket that tells a deleted or emptied bucket from a full one. `ProjectionStatus` is the
checkpoint's and every projector's status record.

The checkpoint is written at most `snapshot_checkpoint_interval_ms` after a batch (and when the
projector idles or stops), never read back per batch: the revision check on each write is
what detects a rebuild or another owner. A checkpoint behind costs only a refold after a
crash: every snapshot carries its own last sequence, so a batch applied twice changes nothing.

This module reads the history stream and writes KV; it never writes history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime.clock import now_ms
from dagnats.runtime.js_publish import JetStreamPublisher
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector_folds import SharedFolds
from dagnats.runtime.projector_pace import Pacer, pace_defer_batch_messages_max, slices
from dagnats.runtime.resources import (
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    BucketSpec,
    ensure_bucket,
)
from kernel import codec
from kernel.admission import is_gate_id
from kernel.errors import DagnatsError
from kernel.state import INITIAL_STATE
from projections.base import CheckpointMovedError, Message
from projections.snapshot import (
    SCHEMA,
    Decoded,
    Snapshot,
    SnapshotFolder,
    decode_snapshot,
    encode_snapshot,
    fold_messages,
)

log = logging.getLogger("dagnats.projector")

SNAPSHOTS: Final = "snapshots"
MARKER_KEY: Final = "_dagnats.snapshots"  # in the runs bucket; never a run id (it has a '.')
snapshot_puts_in_flight_max: Final = 256
# The snapshot checkpoint is written at most this long after a batch applied (at once when
# the projector idles or stops): not one KV write per batch.
snapshot_checkpoint_interval_ms: Final = 1_000


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


# -- KV snapshots --------------------------------------------------------------------------


class KvSnapshotStore:
    """Run snapshots in the `dagnats_runs` bucket; any failure to read is "no snapshot"."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None
        self._publisher: JetStreamPublisher | None = None

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
        """Store snapshots (pipelined, a bounded number in flight): what `KeyValue.put` sends,
        acknowledged through one reply subscription (runtime/js_publish)."""
        kv = await self.bucket()
        if self._publisher is None:
            self._publisher = JetStreamPublisher(self.js)
        publisher = self._publisher
        slots = asyncio.Semaphore(snapshot_puts_in_flight_max)

        async def put(snapshot: Snapshot) -> None:
            async with slots:
                subject = f"{kv._pre}{snapshot.run_id}"
                data = encode_snapshot(snapshot)
                await publisher.publish(subject, data, stream=kv._stream, headers={})

        await asyncio.gather(*(put(snapshot) for snapshot in snapshots))


class SnapshotTarget:
    """The snapshot projection: folds runs and writes their snapshots to KV.

    Shared by every engine on one NATS (`shared`: the Projector runs it under a lease, one
    engine at a time). Its checkpoint is written under a revision check (a stale owner or a
    rebuild meanwhile raise CheckpointMovedError), and the bucket carries a marker key
    (`MARKER_KEY`) written once the bucket is known to hold this projection's snapshots: a
    bucket deleted, recreated or purged behind its back has none, and the projection starts
    over from sequence 0 instead of trusting its checkpoint.
    """

    kind = "kv"
    name = SNAPSHOTS
    version = SCHEMA
    where = f"KV {RUNS_BUCKET}"
    shared = True

    def __init__(
        self, js: JetStreamContext, folds: SharedFolds | None = None, pacer: Pacer | None = None
    ) -> None:
        """`folds`: the events of messages this process's engine appended and its states
        after them, taken instead of decoding and folding those messages again. `pacer`: a
        batch is folded in slices, each when the pacer gives it a turn (`projector_pace`)."""
        self.js = js
        self.pacer = pacer
        self.store = KvSnapshotStore(js)
        self.history = JetStreamEventLog(js)
        self.folds = folds
        self.folder = SnapshotFolder(folded=folds.state if folds is not None else None)
        self._events_total = 0
        self._revision = 0  # of the checkpoint entry as last read or written (0: none)
        self._seq = 0  # the checkpoint as last read or written
        self._applied_seq = 0  # the last sequence applied (ahead of _seq until settled)
        self._settle_due = 0.0  # monotonic time by which a checkpoint behind is written
        self._checkpoints_kv: KeyValue | None = None

    async def _checkpoints(self) -> KeyValue:
        """The checkpoint bucket's handle, looked up once per open (a lookup is a request)."""
        if self._checkpoints_kv is None:
            self._checkpoints_kv = await self.js.key_value(PROJECTIONS_BUCKET)
        return self._checkpoints_kv

    async def open(self) -> int:
        self.folder.clear()
        self.store._kv = None
        self._checkpoints_kv = None
        await ensure_bucket(self.js, BucketSpec(PROJECTIONS_BUCKET, 1), replicas=1)
        try:
            await self.js.stream_info(f"KV_{RUNS_BUCKET}")
        except nats.js.errors.NotFoundError:
            log.info("bucket %s is missing: rebuilding every snapshot", RUNS_BUCKET)
            await ensure_bucket(self.js, BucketSpec(RUNS_BUCKET, 1), replicas=1)
        stored = await self.stored_seq()
        self._applied_seq = stored
        if await self._marked():
            return stored
        if self._seq > 0:  # the checkpoint counts snapshots the bucket no longer holds
            log.warning(
                "bucket %s lost its snapshots (deleted or emptied; checkpoint was %d): "
                "rebuilding every snapshot", RUNS_BUCKET, self._seq,
            )  # fmt: skip
        self._events_total = 0
        await self._write_checkpoint(0, 0, 0.0, 0)  # first: a crash before the marker redoes it
        await (await self.store.bucket()).put(MARKER_KEY, SCHEMA.encode())
        self._applied_seq = 0
        return 0

    async def reset(self) -> None:
        """Drop every snapshot (the runs bucket purged, its marker with them) and set the
        checkpoint to 0 under its revision check (open first)."""
        await self.js.purge_stream(f"KV_{RUNS_BUCKET}")
        self.folder.clear()
        self._events_total = 0
        await self._write_checkpoint(0, 0, 0.0, 0)

    async def _marked(self) -> bool:
        """Whether the runs bucket holds its marker (it is the bucket the checkpoint is of).

        Raises:
            nats.errors.Error: the bucket cannot be read (not the same as "no marker").
        """
        try:
            await (await self.store.bucket()).get(MARKER_KEY)
        except nats.js.errors.KeyNotFoundError:
            return False
        return True

    async def stored_seq(self) -> int:
        """The stored checkpoint; 0 when there is none, it is of another schema, or the runs
        bucket lost its marker (then the snapshots it counts are gone)."""
        status, self._revision = await _read_checkpoint(await self._checkpoints())
        self._seq = status.seq if status is not None else 0
        if status is None or status.version != SCHEMA:
            self._events_total = 0
            return 0
        self._events_total = status.events
        if status.seq > 0 and not await self._marked():
            return 0
        return status.seq

    async def _write_checkpoint(self, seq: int, lag: int, rate: float, events: int) -> None:
        status = ProjectionStatus(
            name=SNAPSHOTS, kind=self.kind, version=SCHEMA, seq=seq, lag=lag,
            events_per_s=rate, events=events, updated_at_ms=now_ms(), where=self.where,
        )  # fmt: skip
        kv = await self._checkpoints()
        try:
            self._revision = await kv.update(SNAPSHOTS, codec.encode(status), last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # written meanwhile: a rebuild, or another engine that ran it (a lease moved)
            stored, self._revision = await _read_checkpoint(kv)
            raise CheckpointMovedError(
                SNAPSHOTS, self._seq, stored.seq if stored is not None else 0
            ) from None
        self._seq = seq

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        """Fold a batch and write the snapshots now due; the checkpoint is written with them
        (under its revision: a rebuild or another owner meanwhile raises
        CheckpointMovedError), or at the latest `snapshot_checkpoint_interval_ms` later
        (`settle`). Nothing is read back: the revision check is the guard. A checkpoint behind
        costs only a refold after a crash (each snapshot carries its own last sequence)."""
        if after_seq != self._applied_seq:
            raise CheckpointMovedError(SNAPSHOTS, self._applied_seq, after_seq)
        pacer = self.pacer
        events = 0
        if pacer is None:
            events = await self._apply_part(messages)
        else:
            pacer.start_batch(defer=len(messages) <= pace_defer_batch_messages_max)
            for part in slices(messages):
                await pacer.turn()
                events += await self._apply_part(part)
        self._applied_seq = max([after_seq, *(message[0] for message in messages)])
        self._events_total += events
        if time.monotonic() >= self._settle_due:
            await self.settle()
        return self._applied_seq, events

    async def _apply_part(self, messages: list[Message]) -> int:
        """Fold messages of a batch (or all of it) and write the snapshots now due; how many
        events they held."""
        decoded: list[Decoded] = []
        events = 0
        shared = self.folds.events_of(messages) if self.folds is not None else None
        for seq, run_id, data in messages:
            if is_gate_id(run_id):
                continue  # an admission gate's history (kernel/admission.py), not a run's
            try:
                found = shared(seq) if shared is not None else None
                decoded_events = found or codec.decode_events(data)  # (no command needed)
            except DagnatsError as error:
                log.warning("snapshots: message %d of run %s skipped: %s", seq, run_id, error)
                continue
            decoded.append((seq, run_id, decoded_events))
            events += len(decoded_events)
        for run_id in self.folder.to_load(decoded):
            await self._load(run_id)
        due = self.folder.apply(decoded)
        for problem in self.folder.problems[:10]:
            log.warning("snapshots: %s", problem)
        self.folder.problems.clear()
        if due:
            await self.store.put_many(due)
            self.folder.written(due)
        return events

    async def settle(self) -> None:
        """Write the checkpoint when it is behind what was applied (under its revision)."""
        self._settle_due = time.monotonic() + snapshot_checkpoint_interval_ms / 1000
        if self._applied_seq != self._seq:
            await self._write_checkpoint(self._applied_seq, 0, 0.0, self._events_total)

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


async def _read_checkpoint(kv: KeyValue) -> tuple[ProjectionStatus | None, int]:
    """The snapshot checkpoint and the revision of its entry (of the tombstone of a deleted
    one; 0 when the key was never written), for a revision-checked write."""
    try:
        entry = await kv.get(SNAPSHOTS)
    except nats.js.errors.KeyNotFoundError as missing:
        found = getattr(missing, "entry", None)
        return None, int(getattr(found, "revision", 0) or 0)
    revision = int(entry.revision or 0)
    if not entry.value:
        return None, revision
    try:
        return msgspec.json.decode(entry.value, type=ProjectionStatus), revision
    except msgspec.DecodeError:
        return None, revision
