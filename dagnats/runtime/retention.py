"""Retention: purging finished runs (their history, snapshot and query rows), and its log.

A purge takes one finished run away for good: its history subject in the history stream,
its snapshot in the runs bucket, and (done by serve, which owns the file) its rows in the
SQLite query tables. Each purge is first written to the retention log (the stream
`DAGNATS_RETENTION`, one record per run on `dagnats.retention.<run>`), then carried out, so a
crash between the two is finished by the next sweep and no purge goes unrecorded.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.log_read import HistoryReader
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.projector_snapshot import KvSnapshotStore
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    ENDED_BUCKET,
    HISTORY_STREAM,
    RUNS_BUCKET,
    SCHEDULE_PREFIX,
    check_run_id,
    history_subject,
)
from kernel.errors import DagnatsError
from kernel.state import TERMINAL_RUN_STATUSES, RunState, is_terminal

log = logging.getLogger("dagnats.retention")

RETENTION_STREAM: Final = "DAGNATS_RETENTION"
RETENTION_PREFIX: Final = "dagnats.retention"
sqlite_busy_timeout_s: Final = 5.0
sweep_pages_max: Final = 4  # pages of listed runs one sweep looks at, at most
log_read_timeout_s: Final = 5.0  # a read of the log waits this for the server, twice


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
            f"run {run_id!r} was reopened while it was being purged: its {left} newer history "
            "message(s) are kept (the earlier ones are gone)"
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
    the last message read) and its snapshot. `js` must be an admin connection's.

    `ended_before_ms` (retention's cutoff): the life found must have ended before it (the
    sweep listed an old life; a new life under the id, ended since, is not its to purge).

    Raises:
        RunNotFoundError: the run has no history.
        RunStillOpenError: the run has not ended (nothing is purged).
        RunNotExpiredError: it ended at or after `ended_before_ms` (nothing is purged).
        ReopenedWhilePurgingError: it was reopened meanwhile (its newer messages are kept).
        RunParkedError: its history does not decode or fold (nothing is purged).
    """
    from dagnats.client.errors import RunNotFoundError
    from dagnats.runtime.projector import load_state

    history = JetStreamEventLog(js)
    state, last_seq = await load_state(history, KvSnapshotStore(js), check_run_id(run_id))
    if state.status == "new":
        raise RunNotFoundError(run_id)
    if not is_terminal(state):
        raise RunStillOpenError(run_id, state.status)
    ended = state.ended_at_ms
    if ended_before_ms is not None and (ended is None or ended >= ended_before_ms):
        raise RunNotExpiredError(run_id, ended)
    record = _record(state, last_seq, reason, at_ms)
    # Its timers left armed (an engine stopped between the run's last append and their
    # cancels) would fire into a new run under its id: the run's schedules go too, those
    # stored by now (each armed before the append that ended it), not a new life's or a
    # reopen's armed once the history purge below let one start.
    timers_last_seq = (await js.stream_info(COMMANDS_STREAM)).state.last_seq
    await ensure_log(js)
    await js.publish(
        retention_subject(run_id),
        msgspec.json.encode(record),
        stream=RETENTION_STREAM,
        headers={"Nats-Msg-Id": f"purge:{run_id}:{last_seq}"},
    )
    await js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id), seq=last_seq + 1)
    schedules = f"{SCHEDULE_PREFIX}.{run_id}.>"
    await js.purge_stream(COMMANDS_STREAM, subject=schedules, seq=timers_last_seq + 1)
    for bucket in (RUNS_BUCKET, ENDED_BUCKET):  # its snapshot; its ended marker (ended_runs)
        with contextlib.suppress(KeyNotFoundError, BucketNotFoundError):
            await (await js.key_value(bucket)).purge(run_id)
    left = await history.last_seq(run_id)
    if left:
        raise ReopenedWhilePurgingError(run_id, left)
    log.info("run %s purged (%s): its history up to sequence %d", run_id, reason, last_seq)
    return record


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


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=sqlite_busy_timeout_s)


class Expired(NamedTuple):
    """A finished run as the query tables list it: its id, end, and the sequence its rows
    are at (the rows of that life: none of a later one is at or below it)."""

    ended_at_ms: int
    run_id: str
    last_seq: int


def expired_runs(
    sqlite_path: Path, ended_before_ms: int, limit: int, after: Expired | None = None
) -> list[Expired]:
    """Finished runs (as the query tables know them) that ended before the time, oldest
    first, at most `limit`, after `after` in that order (None: from the oldest)."""
    if not sqlite_path.exists():
        return []
    marks = ",".join("?" for _ in TERMINAL_RUN_STATUSES)
    cursor = (after.ended_at_ms, after.run_id) if after is not None else (-1, "")
    db = _connect(sqlite_path)
    try:
        rows = db.execute(
            f"SELECT ended_at_ms, run_id, last_seq FROM runs WHERE status IN ({marks}) "
            "AND ended_at_ms IS NOT NULL AND ended_at_ms < ? AND (ended_at_ms, run_id) > (?, ?) "
            "ORDER BY ended_at_ms, run_id LIMIT ?",
            (*sorted(TERMINAL_RUN_STATUSES), ended_before_ms, *cursor, limit),
        ).fetchall()
    except sqlite3.OperationalError:  # no runs table yet
        return []
    finally:
        db.close()
    return [Expired(int(row[0]), str(row[1]), int(row[2])) for row in rows]


def delete_rows(sqlite_path: Path, purged: Iterable[tuple[str, int | None]]) -> int:
    """Delete purged runs' rows from every query table that has a `run_id` column; rows gone.

    `purged`: (run id, the last history sequence purged; None: every row of the run). A run id
    started again after its purge (a new life of it, README "Retention") keeps the new life's
    rows: a table with a `last_seq` or `seq` column loses only the rows at or below the purged
    sequence; one without (`steps`, a user's table) loses the run's rows unless its `runs` row
    is newer than the purge."""
    runs = list(purged)
    if not runs or not sqlite_path.exists():
        return 0
    db = _connect(sqlite_path)
    deleted = 0
    try:
        tables = [
            str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        columns = {
            table: {str(c[1]) for c in db.execute(f'PRAGMA table_info("{table}")')}
            for table in tables
        }
        with db:
            for run_id, last_seq in runs:
                newer = last_seq is not None and _newer_life(db, run_id, last_seq)
                for table in tables:
                    deleted += _delete_run_rows(db, table, columns[table], run_id, last_seq, newer)
    finally:
        db.close()
    return deleted


def _newer_life(db: sqlite3.Connection, run_id: str, last_seq: int) -> bool:
    """Whether the run's `runs` row is of a life begun after the purge of `last_seq`."""
    try:
        row = db.execute("SELECT last_seq FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.OperationalError:  # no runs table
        return False
    return row is not None and int(row[0]) > last_seq


def _delete_run_rows(
    db: sqlite3.Connection, table: str, columns: set[str], run_id: str, last_seq: int | None,
    newer: bool,
) -> int:  # fmt: skip
    if "run_id" not in columns:
        return 0
    seq_column = next((c for c in ("last_seq", "seq") if c in columns), None)
    if last_seq is not None and seq_column is not None:
        sql = f'DELETE FROM "{table}" WHERE run_id = ? AND "{seq_column}" <= ?'
        return int(db.execute(sql, (run_id, last_seq)).rowcount)
    if newer:
        return 0  # (rows of the new life, keyed by the run: they replaced the old ones)
    return int(db.execute(f'DELETE FROM "{table}" WHERE run_id = ?', (run_id,)).rowcount)


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
        self._log_seen = 0  # the log's sequence up to which the records' rows were dropped
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
        """Delete the query rows of the runs of the log's records not read yet by this
        process (from its start: the whole log, `retention_listed_max` records a call)."""
        try:
            info = await self.reader.stream_info(RETENTION_STREAM)
        except nats.js.errors.NotFoundError:
            return
        after = max(self._log_seen, info.state.first_seq - 1)
        until = min(info.state.last_seq, after + settings.retention_listed_max)
        if until <= after:
            return  # nothing purged since the last look
        records = [record for _, record in await read_records(self.reader, after, until)]
        if records:
            purged = [(r.run_id, r.history_last_seq or None) for r in records]
            await asyncio.to_thread(delete_rows, self.sqlite_path, purged)
        self._log_seen = until

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
