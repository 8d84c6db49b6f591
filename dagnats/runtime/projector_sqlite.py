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
from pathlib import Path
from typing import Final, cast

from sqlite_utils import Database

from dagnats.loading import load_attribute
from dagnats.runtime.clock import now_ms
from dagnats.runtime.resources import check_token
from kernel.errors import DagnatsError
from projections.base import Message, SqliteProjection, SqliteRunner, read_checkpoint

log = logging.getLogger("dagnats.projector")

SQLITE_FILE: Final = "dagnats.sqlite"
sqlite_busy_timeout_s: Final = 30.0
name_length_max: Final = 64


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

    async def settle(self) -> None:
        """Nothing to do: each batch's checkpoint is written in the batch's transaction."""

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
