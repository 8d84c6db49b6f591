"""Retention: purging finished runs (their history, snapshot and query rows), and its log.

A purge takes one finished run away for good: its history subject in the history stream,
its snapshot in the runs bucket, its ended marker, its timers left armed, and (done by
serve, which owns the file) its rows in the SQLite query tables. Each purge is first written
to the retention log (the stream `DAGNATS_RETENTION`, one record per run on
`dagnats.retention.<run>`), then carried out, history first, so no purge goes unrecorded; one
cut short is finished by serve's reader of the log (`Retention._finish`: the caches of a run
whose history is gone; with an age, a purge redone whose history is still there) and by
`run delete` again (`finish_purge`).

- `serve --retention 30d` purges runs that ended more than that age ago (off by default),
  a bounded number per sweep (`Retention.run`).
- `dagnats run delete RUN_ID` purges one finished run (`purge_run`).
- A run that has not ended is never purged: its state is folded from history first, and the
  history purge removes only the messages up to the one that was read (a reopen appended
  meanwhile is kept, and reported).

Purging the history stream needs the admin credential: the engine's role may not purge it
(dagnats/runtime/roles.py), so serve opens an admin connection from its data dir for
retention and `run delete` connects as admin (README "Security").

`RunNotFoundError` (the client's) and `load_state` are imported where a purge needs them:
importing `dagnats.client.errors` loads the whole client package, and `runtime.projector`
sqlite-utils, which serve's engine does not need to resume runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.ended_runs import purge_old_marker
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.log_read import HistoryReader
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.projector_snapshot import KvSnapshotStore
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    ENDED_BUCKET,
    HISTORY_STREAM,
    HISTORY_SUBJECTS,
    RUNS_BUCKET,
    SCHEDULE_PREFIX,
    check_run_id,
    history_subject,
)
from dagnats.runtime.retention_rows import (
    Expired,
    LogPosition,
    applied_seq,
    delete_rows,
    drop_logged,
    expired_runs,
    read_position,
)
from kernel.errors import DagnatsError
from kernel.state import RunState, is_terminal

log = logging.getLogger("dagnats.retention")

RETENTION_STREAM: Final = "DAGNATS_RETENTION"
RETENTION_PREFIX: Final = "dagnats.retention"
sweep_pages_max: Final = 4  # pages of listed runs one sweep looks at, at most
log_read_timeout_s: Final = 5.0  # a read of the log waits this for the server, twice
# A record held for the query tables' projection (retention_rows.drop_logged) is released
# once the history stream holds no message between the projection's checkpoint and the
# record's purged history and the checkpoint stood still this long: a projector that fetched
# the run's messages before the purge (its batch lingering or being applied, and those its
# reader holds ahead) has committed them by then, and the reads of the log meanwhile and the
# release itself dropped their rows. (Purged messages are never delivered: without it, the
# checkpoint of a run purged before the projection applied it held the record until some
# run appended history, and every poll read it and deleted its rows again.)
held_release_ms: Final = 10_000


def monotonic_ms() -> int:
    """Milliseconds of the monotonic clock (how long a record was held; tests replace it)."""
    return time.monotonic_ns() // 1_000_000


class PurgedRun(msgspec.Struct, frozen=True, kw_only=True):
    """One record of the retention log: which run was purged, when, why, and what it was."""

    run_id: str
    workflow: str
    status: str
    started_at_ms: int
    ended_at_ms: int | None
    purged_at_ms: int
    # The last history sequence purged: the run's messages up to it went (a new life of the
    # id has only later ones). Stored under its first name, which said a count it never was.
    history_last_seq: int = msgspec.field(name="history_messages")
    reason: str  # "retention 30d" or "run delete"

    def as_json(self) -> dict[str, object]:
        """The record as the CLI and API show it (by its fields' names, not its stored keys)."""
        return {field: getattr(self, field) for field in self.__struct_fields__}


class RunStillOpenError(DagnatsError):
    """Only a finished run may be purged."""

    hint = "cancel or terminate it first (`dagnats run cancel RUN_ID`), then delete it"

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} is {status}: only a finished run can be deleted")


class RunNotExpiredError(DagnatsError):
    """The run under the id ended too recently for retention (a new life of a swept id)."""

    def __init__(self, run_id: str, ended_at_ms: int | None) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} ended at {ended_at_ms}: not old enough to purge")


class ReopenedWhilePurgingError(DagnatsError):
    """The run was reopened between reading its state and purging it."""

    def __init__(self, run_id: str, left: int) -> None:
        super().__init__(
            f"run {run_id!r} was reopened (or started again) while it was being purged: the "
            f"messages appended since (its history up to sequence {left}) are kept, with its "
            "timers; the earlier ones are gone"
        )


def retention_subject(run_id: str) -> str:
    return f"{RETENTION_PREFIX}.{check_run_id(run_id)}"


def stream_config(replicas: int = 1) -> api.StreamConfig:
    """The retention log: the newest record per run, bounded."""
    return api.StreamConfig(
        name=RETENTION_STREAM,
        subjects=[f"{RETENTION_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        allow_direct=True,
        max_msgs=settings.retention_log_max,
        max_msgs_per_subject=1,
        duplicate_window=settings.command_duplicate_window_ms / 1000,  # a purge recorded once
        storage=api.StorageType.FILE,
        num_replicas=replicas,
    )


async def ensure_log(js: JetStreamContext) -> None:
    from dagnats.runtime.resources import ensure_stream

    await ensure_stream(js, stream_config())


async def purge_run(
    js: JetStreamContext,
    run_id: str,
    *,
    reason: str,
    at_ms: int,
    ended_before_ms: int | None = None,
) -> PurgedRun:
    """Purge one finished run: record it in the retention log, then purge its history (up to
    the last message read), then its caches (`finish_purge`). `js` must be an admin
    connection's.

    `ended_before_ms` (retention's cutoff): the life found must have ended before it (the
    sweep listed an old life; a new life under the id, ended since, is not its to purge).

    Raises:
        RunNotFoundError: the run has no history (the caches of a purge of it the log
            records are emptied first: one cut short after its history purge is finished).
        RunStillOpenError: the run has not ended (nothing is purged).
        RunNotExpiredError: it ended at or after `ended_before_ms` (nothing is purged).
        ReopenedWhilePurgingError: it was reopened meanwhile (its newer messages are kept,
            and its timers and snapshot).
        RunParkedError: its history does not decode or fold (nothing is purged).
    """
    from dagnats.client.errors import RunNotFoundError
    from dagnats.runtime.projector import load_state

    # The cut-off of its timers, read before the run: every append after the one read (a
    # `run retry`, a new life once the history is purged) and the timers it arms come after.
    timers_last_seq = await _commands_last_seq(js)
    history = JetStreamEventLog(js)
    state, last_seq = await load_state(history, KvSnapshotStore(js), check_run_id(run_id))
    if state.status == "new":
        if await recorded_purge(js, run_id) is not None:
            await finish_purge(js, run_id)
        raise RunNotFoundError(run_id)
    if not is_terminal(state):
        raise RunStillOpenError(run_id, state.status)
    ended = state.ended_at_ms
    if ended_before_ms is not None and (ended is None or ended >= ended_before_ms):
        raise RunNotExpiredError(run_id, ended)
    record = _record(state, last_seq, reason, at_ms)
    await ensure_log(js)
    await js.publish(
        retention_subject(run_id),
        msgspec.json.encode(record),
        stream=RETENTION_STREAM,
        headers={"Nats-Msg-Id": f"purge:{run_id}:{last_seq}"},
    )
    await js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id), seq=last_seq + 1)
    left = await finish_purge(js, run_id, timers_last_seq)
    if left:
        raise ReopenedWhilePurgingError(run_id, left)
    log.info("run %s purged (%s): its history up to sequence %d", run_id, reason, last_seq)
    return record


async def finish_purge(
    js: JetStreamContext, run_id: str, timers_last_seq: int = 0, purged_at_ms: int | None = None
) -> int:
    """Empty the caches of a run whose history was purged: its timers left armed (an engine
    stopped between the run's last append and their cancels: they would fire into a new run
    under its id), its snapshot and its ended marker (ended_runs), those of a life of the id
    with history again excepted. Returns the id's last history sequence (0: none).

    `timers_last_seq`: the cut-off of the schedules purged, read before the run was (0: read
    here, before the history is looked at). A `run retry` or a new life appended after the
    read arms its timers past it: they are kept (a cut-off read after the run, before its
    history purge, lost the timers of a retry landing in between), and so are, when the id
    has history, its snapshot and marker (a reopened run's; a new life's own).

    `purged_at_ms` (the record's, finishing a recorded purge): when the id has history, a
    marker naming no life written at or before it goes all the same (`purge_old_marker`: an
    older version's, of the life purged; it would skip the tasks of the new run).
    """
    if timers_last_seq <= 0:
        timers_last_seq = await _commands_last_seq(js)
        left = await JetStreamEventLog(js).last_seq(check_run_id(run_id))
        if left:  # (a life of the id since, which timers are its is not known here)
            return await _kept_for(js, run_id, left, purged_at_ms)
    schedules = f"{SCHEDULE_PREFIX}.{run_id}.>"
    await js.purge_stream(COMMANDS_STREAM, subject=schedules, seq=timers_last_seq + 1)
    left = await JetStreamEventLog(js).last_seq(check_run_id(run_id))
    if left:
        return await _kept_for(js, run_id, left, purged_at_ms)
    for bucket in (RUNS_BUCKET, ENDED_BUCKET):  # its snapshot; its ended marker (ended_runs)
        with contextlib.suppress(KeyNotFoundError, BucketNotFoundError):
            await (await js.key_value(bucket)).purge(run_id)
    return 0


async def _kept_for(
    js: JetStreamContext, run_id: str, left: int, purged_at_ms: int | None
) -> int:
    """`left` (the id's history is there again: its caches are kept), once the ended marker
    of the purged life is purged if it names none (`purge_old_marker`)."""
    if purged_at_ms is not None:
        await purge_old_marker(js, run_id, purged_at_ms)
    return left


async def _first_history_seq(js: JetStreamContext, from_seq: int) -> int | None:
    """The sequence of the history stream's first message at or after `from_seq` (None:
    none); one request."""
    try:
        found = await js.get_msg(HISTORY_STREAM, from_seq, HISTORY_SUBJECTS, next=True)
    except nats.js.errors.NotFoundError:
        return None
    return found.seq


async def _commands_last_seq(js: JetStreamContext) -> int:
    return int((await js.stream_info(COMMANDS_STREAM)).state.last_seq)


async def recorded_purge(js: JetStreamContext, run_id: str) -> PurgedRun | None:
    """The retention log's record of the run's last purge, None when it has none."""
    try:
        found = await js.get_last_msg(RETENTION_STREAM, retention_subject(run_id))
    except nats.js.errors.NotFoundError:
        return None
    return msgspec.json.decode(found.data or b"", type=PurgedRun)


def _record(state: RunState, last_seq: int, reason: str, at_ms: int) -> PurgedRun:
    return PurgedRun(
        run_id=state.run_id,
        workflow=state.workflow.name if state.workflow is not None else "",
        status=state.status,
        started_at_ms=state.started_at_ms,
        ended_at_ms=state.ended_at_ms,
        purged_at_ms=at_ms,
        history_last_seq=last_seq,
        reason=reason,
    )


async def purged_runs(js: JetStreamContext, limit: int) -> list[PurgedRun]:
    """The retention log's newest records, newest purge first: at most
    min(limit, settings.retention_listed_max), of the log's last `retention_listed_max`
    sequences (a run purged again keeps its newest record only); [] when nothing was purged."""
    bound = min(limit, settings.retention_listed_max)
    try:
        info = await js.stream_info(RETENTION_STREAM)
    except nats.js.errors.NotFoundError:
        return []
    last = info.state.last_seq
    after = max(info.state.first_seq - 1, last - settings.retention_listed_max, 0)
    records = [record for _, record in await read_records(js, after, last)]
    records.sort(key=lambda r: (r.purged_at_ms, r.run_id), reverse=True)
    return records[:bound]


async def read_records(
    js: JetStreamContext, after_seq: int, last_seq: int
) -> list[tuple[int, PurgedRun]]:
    """(sequence, record) of the log's records with after_seq < sequence <= last_seq, in
    order, at most `retention_listed_max` sequences of them.

    Raises:
        TimeoutError: the server sent nothing for `log_read_timeout_s`, twice.
    """
    assert last_seq - after_seq <= settings.retention_listed_max, (after_seq, last_seq)
    if last_seq <= after_seq:
        return []
    reader = HistoryReader(js, RETENTION_STREAM, f"{RETENTION_PREFIX}.>", after_seq, last_seq)
    found: list[tuple[int, PurgedRun]] = []
    async with contextlib.aclosing(reader.messages(log_read_timeout_s)) as read:
        async for seq, data in read:
            found.append((seq, msgspec.json.decode(data, type=PurgedRun)))
    return found


# -- serve's part: the sweep and the query rows ------------------------------------------


def sweep_interval_ms(retention_ms: int) -> int:
    quarter = retention_ms // 4
    return max(settings.retention_sweep_min_ms, min(settings.retention_sweep_max_ms, quarter))


class Retention:
    """Serve's retention: drops the query rows of every run in the retention log (however it
    was purged), and with an age, purges the finished runs older than it.

    `reader` reads the log (the engine's connection will do); `admin` purges (None: no age,
    nothing is purged here).
    """

    def __init__(
        self,
        reader: JetStreamContext,
        sqlite_path: Path,
        *,
        retention_ms: int | None = None,
        admin: JetStreamContext | None = None,
    ) -> None:
        assert retention_ms is None or admin is not None, "purging needs the admin connection"
        self.reader = reader
        self.sqlite_path = sqlite_path
        self.retention_ms = retention_ms
        self.admin = admin
        self._purged_here: set[str] = set()  # purged by `sweep`, not read back from the log
        self._finished_to = 0  # the log's sequence up to which `_finish` looked at records
        self._unfinished: set[int] = set()  # sequences of records whose finish failed
        # Records held for the projection: sequence -> (its checkpoint, since when, ms).
        self._held: dict[int, tuple[int, int]] = {}
        self._swept_to: Expired | None = None  # the next sweep looks after it (None: oldest)
        self.purged = 0  # runs purged by this service (for logs and tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Drop purged runs' rows every `retention_log_poll_ms`, and sweep when due."""
        next_sweep = 0
        while not stop.is_set():
            try:
                await self.drop_rows()
                if self.retention_ms is not None and now_ms() >= next_sweep:
                    await self.sweep(now_ms())
                    next_sweep = now_ms() + sweep_interval_ms(self.retention_ms)
            except (nats.errors.Error, TimeoutError, sqlite3.Error, DagnatsError) as error:
                log.warning("retention: %s (tried again)", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.retention_log_poll_ms / 1000)

    async def drop_rows(self) -> None:
        """Delete the query rows of the runs of the log's records past the position stored in
        the SQLite file (`retention_rows.drop_logged`; the whole log, `retention_listed_max`
        records a call, when it holds none or the log was made again), and finish the purges
        among them cut short (`_finish`). The position is held short of a record the query
        tables' projection has not passed, until it does or the record is released
        (`_released`)."""
        try:
            info = await self.reader.stream_info(RETENTION_STREAM)
        except nats.js.errors.NotFoundError:
            return
        if not self.sqlite_path.exists():
            return  # (no rows yet: the projections make the file)
        stream = info.created.isoformat() if info.created is not None else ""
        stored = await asyncio.to_thread(read_position, self.sqlite_path)
        seen = 0
        if stored is not None and stored.stream == stream and stored.seq <= info.state.last_seq:
            seen = stored.seq  # (else a log made again: read from its start)
        after = max(seen, info.state.first_seq - 1)
        until = min(info.state.last_seq, after + settings.retention_listed_max)
        if until <= after:
            return  # nothing purged since the last look
        records = await read_records(self.reader, after, until)
        unfinished = await self._finish(records)
        released = await self._released(records)
        logged = [(seq, r.run_id, r.history_last_seq or None) for seq, r in records]
        position = LogPosition(until, stream)
        await asyncio.to_thread(
            drop_logged, self.sqlite_path, logged, position, unfinished, released
        )  # fmt: skip

    async def _released(self, records: list[tuple[int, PurgedRun]]) -> set[int]:
        """Sequences of the records held for the query tables' projection (their purged
        history past its checkpoint) that are held no longer: the checkpoint stood still
        `held_release_ms` since the record was first held at it, and the history stream holds
        no message after the checkpoint up to the record's last purged sequence (one request
        for all of them)."""
        applied = await asyncio.to_thread(applied_seq, self.sqlite_path)
        if applied is None:
            self._held = {}
            return set()
        held = {seq: r.history_last_seq for seq, r in records if r.history_last_seq > applied}
        now, was = monotonic_ms(), self._held
        self._held = {}
        for seq in held:  # (since when each is held at this checkpoint: a move starts again)
            at, since_ms = was.get(seq, (applied, now))
            self._held[seq] = (applied, since_ms if at == applied else now)
        due = [seq for seq, (_, ms) in self._held.items() if now - ms >= held_release_ms]
        if not due:
            return set()
        first = await _first_history_seq(self.reader, applied + 1)
        return {seq for seq in due if first is None or held[seq] < first}

    async def _finish(self, records: list[tuple[int, PurgedRun]]) -> int | None:
        """Finish the purges of the records that were cut short (a process stopped in the
        middle): the caches of a run whose history is gone (`finish_purge`: its timers, which
        would fire into a new run under its id, its snapshot, its ended marker), and, with the
        admin connection, a run whose purged history is still there. Not the purges of this
        service's sweep (carried out), nor records older than `ended_marker_ttl_ms`. Returns
        the sequence of the first record whose finish failed (the server did not answer):
        the position in the log is held short of it and it is tried again at the next read
        (until it is older than that bound); None when none failed."""
        oldest_ms = now_ms() - settings.ended_marker_ttl_ms
        done, self._purged_here = self._purged_here, set()
        finished_to, self._finished_to = self._finished_to, max(
            [self._finished_to, *(seq for seq, _ in records)]
        )
        failed: set[int] = set()
        for seq, record in records:
            again = seq in self._unfinished
            if (seq <= finished_to and not again) or record.run_id in done:
                continue  # (finished by now, or read again: held for a lagging projector)
            if record.purged_at_ms < oldest_ms:
                continue  # (its marker expired; a failed one is no longer tried again)
            try:
                await self._finish_one(record)
            except (nats.errors.Error, TimeoutError, DagnatsError) as error:
                log.warning("retention: finishing the purge of %s: %s (tried again)",
                            record.run_id, error)  # fmt: skip
                failed.add(seq)
        self._unfinished = (self._unfinished - {seq for seq, _ in records}) | failed
        return min(failed, default=None)

    async def _finish_one(self, record: PurgedRun) -> None:
        """Finish one recorded purge (`_finish`); raises what the server did not answer."""
        from dagnats.client.errors import RunNotFoundError

        js = self.admin or self.reader
        left = await finish_purge(js, record.run_id, purged_at_ms=record.purged_at_ms)
        if self.admin is None or not 0 < left <= record.history_last_seq:
            return
        answers = (RunNotFoundError, RunStillOpenError, ReopenedWhilePurgingError, RunParkedError)
        try:  # (its history still there: the purge is done again)
            await purge_run(
                self.admin, record.run_id, reason=record.reason, at_ms=record.purged_at_ms
            )
        except answers as error:  # (not to be purged, or purged meanwhile: not tried again)
            log.warning("retention: finishing the purge of %s: %s", record.run_id, error)

    async def sweep(self, at_ms: int) -> int:
        """Purge finished runs that ended more than the retention age before `at_ms`: at most
        `retention_purges_per_sweep_max`, looking at most `sweep_pages_max` pages of that many
        listed runs, from where the last sweep stopped (from the oldest again once a sweep
        reached the end of the list): runs it cannot purge, parked or reopened, however many,
        hold back none after them."""
        assert self.retention_ms is not None and self.admin is not None
        limit = settings.retention_purges_per_sweep_max
        cutoff = at_ms - self.retention_ms
        purged = 0
        after = self._swept_to
        for _ in range(sweep_pages_max):
            page = await asyncio.to_thread(expired_runs, self.sqlite_path, cutoff, limit, after)
            for listed in page:
                if purged >= limit:
                    break
                purged += await self._purge(listed, at_ms, cutoff)
                after = listed
            if len(page) < limit and (not page or after == page[-1]):
                after = None  # the end of the list: the next sweep starts from the oldest
                break
            if purged >= limit:
                break
        self._swept_to = after
        self.purged += purged
        if purged:
            await self.drop_rows()
        return purged

    async def _purge(self, listed: Expired, at_ms: int, cutoff: int) -> int:
        """Purge one listed run; 1 if it was purged, else 0."""
        from dagnats.client.errors import RunNotFoundError

        admin = self.admin
        assert admin is not None
        try:
            await purge_run(
                admin, listed.run_id, reason=self.reason, at_ms=at_ms, ended_before_ms=cutoff
            )
            self._purged_here.add(listed.run_id)
            return 1
        except RunNotFoundError:
            # Its history is gone (purged meanwhile, or by hand): the rows of the life listed
            # go, up to the sequence they were at; a life begun since keeps its rows.
            bound = [(listed.run_id, listed.last_seq)]
            await asyncio.to_thread(delete_rows, self.sqlite_path, bound)
        except (RunStillOpenError, RunNotExpiredError):
            pass  # reopened (or a new life of the id) since the row was written
        except ReopenedWhilePurgingError as error:
            log.error("retention: %s", error)
        except RunParkedError as error:
            log.warning("retention: %s (not purged; the sweep goes on)", error)
        return 0

    @property
    def reason(self) -> str:
        assert self.retention_ms is not None
        return f"retention {self.retention_ms // 1000}s"


__all__ = [
    "RETENTION_PREFIX", "RETENTION_STREAM", "Expired", "PurgedRun", "ReopenedWhilePurgingError",
    "Retention", "RunNotExpiredError", "RunStillOpenError",
    "delete_rows", "ensure_log", "expired_runs", "finish_purge", "purge_run", "purged_runs",
    "read_records", "recorded_purge", "retention_subject", "stream_config", "sweep_interval_ms",
]  # fmt: skip
