"""A projection that declares its schema is created once: `SqliteRunner.open` skips its
statements while the checkpoint's stamp of them holds, and creates again whenever the schema
changed (other statements, a table dropped by hand, a checkpoints table of an older release)."""

from __future__ import annotations

from sqlite_utils import Database

from projections.base import (
    CHECKPOINTS_TABLE,
    SqliteProjectionBase,
    SqliteRunner,
    read_checkpoint,
    schema_fingerprint,
)
from projections.sqlite import QueryTables
from tests.projection_support import completed_run

SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS seen (seq INTEGER NOT NULL, tag TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS seen_by_tag ON seen (tag)",
)


class _Seen(SqliteProjectionBase):
    name = "seen"
    tables = ("seen",)
    schema: tuple[str, ...] = SCHEMA


class _SeenByTagAndSeq(_Seen):
    """The same projection (name, version, tables) with one more index."""

    schema = (*SCHEMA, "CREATE INDEX IF NOT EXISTS seen_by_seq ON seen (seq, tag)")


class _Undeclared(SqliteProjectionBase):
    """A projection whose `create` is its own: it runs at every open."""

    name = "undeclared"
    tables = ("undeclared",)

    def __init__(self) -> None:
        self.created = 0

    def create(self, db: Database) -> None:
        self.created += 1
        db.execute("CREATE TABLE IF NOT EXISTS undeclared (a INTEGER)")


def _opened(db: Database, projection: SqliteProjectionBase) -> tuple[int, list[str]]:
    """Open the projection; the sequence it resumes after and the statements run."""
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        seq = SqliteRunner(db, projection).open()
    finally:
        db.conn.set_trace_callback(None)
    return seq, statements


def _creates(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER"))]


def _objects(db: Database) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}


def test_the_second_open_runs_no_schema_statement_and_resumes_where_it_was() -> None:
    db = Database(memory=True)
    messages = [(i + 1, "run-1", data) for i, data in enumerate(completed_run("run-1"))]
    last = SqliteRunner(db, QueryTables()).apply_all(messages)
    assert last == len(messages) > 0
    seq, statements = _opened(db, QueryTables())
    assert seq == last
    assert _creates(statements) == [], statements
    assert len(statements) <= 2, statements  # (the checkpoint's stamp, the schema version)


def test_a_changed_schema_is_created_again() -> None:
    db = Database(memory=True)
    assert _opened(db, _Seen())[0] == 0
    assert "seen_by_seq" not in _objects(db)
    assert schema_fingerprint(_Seen()) != schema_fingerprint(_SeenByTagAndSeq())
    seq, statements = _opened(db, _SeenByTagAndSeq())
    assert seq == 0 and _creates(statements), "the new index was not created"
    assert "seen_by_seq" in _objects(db)
    assert _creates(_opened(db, _SeenByTagAndSeq())[1]) == [], "the new stamp did not hold"


def test_a_table_dropped_by_hand_is_created_again() -> None:
    db = Database(memory=True)
    _opened(db, _Seen())
    db.execute("DROP TABLE seen")
    _seq, statements = _opened(db, _Seen())
    assert _creates(statements), "the open trusted a stamp of tables that are gone"
    assert {"seen", "seen_by_tag"} <= _objects(db)


def test_a_checkpoints_table_of_an_older_release_gains_the_stamp() -> None:
    db = Database(memory=True)
    db.execute(
        f"CREATE TABLE {CHECKPOINTS_TABLE} (name TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "seq INTEGER NOT NULL, events INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, "
        "tables TEXT NOT NULL)"
    )
    db.execute(f"INSERT INTO {CHECKPOINTS_TABLE} VALUES ('seen', 1, 7, 9, 0, '[\"seen\"]')")
    seq, statements = _opened(db, _Seen())
    assert seq == 7 and _creates(statements)
    stored = read_checkpoint(db, "seen")
    assert stored is not None and (stored.seq, stored.events) == (7, 9)
    seq, statements = _opened(db, _Seen())
    assert seq == 7 and _creates(statements) == [], statements


def test_a_projection_without_a_declared_schema_is_created_at_every_open() -> None:
    db = Database(memory=True)
    projection = _Undeclared()
    for opens in (1, 2, 3):
        assert SqliteRunner(db, projection).open() == 0
        assert projection.created == opens
    assert schema_fingerprint(projection) == ""


def test_another_version_still_starts_from_zero() -> None:
    db = Database(memory=True)
    runner = SqliteRunner(db, _Seen())
    runner.open()
    db.execute("INSERT INTO seen VALUES (1, 'a')")
    runner.apply_batch([], after_seq=0, now_ms=0)

    class _Newer(_Seen):
        version = 2

    assert SqliteRunner(db, _Newer()).open() == 0
    assert db.execute("SELECT count(*) FROM seen").fetchone() == (0,), "not rebuilt"
