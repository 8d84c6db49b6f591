"""The projector: runs projections against the history stream (catch up, then tail live).

A `Projector` follows `DAGNATS_HISTORY` from a target's checkpoint with a lean push consumer
(`projector_read.tail`), hands it bounded batches, and measures position, lag and rate. The
targets say where a projection lives:

- `SqliteTarget` (in `projector_sqlite`, re-exported here): a `projections.base.SqliteProjection`
  in a SQLite file (by default `<data dir>/dagnats.sqlite`); its checkpoint is written in the
  same transaction as its rows.
- `SnapshotTarget` (in `projector_snapshot`, re-exported here): run snapshots in the
  `dagnats_runs` KV bucket (`projections.snapshot`); its checkpoint is a key of
  `dagnats_projections`, written under a revision check at most about a second after a batch
  (and when the projector idles or stops). Each snapshot carries its own last sequence, so a
  batch applied twice after a crash changes nothing. A marker key in the bucket tells a deleted
  or emptied bucket from a full one: without it the projection rebuilds from sequence 0,
  whatever its checkpoint says.

While tailing live, a batch is what the reader has gathered `batch_linger_ms` (100 ms) after
its first message arrived (at most `batch_max`; `PendingMessages`): one SQLite transaction or
one set of KV writes per batch, not per message, so a live projection trails history by about
the linger plus the batch's own time. Catching up (reading what the stream held when the
tail started), what the reader holds is taken at once, as is a backlog of `batch_max`.
Serve's built-in projections run on the engine's event loop: they apply a batch in slices,
paced by the engine's commands in flight (`projector_pace`), so a command is not held up
behind a whole batch.

A target shared by every engine on one NATS (the snapshots) runs under a lease
(`dagnats.runtime.lease`): one engine's projector follows it, the others stand by and take
over within about `settings.lease_ttl_ms` when it stops refreshing.

Every projector also mirrors its status (position, lag, rate) into `dagnats_projections` for
`dagnats projection status`. A rebuild (`projection rebuild NAME`) moves the stored checkpoint
back; the running projector sees it when it next writes its checkpoint (or idle check) and
starts over.

This module reads the history stream and writes KV and SQLite; it never writes history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.lease import Lease, LeaseLostError
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.log_read import holds_any
from dagnats.runtime.parked import RunParkedError, decode_message, unfoldable
from dagnats.runtime.projector_read import read_until, tail_batches
from dagnats.runtime.projector_snapshot import (  # re-exported: see __all__
    MARKER_KEY,
    SNAPSHOTS,
    KvSnapshotStore,
    ProjectionStatus,
    SnapshotTarget,
)
from dagnats.runtime.projector_sqlite import (  # re-exported: see __all__
    SQLITE_FILE,
    SqliteTarget,
    check_name,
    load_projection,
    open_database,
)
from dagnats.runtime.resources import (
    HISTORY_STREAM,
    HISTORY_SUBJECTS,
    PROJECTIONS_BUCKET,
)
from kernel import codec
from kernel.errors import DagnatsError
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from projections.base import (
    CheckpointMovedError,
    Message,
    batch_messages_max,
)
from projections.snapshot import (
    fold_messages,
)

log = logging.getLogger("dagnats.projector")

STATUS_PREFIX: Final = "status."
LEASE_PREFIX: Final = "projection."
idle_check_ms: Final = 500  # how often an idle projector looks for a rebuild or a stop
status_interval_ms: Final = 1_000  # how often the status is mirrored into KV
retry_delay_ms: Final = 1_000  # after a failed batch, before starting again
# After the first message of a batch, wait this long for more before applying: projections
# are off the runs' path (clients watch history, the engine loads snapshot + the history
# after it), and one transaction and one set of KV writes per batch instead of per message is
# most of what a projection costs. 100 against 20 ms: serve's CPU per chain step lower in 6 of
# 7 interleaved pairs (README "Benchmarks"); a live query table or snapshot trails history by
# about this much plus the batch's own time. Must stay below `idle_check_ms`.
batch_linger_ms: Final = 100
# A live tail takes what its reader gathered at most this often: its task was woken once per
# history message (in serve, once per append, on the engine's loop, just as the append's ack
# came back). A batch then holds what came up to this much later than its first message.
# Below `batch_linger_ms`.
tail_gather_ms: Final = 20


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

    async def settle(self) -> None:
        """Store the checkpoint of everything applied, when `apply` left it behind.

        Raises:
            CheckpointMovedError: the stored checkpoint moved meanwhile (a rebuild).
        """
        ...

    async def reset(self) -> None:
        """Drop what the projection holds and set its checkpoint to 0 (`open` then rebuilds it
        from sequence 0): its checkpoint is of another history stream."""
        ...

    async def close(self) -> None: ...


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


async def open_target(js: JetStreamContext, target: ProjectionTarget) -> int:
    """Open `target`; the sequence to resume after. A checkpoint ahead of the history stream's
    last sequence is of another stream (this one was made again: its NATS store lost, or the
    stream deleted and created anew; sequences never go back otherwise): what the target holds
    is dropped and it is rebuilt from sequence 0, not left serving runs that are gone while it
    skips the new stream's first messages. (A new stream already past the checkpoint cannot be
    told apart this way: the projector looks when it opens, before most of a new history.)"""
    position = await target.open()
    if position > 0:
        last = await stream_last_seq(js)
        if last < position:
            log.warning(
                "projection %s: its checkpoint %d is ahead of the history stream (last "
                "sequence %d): the stream was made again; rebuilding from sequence 0",
                target.name, position, last,
            )  # fmt: skip
            await target.reset()
            position = await target.open()
    return position


# -- the runner ----------------------------------------------------------------------------


class PendingMessages:
    """What a tail has read and no batch has taken yet (a bounded queue), with the time the
    oldest of it arrived: once the tail is `live` (it has read what the stream held when it
    started), a batch lingers from its first message's arrival, not from when its consumer
    came back for it (a batch applied while messages kept coming would otherwise be followed
    at once by a batch of the few that came meanwhile)."""

    def __init__(self, size: int) -> None:
        assert size >= 1, size
        self.queue: asyncio.Queue[Message] = asyncio.Queue(size)
        self.oldest_at = 0.0  # time.monotonic() when the oldest waiting message arrived
        self.last_seq = 0  # of the last message put
        self.live = False  # the reader tails the stream (it has caught up once)

    async def put(self, message: Message) -> None:
        """Add a message (waiting while the queue is full)."""
        queue = self.queue
        self.last_seq = message[0]
        if queue.empty():
            self.oldest_at = time.monotonic()
        if queue.full():
            await queue.put(message)
        else:  # (no coroutine per message)
            queue.put_nowait(message)


async def next_batch(
    pending: PendingMessages, idle_s: float, linger_s: float, batch_max: int
) -> list[Message] | None:
    """The next batch of a tail's messages: at most `batch_max`, taken `linger_s` after its
    first message arrived (at once when `batch_max` wait, or when catching up: the tail is
    not live yet and messages wait); None when nothing came within `idle_s`."""
    assert batch_max >= 1, batch_max
    queue = pending.queue
    if queue.empty():
        try:
            first = await asyncio.wait_for(queue.get(), idle_s)
        except TimeoutError:
            return None
        due = time.monotonic() + linger_s  # (it has just arrived)
    else:
        due = pending.oldest_at + linger_s if pending.live else 0.0
        first = queue.get_nowait()
    if linger_s > 0 and queue.qsize() + 1 < batch_max:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # let a batch gather (fewer writes)
    batch = [first]
    while len(batch) < batch_max and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


class Projector:
    """Feeds one target from the history stream: catch up from its checkpoint, then tail."""

    def __init__(
        self,
        js: JetStreamContext,
        target: ProjectionTarget,
        *,
        batch_max: int = batch_messages_max,
        idle_ms: int = idle_check_ms,
        linger_ms: int = batch_linger_ms,
    ) -> None:
        assert 1 <= batch_max <= batch_messages_max, batch_max
        assert idle_ms > 0 and 0 <= linger_ms < idle_ms, (idle_ms, linger_ms)
        self.linger_s = linger_ms / 1000
        self.js = js
        self.target = target
        self.batch_max = batch_max
        self.idle_s = idle_ms / 1000
        self.position = 0
        self.events = 0
        self.rate = 0.0
        self._window_started = time.monotonic()
        self._window_events = 0
        self._status_due = 0.0
        self._status_kv: KeyValue | None = None
        self._status_position = -1  # the position the last status was written at
        # A projection every engine on one NATS would run (KV snapshots) runs under a lease:
        # one engine at a time, the others stand by and take over when it stops.
        shared = bool(getattr(target, "shared", False))
        self.lease = Lease(js, LEASE_PREFIX + target.name) if shared else None
        self._leading = False
        self._standing_by = False

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until `stop` is set; failures are logged and retried. A shared
        target is followed only while this projector holds its lease."""
        keeper = asyncio.create_task(self._keep_lease(stop)) if self.lease else None
        ran = False
        try:
            while not stop.is_set():
                if not await self._take_lease(stop):
                    continue
                ran = True
                await self._run_once(stop)
            if ran and (self.lease is None or self.lease.held()):
                await self._write_status()
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if self.lease is not None:
                await self.lease.release()

    async def _run_once(self, stop: asyncio.Event) -> None:
        try:
            self.position = await open_target(self.js, self.target)
            await self._follow(stop, until_seq=None)
        except LeaseLostError as lost:
            log.info("projection %s: %s; standing by", self.target.name, lost)
        except CheckpointMovedError as moved:
            log.info("projection %s: %s; starting over", self.target.name, moved)
        except Exception as error:  # a bad batch must not end the projector for good
            log.warning("projection %s failed (%s); retrying", self.target.name, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_delay_ms / 1000)

    async def _take_lease(self, stop: asyncio.Event) -> bool:
        """True when this projector may run its target now (no lease needed, or taken);
        otherwise waits one refresh interval (or until `stop`) and returns False."""
        lease = self.lease
        if lease is None or lease.held() or await lease.acquire():
            if lease is not None and not self._leading:
                log.info("projection %s: this process runs it now", self.target.name)
            self._leading = True
            return True
        if self._leading or not self._standing_by:
            holder = await lease.holder()
            log.info("projection %s: standing by (%s runs it)", self.target.name, holder)
        self._leading, self._standing_by = False, True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.lease_refresh_interval_ms / 1000)
        return False

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        """Refresh the lease while it is held, every lease_refresh_interval_ms."""
        lease = self.lease
        assert lease is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.lease_refresh_interval_ms / 1000)
            if lease.revision is not None and not stop.is_set():
                await lease.refresh()

    def _check_lease(self) -> None:
        if self.lease is not None and not self.lease.held():
            raise LeaseLostError(self.lease.key)

    async def catch_up(self) -> int:
        """Apply everything up to the stream's last sequence as of now; return the checkpoint.
        A shared target is caught up under its lease (waiting for it at most one lease TTL
        plus a refresh interval).

        Raises:
            LeaseLostError: another process runs the shared target (and kept it).
        """
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(done)) if self.lease else None
        try:
            await self._wait_for_lease()
            self.position = await open_target(self.js, self.target)
            until = await stream_last_seq(self.js)
            if until > self.position:
                await self._follow(asyncio.Event(), until_seq=until)
            await self._write_status()
            return self.position
        finally:
            done.set()
            if keeper is not None:
                await keeper
            if self.lease is not None:
                await self.lease.release()

    async def _wait_for_lease(self) -> None:
        lease = self.lease
        if lease is None:
            return
        deadline = time.monotonic() + (lease.ttl_s + settings.lease_refresh_interval_ms / 1000)
        while not await lease.acquire():
            if time.monotonic() >= deadline:
                raise LeaseLostError(lease.key)
            await asyncio.sleep(settings.lease_refresh_interval_ms / 1000 / 4)

    async def _follow(self, stop: asyncio.Event, until_seq: int | None) -> None:
        pending = PendingMessages(self.batch_max * 2)
        pump = asyncio.create_task(read_then_tail(self.js, self.position, pending))
        try:
            while not stop.is_set():
                if until_seq is not None and self._caught_up(pending, until_seq):
                    await self.target.settle()
                    return
                # (catching up, once the last message wanted is read: nothing to wait for)
                read_all = until_seq is not None and pending.last_seq >= until_seq
                linger_s = 0.0 if read_all else self.linger_s
                batch = await next_batch(pending, self.idle_s, linger_s, self.batch_max)
                if batch is None:
                    await self._idle(pump, until_seq)
                    continue
                self._check_lease()
                seq, applied = await self.target.apply(batch, self.position)
                self.position = seq
                self._count(applied)
                if time.monotonic() >= self._status_due:
                    await self._write_status()
            await self.target.settle()  # stopping: store what was applied
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def _caught_up(self, pending: PendingMessages, until_seq: int) -> bool:
        """Whether a catch-up to until_seq is done: applied up to it, or the reader has read
        all the stream still holds up to it (it tails now: the rest was deleted) and every
        message read is applied (nothing more up to until_seq will come)."""
        if self.position >= until_seq:
            return True
        return pending.live and pending.queue.empty() and pending.last_seq <= self.position

    async def _idle(self, pump: asyncio.Task[None], until_seq: int | None) -> None:
        self._check_lease()
        if pump.done():
            pump.result()  # raise what stopped the reader
            raise DagnatsError("the history reader stopped")
        await self.target.settle()
        stored = await self.target.stored_seq()
        if stored != self.position:
            raise CheckpointMovedError(self.target.name, self.position, stored)
        if until_seq is not None and await stream_last_seq(self.js) <= self.position:
            raise DagnatsError(f"history ends before sequence {until_seq}")
        self._count(0)
        await self._write_status()

    def _count(self, applied: int) -> None:
        self.events += applied
        self._window_events += applied
        elapsed = time.monotonic() - self._window_started
        if elapsed >= status_interval_ms / 1000:
            self.rate = self._window_events / elapsed
            self._window_started = time.monotonic()
            self._window_events = 0

    async def lag(self, stream_last: int | None = None) -> int:
        """Messages of the stream not yet applied (`stream_last`: its last sequence, when the
        caller just read it). Behind with no progress since the last status, it looks whether
        the stream still holds any of them (one request): the stream's last messages purged
        (retention) would otherwise show a lag that never goes."""
        if stream_last is None:
            stream_last = await stream_last_seq(self.js)
        position = self.position
        behind = max(0, stream_last - position)
        if behind and position == self._status_position:
            held = await holds_any(
                self.js, HISTORY_STREAM, HISTORY_SUBJECTS, position + 1, stream_last
            )
            return behind if held else 0
        return behind

    async def _write_status(self, stream_last: int | None = None) -> None:
        """Mirror the status into KV; `stream_last`: the stream's last sequence when the
        caller just read it (a shared tail reads it once for all its lanes)."""
        self._status_due = time.monotonic() + status_interval_ms / 1000
        try:
            lag = await self.lag(stream_last)
            self._status_position = self.position
            status = ProjectionStatus(
                name=self.target.name, kind=self.target.kind, version=self.target.version,
                seq=self.position, lag=lag, events_per_s=round(self.rate, 1),
                events=self.events, updated_at_ms=now_ms(), where=self.target.where,
            )  # fmt: skip
            if self._status_kv is None:  # a lookup is a STREAM.INFO request: once, not per write
                self._status_kv = await self.js.key_value(PROJECTIONS_BUCKET)
            await self._status_kv.put(status_key(self.target.name), codec.encode(status))
        except (nats.errors.Error, TimeoutError) as error:
            self._status_kv = None  # the bucket may have been deleted: look it up again
            log.debug("projection %s: status not written (%s)", self.target.name, error)


async def read_then_tail(js: JetStreamContext, after_seq: int, pending: PendingMessages) -> None:
    """Put every history message after `after_seq` into `pending`: what the stream holds now
    by the lean reader (`projector_read.read_until`), then, marked live, as it is appended
    (what came, every `tail_gather_ms`)."""
    until = await stream_last_seq(js)
    async for message in read_until(js, after_seq, until):
        after_seq = message[0]
        await pending.put(message)
    pending.live = True
    async with contextlib.aclosing(tail_batches(js, after_seq)) as batches:
        async for messages in batches:
            for message in messages:
                await pending.put(message)
            await asyncio.sleep(tail_gather_ms / 1000)  # (let more come: one wake-up for all)


# -- loading a run: snapshot + tail --------------------------------------------------------


async def load_state(
    history: JetStreamEventLog, snapshots: KvSnapshotStore | None, run_id: str
) -> tuple[RunState, int]:
    """A run's state and last sequence: its snapshot plus the history after it, or (without a
    usable snapshot, or when the snapshot disagrees with history) the fold of its whole history.

    Raises:
        RunParkedError: a history message does not decode or does not fold.
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
        decision = decode_message(run_id, seq, data)  # RunParkedError: the run's one line
        try:
            for event in decision.events:
                state = evolve(state, event)
        except AssertionError as error:
            raise RunParkedError(run_id, unfoldable(seq, error)) from None
        last_seq = seq
    return state, last_seq


__all__ = [
    "LEASE_PREFIX", "MARKER_KEY", "SNAPSHOTS", "SQLITE_FILE", "KvSnapshotStore",
    "PendingMessages", "ProjectionStatus", "ProjectionTarget", "Projector", "SnapshotTarget",
    "SqliteTarget",
    "check_name", "load_projection", "load_state", "next_batch", "open_database", "read_status",
    "status_key", "stream_last_seq",
]  # fmt: skip
