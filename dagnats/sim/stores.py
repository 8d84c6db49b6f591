"""The two in-memory SQLite databases of a call's seeds (live, rebuild), each emptied for a seed.

`ProjectionStores` is what `projector.py` opens the SQLite projection on in every seed: creating
the schema costs more than a seed's batches, so the databases are kept across the seeds of one
call (`shared.py`) and each seed finds the projection's tables as a first open left them
(`fresh`). Compared there too: a table's rows in both (`same_rows`), the empty ones at once.

This module may not read the wall clock, draw randomness or do I/O beyond its in-memory
databases.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from sqlite_utils import Database

from projections.base import (
    CHECKPOINTS_TABLE,
    SqliteProjection,
    SqliteRunner,
    write_transaction,
)

SEQUENCES_TABLE: Final = "sqlite_sequence"  # SQLite's own: each AUTOINCREMENT table's counter
# (the schema version then, and the rows of SQLite's and the checkpoints' tables then)
_Kept = tuple[int, dict[str, list[tuple[object, ...]]]] | None


class ProjectionStores:
    """The two in-memory databases of the SQLite projection (live, rebuild), kept across the
    seeds of one call: each seed opens the projection on emptied tables (`fresh`)."""

    def __init__(self) -> None:
        self.live = Database(memory=True)
        self.rebuild = Database(memory=True)
        # Tables seen in each database: no table is ever dropped, so one seen stays there.
        self._tables: dict[int, set[str]] = {id(self.live): set(), id(self.rebuild): set()}
        self._columns: dict[str, int] = {}  # table -> its column count (the same in both)
        # Each database as `fresh` first left it with all of a projection's tables (its pages).
        self._templates: dict[tuple[int, str, tuple[str, ...]], bytes] = {}
        # ... and what of it is given back by rows (`_kept_rows`; None: the pages are restored).
        self._kept: dict[tuple[int, str, tuple[str, ...]], _Kept] = {}

    def fresh(self, db: Database, projection: SqliteProjection, now_ms: int = 0) -> SqliteRunner:
        """The projection opened on emptied tables: no row, its checkpoint at sequence 0.

        The first times, its rows and checkpoint are deleted (`empty`) and it is opened
        (`SqliteRunner.open`); once the database held all its tables before that, what this
        leaves is kept: its pages (a copy of a few pages) and the rows of SQLite's and the
        projections' own tables (counters such as AUTOINCREMENT's; the checkpoint with its
        schema stamp, so the open finds the tables made). Each later call gives the database
        back those rows, in one transaction, and no other: no seed leaves anything to the next.
        The pages are restored instead (`deserialize`) when that cannot be so (a seed changed
        the schema, a transaction is open, the database has tables the projection does not
        name, or the first open wrote rows in the projection's tables): a restore of the pages
        makes SQLite prepare every statement again (~25 us each, ~10 a seed), which rows put
        back do not."""
        key = (id(db), projection.name, projection.tables)
        kept = self._kept.get(key)
        if kept is not None and self._put_back(db, projection, kept):
            runner = SqliteRunner(db, projection)
            position = runner.open(now_ms)
            assert position == 0, f"{projection.name}: opened at {position} on emptied tables"
            return runner
        template = self._templates.get(key)
        if template is not None:
            try:
                db.conn.deserialize(template)
            except sqlite3.Error:  # (a statement still open: delete the rows instead)
                template = None
        whole = template is None and self.empty(db, projection)
        runner = SqliteRunner(db, projection)
        position = runner.open(now_ms)
        assert position == 0, f"{projection.name}: opened at {position} on emptied tables"
        if whole:
            self._templates[key] = db.conn.serialize()
            self._kept[key] = _kept_rows(db, projection)
        return runner

    def _put_back(self, db: Database, projection: SqliteProjection, kept: _Kept) -> bool:
        """Empty the projection's tables and give SQLite's and the checkpoints' tables back
        their kept rows; False (nothing done) when the schema is not the one kept then."""
        if kept is None or db.conn.in_transaction:
            return False
        schema_version, own_rows = kept
        if db.conn.execute("PRAGMA schema_version").fetchone()[0] != schema_version:
            return False  # (a table made or changed since: restore the pages)
        with write_transaction(db):
            _delete_rows(db, projection.tables)
            for table, rows in own_rows.items():
                db.conn.execute(f'DELETE FROM "{table}"')
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    db.conn.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
        return True

    def empty(self, db: Database, projection: SqliteProjection) -> bool:
        """Delete the projection's rows and its checkpoint (its tables stay).

        Returns:
            Whether the database held all the projection's tables (then they are all empty).
        """
        existing = self._tables.setdefault(id(db), set())
        if not existing.issuperset((*projection.tables, CHECKPOINTS_TABLE)):
            existing.update(db.table_names())
        with write_transaction(db):
            _delete_rows(db, tuple(table for table in projection.tables if table in existing))
            if CHECKPOINTS_TABLE in existing:
                db.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE name = ?", [projection.name])
            if SEQUENCES_TABLE in existing:  # (AUTOINCREMENT counters start again too)
                for table in projection.tables:
                    db.execute(f"DELETE FROM {SEQUENCES_TABLE} WHERE name = ?", [table])
        return existing.issuperset((*projection.tables, CHECKPOINTS_TABLE))

    def empty_tables(self, db: Database, tables: tuple[str, ...]) -> set[str]:
        """The tables without a row, found in one query (none when some table is missing)."""
        if not tables:
            return set()
        query = "SELECT " + ", ".join(f'NOT EXISTS (SELECT 1 FROM "{table}")' for table in tables)
        try:
            row = db.conn.execute(query).fetchone()
        except sqlite3.Error:  # (a table missing: each is compared on its own)
            return set()
        return {table for table, empty in zip(tables, row, strict=True) if empty}

    def same_rows(self, live: Database, rebuilt: Database, table: str) -> bool:
        """Whether the table holds the same rows in both databases, found cheaply: each sorted
        by every column (by SQLite, a total order) and compared as lists. Equal lists are equal
        multisets; unequal ones may still be (an order that ties unequal rows, such as NOCASE):
        False means "compare them the slow way", never "they differ"."""
        try:
            columns = self._columns.get(table)
            if columns is None:
                cursor = live.execute(f'SELECT * FROM "{table}" LIMIT 0')
                columns = self._columns[table] = len(cursor.description)
            order = ", ".join(str(index) for index in range(1, columns + 1))
            query = f'SELECT * FROM "{table}" ORDER BY {order}'
            return bool(
                live.conn.execute(query).fetchall() == rebuilt.conn.execute(query).fetchall()
            )
        except sqlite3.Error:  # (schemas that differ: the slow comparison says how)
            return False


def _delete_rows(db: Database, tables: tuple[str, ...]) -> None:
    """Delete every row of `tables`: of those holding rows (found in one query; a seed leaves
    most of a projection's tables empty), again while one still has rows (a trigger of a table
    deleted after it wrote them: the tables' order would otherwise leave the last seed's)."""
    if not tables:
        return
    held = "SELECT " + ", ".join(f'EXISTS (SELECT 1 FROM "{t}")' for t in tables)
    for _ in range(len(tables) + 1):
        row = db.conn.execute(held).fetchone()
        full = [table for table, has in zip(tables, row, strict=True) if has]
        if not full:
            return
        for table in full:
            db.conn.execute(f'DELETE FROM "{table}"')
    raise AssertionError(f"rows come back in {tables} after every delete (triggers)")


def _kept_rows(db: Database, projection: SqliteProjection) -> _Kept:
    """What `_put_back` gives the database back, read just after a first `fresh` left it; None
    when rows cannot make it so (it holds a table the projection does not name, or rows in the
    projection's tables: its `create` wrote them, and an open whose schema stamp holds does not
    run it again)."""
    own = (CHECKPOINTS_TABLE, SEQUENCES_TABLE)
    names = [row[0] for row in db.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    if any(name not in own and name not in projection.tables for name in names):
        return None
    for table in projection.tables:  # (rows its `create` wrote: an open does not write again)
        if table in names and db.conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
            return None
    rows = {
        name: db.conn.execute(f'SELECT * FROM "{name}"').fetchall() for name in own if name in names
    }
    (schema_version,) = db.conn.execute("PRAGMA schema_version").fetchone()
    return int(schema_version), rows
