"""One tail of the history stream for several projections (serve's snapshots + query tables).

`SharedTail` follows `DAGNATS_HISTORY` once for the projections this process owns and hands
every batch to each of them: one push consumer (one delivery of each message by
nats-server, one parse, one linger per batch) instead of one per projection. Each projection
is a `Projector` lane (`dagnats.runtime.projector`) that keeps its own position, its own
checkpoint (the SQLite one in its transaction, the KV one under its revision) and its own
status, exactly as when it tails alone: the tail starts after the lowest checkpoint, and a
lane is given only the messages after its own position, so a lane behind (a rebuild, a fresh
SQLite file) catches up while the others skip what they hold.

Ownership: a lane whose target is shared across engines (the snapshots) runs only while this
process holds its lease (the same lease key a lone `Projector` takes); the others always
run. While the lease is held elsewhere the tail carries the unleased lanes alone, and it tries
the lease again every `settings.lease_refresh_interval_ms`; when the set of lanes it owns
changes (lease taken or lost) the tail regroups: it reopens the lanes it owns and starts
again from the lowest of their checkpoints.

A failure in one lane (a bad batch, a rebuild moving a checkpoint) restarts the group: each
lane reopens from its own checkpoint, so nothing is lost or applied twice.

This module reads the history stream and writes KV and SQLite through the targets; it never
writes history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import nats.errors
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.engine import Engine
from dagnats.runtime.lease import LeaseLostError
from dagnats.runtime.projector import (
    PendingMessages,
    ProjectionTarget,
    Projector,
    SnapshotTarget,
    SqliteTarget,
    batch_linger_ms,
    idle_check_ms,
    next_batch,
    open_target,
    read_then_tail,
    retry_delay_ms,
    stream_last_seq,
)
from dagnats.runtime.projector_folds import SharedFolds
from dagnats.runtime.projector_pace import Busy, Pacer
from kernel.errors import DagnatsError
from projections.base import CheckpointMovedError, Message, batch_messages_max
from projections.sqlite import QueryTables

log = logging.getLogger("dagnats.projector")

lanes_max: Final = 8  # projections one tail carries


class RegroupError(DagnatsError):
    """The lanes this process owns changed (a lease taken or lost): reopen and follow again."""


class SharedTail:
    """Feeds several targets from one tail of the history stream (see the module doc)."""

    def __init__(
        self,
        js: JetStreamContext,
        targets: Sequence[ProjectionTarget],
        *,
        batch_max: int = batch_messages_max,
        idle_ms: int = idle_check_ms,
        linger_ms: int = batch_linger_ms,
    ) -> None:
        assert 1 <= len(targets) <= lanes_max, len(targets)
        assert len({target.name for target in targets}) == len(targets), "names must differ"
        self.js = js
        self.lanes = [
            Projector(js, target, batch_max=batch_max, idle_ms=idle_ms, linger_ms=linger_ms)
            for target in targets
        ]
        self.batch_max = batch_max
        self.idle_s = idle_ms / 1000
        self.linger_s = linger_ms / 1000
        self.active: list[Projector] = []  # the lanes of the current group
        self.groups = 0  # groups opened (a regroup or a restart opens a new one)

    def owned(self) -> list[Projector]:
        """The lanes this process runs now: unleased ones, and leased ones while held."""
        return [lane for lane in self.lanes if lane.lease is None or lane.lease.held()]

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream for the owned lanes until `stop`; failures are logged and the
        group restarts. Leases are tried, refreshed, and released at the end."""
        keeper = asyncio.create_task(self._keep_leases(stop))
        try:
            await self._take_leases()
            while not stop.is_set():
                group = self.owned()
                if not group:  # every lane is leased, and held elsewhere
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.idle_s)
                    continue
                await self._run_group(group, stop)
            for lane in self.owned():
                await lane._write_status()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            for lane in self.lanes:
                if lane.lease is not None:
                    await lane.lease.release()

    async def _run_group(self, group: list[Projector], stop: asyncio.Event) -> None:
        self.active = group
        self.groups += 1
        names = ", ".join(lane.target.name for lane in group)
        try:
            for lane in group:
                lane.position = await open_target(lane.js, lane.target)
            await self._follow(group, stop)
        except RegroupError:
            log.info("projections %s: the projections this process runs changed", names)
        except (LeaseLostError, CheckpointMovedError) as moved:
            log.info("projections %s: %s; starting over", names, moved)
        except Exception as error:  # a bad batch must not end the projections for good
            log.warning("projections %s failed (%s); retrying", names, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_delay_ms / 1000)

    async def _take_leases(self) -> None:
        for lane in self.lanes:
            lease = lane.lease
            if lease is None or lease.held():
                continue
            if await lease.acquire():
                log.info("projection %s: this process runs it now", lane.target.name)
                lane._standing_by = False
            elif not lane._standing_by:
                holder = await lease.holder()
                log.info("projection %s: standing by (%s runs it)", lane.target.name, holder)
                lane._standing_by = True

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Every refresh interval: refresh the leases held, try those that are not."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.lease_refresh_interval_ms / 1000)
            if stop.is_set():
                return
            for lane in self.lanes:
                if lane.lease is not None and lane.lease.revision is not None:
                    await lane.lease.refresh()
            await self._take_leases()

    def _check_group(self, group: list[Projector]) -> None:
        if self.owned() != group:
            raise RegroupError("the owned projections changed")

    async def _follow(self, group: list[Projector], stop: asyncio.Event) -> None:
        start = min(lane.position for lane in group)
        pending = PendingMessages(self.batch_max * 2)
        pump = asyncio.create_task(read_then_tail(self.js, start, pending))
        try:
            while not stop.is_set():
                batch = await next_batch(pending, self.idle_s, self.linger_s, self.batch_max)
                if batch is None:
                    await self._idle(group, pump)
                    continue
                self._check_group(group)
                await self._apply(group, batch)
            for lane in group:
                await lane.target.settle()  # stopping: store what was applied
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _apply(self, group: list[Projector], batch: list[Message]) -> None:
        """Give each lane the messages after its own position, all lanes at once (the SQLite
        transaction runs in a thread while the KV writes wait on the network)."""

        async def feed(lane: Projector) -> None:
            own = [message for message in batch if message[0] > lane.position]
            if not own:
                return
            seq, applied = await lane.target.apply(own, lane.position)
            lane.position = seq
            lane._count(applied)
            if time.monotonic() >= lane._status_due:
                await lane._write_status()

        results = await asyncio.gather(*(feed(lane) for lane in group), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _idle(self, group: list[Projector], pump: asyncio.Task[None]) -> None:
        self._check_group(group)
        if pump.done():
            pump.result()  # raise what stopped the reader
            raise DagnatsError("the history reader stopped")
        for lane in group:
            await lane.target.settle()
            stored = await lane.target.stored_seq()
            if stored != lane.position:
                raise CheckpointMovedError(lane.target.name, lane.position, stored)
        stream_last = await _stream_last_or_none(self.js)  # one request for every lane's lag
        for lane in group:
            lane._count(0)
            await lane._write_status(stream_last)


def builtin_targets(
    js: JetStreamContext, sqlite: Path, engine: Engine
) -> tuple[ProjectionTarget, ...]:
    """Serve's built-in projections (KV snapshots, the SQLite query tables in the file
    `sqlite`), handed what `engine` appends (`projector_folds.SharedFolds`): a message it
    appended is not decoded nor folded again. Each applies a batch in slices, paced by
    `engine`'s commands in flight (`projector_pace`)."""
    folds = engine.folds = SharedFolds()
    busy = engine_in_flight(engine)
    return (
        SnapshotTarget(js, folds, pacer=Pacer(busy)),
        SqliteTarget(
            sqlite, QueryTables(folded=folds.state), inline=True, folds=folds, pacer=Pacer(busy)
        ),
    )


def engine_in_flight(engine: Engine) -> Busy:
    """How many commands `engine` has fetched and not yet settled (acked, naked or parked):
    the projections' batches wait for none (`projector_pace`). Read from the engine's own set
    of them (its progress acks' set; engine.py is at its 600-line bound: no accessor there)."""
    return engine._unsettled.__len__


async def _stream_last_or_none(js: JetStreamContext) -> int | None:
    """The history stream's last sequence, or None when it cannot be read now (each lane's
    status write then tries, and logs, on its own)."""
    try:
        return await stream_last_seq(js)
    except (nats.errors.Error, TimeoutError):
        return None


__all__ = ["RegroupError", "SharedTail", "builtin_targets", "engine_in_flight", "lanes_max"]
