"""Retention's part in the SQLite query tables: which finished runs they list as expired,
deleting purged runs' rows, and where serve's reading of the retention log is.

Serve keeps its position in the retention log (the sequence up to which the records' rows
were dropped, and which stream that was) in the file itself, in the transaction of the
deletes (`drop_logged`): a restart reads on from it, not the whole log again, and a log made
again (its stream's creation time changed, or its last sequence below the position) is read
from its start. The position stops short of a record whose purged history the query tables'
projection has not applied yet (its checkpoint, `projections.base`): a lagging projector may
still commit rows of that run read before the purge, so the record is read and its rows
dropped again until the projection passed it, or until retention.py releases it (the history
stream holds nothing the projection has still to apply up to the record, and a projector's
batch in hand had time to be committed: the checkpoint of a run purged before the projection
applied it stays below it until some run appends history).

This module touches the SQLite file only: no NATS (retention.py reads the log).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from kernel.state import TERMINAL_RUN_STATUSES
from projections.base import CHECKPOINTS_TABLE

sqlite_busy_timeout_s: Final = 5.0
QUERY_TABLES: Final = "dagnats"  # the query tables' projection (projections.sqlite NAME)
POSITION_TABLE: Final = "_dagnats_retention"  # (no run_id column: no purge deletes its row)


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
    try:
        with db:
            return _delete_in(db, runs)
    finally:
        db.close()


def _delete_in(db: sqlite3.Connection, runs: list[tuple[str, int | None]]) -> int:
    """`delete_rows` in the open transaction of `db`."""
    if not runs:
        return 0
    tables = [
        str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    columns = {
        table: {str(c[1]) for c in db.execute(f'PRAGMA table_info("{table}")')} for table in tables
    }
    deleted = 0
    for run_id, last_seq in runs:
        newer = last_seq is not None and _newer_life(db, run_id, last_seq)
        for table in tables:
            deleted += _delete_run_rows(db, table, columns[table], run_id, last_seq, newer)
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


class LogPosition(NamedTuple):
    """Where serve's reading of the retention log is: the sequence up to which the records'
    rows were dropped, in the stream made at `stream` (its creation time, as the server says)."""

    seq: int
    stream: str


def read_position(sqlite_path: Path) -> LogPosition | None:
    """The position stored in the file, None when it holds none."""
    if not sqlite_path.exists():
        return None
    db = _connect(sqlite_path)
    try:
        row = db.execute(f"SELECT seq, stream FROM {POSITION_TABLE} WHERE id = 0").fetchone()
    except sqlite3.OperationalError:  # no such table yet
        return None
    finally:
        db.close()
    return None if row is None else LogPosition(int(row[0]), str(row[1]))


def drop_logged(
    sqlite_path: Path,
    records: Sequence[tuple[int, str, int | None]],
    until: LogPosition,
    unfinished_seq: int | None = None,
    released: Collection[int] = (),
) -> LogPosition:
    """Delete the rows of the runs of the log's records (sequence, run id, last history
    sequence purged), read up to `until`, and store the position reached, in one transaction:
    `until`, or short of the first record whose purged history the query tables' projection
    has not applied (the next read drops its rows again) and whose sequence is not in
    `released` (records no longer waited for), or of `unfinished_seq` (a record whose purge is
    to be finished again). Returns the position stored."""
    assert all(seq <= until.seq for seq, _, _ in records), (records, until)
    assert unfinished_seq is None or 0 < unfinished_seq <= until.seq, (unfinished_seq, until)
    db = _connect(sqlite_path)
    try:
        with db:
            _delete_in(db, [(run_id, last_seq) for _, run_id, last_seq in records])
            applied = _applied_seq(db)
            held = [
                seq
                for seq, _, last in records
                if applied is not None and last is not None and last > applied
                and seq not in released
            ]
            held += [] if unfinished_seq is None else [unfinished_seq]
            reached = LogPosition(min(held) - 1, until.stream) if held else until
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {POSITION_TABLE} (id INTEGER PRIMARY KEY "
                "CHECK (id = 0), seq INTEGER NOT NULL, stream TEXT NOT NULL)"
            )
            db.execute(
                f"INSERT OR REPLACE INTO {POSITION_TABLE} (id, seq, stream) VALUES (0, ?, ?)",
                (reached.seq, reached.stream),
            )
    finally:
        db.close()
    return reached


def applied_seq(sqlite_path: Path) -> int | None:
    """The history sequence the query tables' projection has applied (`_applied_seq`); None
    when it has none or there is no file."""
    if not sqlite_path.exists():
        return None
    db = _connect(sqlite_path)
    try:
        return _applied_seq(db)
    finally:
        db.close()


def _applied_seq(db: sqlite3.Connection) -> int | None:
    """The history sequence the query tables' projection has applied (its checkpoint); None
    when it has none. (A projection of a user's sharing the file is not waited for: its
    checkpoint may be one left by a projection no longer run.)"""
    try:
        row = db.execute(
            f"SELECT seq FROM {CHECKPOINTS_TABLE} WHERE name = ?", (QUERY_TABLES,)
        ).fetchone()
    except sqlite3.OperationalError:  # no projection wrote the file yet
        return None
    return None if row is None else int(row[0])
