"""Projections into SQLite, for the projector (`dagnats.runtime.projector`, which re-exports
these names): opening a projection database, the `SqliteTarget` that feeds a
`projections.base.SqliteProjection` batch by batch in a worker thread, and loading a user's
projection class by `MODULE:CLASS`.

A SQLite file belongs to one process's data dir, so a SqliteTarget is never shared between
engines (no lease). This module writes the SQLite file it is given; it never touches NATS.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Final, cast

from sqlite_utils import Database

from dagnats.loading import load_attribute
from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.projector_folds import SharedFolds
from dagnats.runtime.projector_pace import Pacer, slices
from dagnats.runtime.resources import check_token
from kernel.errors import DagnatsError
from projections.base import (
    BatchResult,
    Decoded,
    Message,
    SqliteProjection,
    SqliteRunner,
    read_checkpoint,
    reset_projection,
)

log = logging.getLogger("dagnats.projector")

SQLITE_FILE: Final = settings.sqlite_file
sqlite_busy_timeout_s: Final = 30.0
_busy_timeout_ms: Final = int(sqlite_busy_timeout_s * 1000)
name_length_max: Final = 64
# A batch at most this big is applied in the event loop's thread, not handed to a worker
# thread: for the messages a live tail gathers, the hand-off (the executor, the wake-up and
# the GIL passed back and forth) cost more CPU than the transaction itself (py-spy of serve).
# In a thread, each row's sqlite3_step lets go of the GIL and the busy loop takes it: a live
# 10-step chain's batches (about 40 messages each, 100 ms apart) made serve call futex about
# 15,000 times in 10 s with a bound of 16, none with 128 (strace -c -f). At about 35 us a
# message, an inline batch holds the loop at most about 5 ms. It never waits for the file's
# lock there: a locked file goes to the thread.
inline_batch_messages_max: Final = 128
inline_batch_bytes_max: Final = 256 * 1024
# A projection's file is checkpointed (its WAL copied into it, and synced) in a worker thread
# at most this often, after a batch, not by SQLite inside a commit: every 1,000 pages of WAL a
# commit ran that checkpoint and its fsyncs, a commit of 0.2 ms took 4-28 ms then (p90 4.4
# ms, max 28 ms over 150 batches of 40 messages), in the event loop's thread for an inline
# batch. The WAL grows meanwhile by what this long of batches write.
wal_checkpoint_interval_ms: Final = 1_000
# What the WAL file is cut back to after a checkpoint (it holds about a second of a catch-up's
# writes, 16-28 MB measured; without a limit it stays at its largest while serve runs).
wal_size_limit_bytes: Final = 4 * 1024 * 1024


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
    """A SqliteProjection in a SQLite file; batches run in a worker thread (small ones in the
    event loop's thread when `inline`)."""

    kind = "sqlite"

    def __init__(
        self,
        path: Path,
        projection: SqliteProjection,
        *,
        inline: bool = False,
        folds: SharedFolds | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """`inline`: apply small batches in the event loop's thread (`inline_batch_*`); for
        a projection whose cost per event is known and small (the query tables), never a
        user's, which may be slow. `folds`: the events of messages this process's engine
        appended, taken instead of decoding those messages again. `pacer`: an inline batch is
        applied in slices, each when the pacer gives it a turn (`projector_pace`). (A big
        batch stays in a thread: inline at any size, the engine's loop spent 0.24-0.28 ms of
        CPU a step of bench.throughput against 0.21-0.22, its steps/s not higher.)"""
        self.folds = folds
        self.pacer = pacer
        self.name = check_name(projection.name)
        self.version = str(projection.version)
        self.path = path
        self.where = str(path)
        self.projection = projection
        self.inline = inline
        self.db: Database | None = None
        self.runner: SqliteRunner | None = None
        self._busy_ms = _busy_timeout_ms  # the connection's busy timeout, as last set
        self._checkpoint_due = 0.0  # monotonic time of the next WAL checkpoint

    async def open(self) -> int:
        if self.db is None:
            self.db = open_database(self.path)
            self.db.conn.execute("PRAGMA wal_autocheckpoint = 0")  # (`_checkpoint_wal`)
            self.db.conn.execute(f"PRAGMA journal_size_limit = {wal_size_limit_bytes}")
            self.runner = SqliteRunner(self.db, self.projection)
            self._busy_ms = _busy_timeout_ms
        self._set_busy_timeout(_busy_timeout_ms)
        runner = self.runner
        assert runner is not None
        return await asyncio.to_thread(runner.open, now_ms())

    async def reset(self) -> None:
        """Drop the projection's tables and set its checkpoint to 0 (open first)."""
        assert self.db is not None, "open first"
        self._set_busy_timeout(_busy_timeout_ms)
        tables = self.projection.tables
        await asyncio.to_thread(reset_projection, self.db, self.projection.name, tables)

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        runner = self.runner
        assert runner is not None, "open first"
        result = None
        decoded = self.folds.events_of(messages) if self.folds is not None else None
        if self.inline and _small(messages):
            self._set_busy_timeout(0)  # inline never waits for another writer's lock
            if self.pacer is not None:
                result = await _apply_paced(runner, messages, after_seq, decoded, self.pacer)
            else:
                result = _apply_inline(runner, messages, after_seq, decoded)
        if result is None:
            self._set_busy_timeout(_busy_timeout_ms)
            result = await asyncio.to_thread(
                runner.apply_batch,
                messages,
                after_seq=after_seq,
                now_ms=now_ms(),
                decoded=decoded,
            )
        problems = [*result.problems, *_drain_problems(self.projection)]
        for problem in problems[:10]:
            log.warning("projection %s: %s", self.name, problem)
        if time.monotonic() >= self._checkpoint_due:
            await self._checkpoint_wal()
        return result.seq, result.applied

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the file in a worker thread (PASSIVE: it waits for no reader
        or writer, doing what it can); nothing else uses the connection meanwhile."""
        self._checkpoint_due = time.monotonic() + wal_checkpoint_interval_ms / 1000
        db = self.db
        assert db is not None and not db.conn.in_transaction
        checkpoint = asyncio.ensure_future(asyncio.to_thread(_checkpoint, db.conn))
        try:
            await asyncio.shield(checkpoint)
        except asyncio.CancelledError:  # (the connection is not closed under the thread)
            await asyncio.wait((checkpoint,))
            raise

    def _set_busy_timeout(self, busy_ms: int) -> None:
        """Set the connection's busy timeout when it is not already `busy_ms` (two PRAGMA
        statements per batch otherwise: the live tail's batches all run inline)."""
        if self.db is not None and self._busy_ms != busy_ms:
            self.db.conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            self._busy_ms = busy_ms

    async def stored_seq(self) -> int:
        if self.db is None:
            return 0
        self._set_busy_timeout(_busy_timeout_ms)
        stored = await asyncio.to_thread(read_checkpoint, self.db, self.projection.name)
        return stored.seq if stored is not None and str(stored.version) == self.version else 0

    async def settle(self) -> None:
        """Nothing to do: each batch's checkpoint is written in the batch's transaction."""

    async def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
            self.runner = None


def _checkpoint(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _small(messages: list[Message]) -> bool:
    if len(messages) > inline_batch_messages_max:
        return False
    return sum(len(message[2]) for message in messages) <= inline_batch_bytes_max


def _apply_inline(
    runner: SqliteRunner, messages: list[Message], after_seq: int, decoded: Decoded | None
) -> BatchResult | None:
    """Apply a small batch in this thread, on a connection whose busy timeout is 0 (it never
    waits for the file's write lock); None when another connection holds it (nothing was
    applied: the caller uses a thread)."""
    try:
        return runner.apply_batch(messages, after_seq=after_seq, now_ms=now_ms(), decoded=decoded)
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        return None  # the transaction was rolled back (or never began)


async def _apply_paced(
    runner: SqliteRunner,
    messages: list[Message],
    after_seq: int,
    decoded: Decoded | None,
    pacer: Pacer,
) -> BatchResult | None:
    """Apply a batch in this thread in slices, one transaction for the whole batch
    (its checkpoint with it), each slice, each part of its writes and its commit when
    `pacer` gives it a turn. None when another connection holds the file's write lock
    (nothing was applied: the caller uses a thread, as `_apply_inline`)."""
    pacer.start_batch()
    await pacer.turn()
    connection = runner.db.conn
    assert not connection.in_transaction, "a write transaction is already open"
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        return None
    problems: list[str] = []
    try:
        stored_events = runner.begin_checked(after_seq)
        applied = 0
        for index, part in enumerate(slices(messages)):
            if index:
                await pacer.turn()
            applied += runner.apply_part(part, after_seq, problems, decoded)
        last_seq = max([after_seq, *(message[0] for message in messages)])
        flush_parts = getattr(runner.projection, "flush_parts", None)  # (QueryTables' own)
        if flush_parts is not None:
            for _ in flush_parts(runner.db):
                await pacer.turn()
        else:
            await pacer.turn()
        runner.end_batch(last_seq, stored_events + applied, now_ms(), flushed=bool(flush_parts))
        await pacer.turn()
        connection.commit()  # (in a thread, its hand-off of the GIL stalled the loop)
    except BaseException:
        connection.rollback()  # (a no-op once committed, or when an error ended it)
        runner.projection.discard()
        raise
    runner.committed(last_seq)
    return BatchResult(seq=last_seq, applied=applied, problems=tuple(problems))


def _drain_problems(projection: object) -> list[str]:
    problems = getattr(projection, "problems", None)
    if not isinstance(problems, list):
        return []
    drained = [str(problem) for problem in problems]
    problems.clear()
    return drained


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
