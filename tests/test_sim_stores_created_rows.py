"""The simulator's projection databases (`dagnats.sim.stores.ProjectionStores.fresh`): every
seed finds the projection's tables as a first open left them, whatever the seeds before it did:
- rows its `create` wrote included (a projection that declares its `schema` and overrides
  `create` to do more, as projections/base.py invites: an open whose stamp holds runs neither
  again);
- nothing a trigger wrote while the last seed's rows were deleted (a table the projection names
  before the one whose trigger writes into it)."""

from __future__ import annotations

from sqlite_utils import Database

from dagnats.sim.stores import ProjectionStores
from projections.base import SqliteProjectionBase


class _Seeded(SqliteProjectionBase):
    """Its schema declared; its `create` also writes the one row `apply` then updates."""

    name = "seeded"
    tables = ("totals",)
    schema = ("CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL)",)

    def create(self, db: Database) -> None:
        super().create(db)
        db.execute("INSERT OR IGNORE INTO totals (k, n) VALUES ('all', 0)")


def _a_seed(stores: ProjectionStores, db: Database) -> list[tuple[object, ...]]:
    """What a seed finds after `fresh`, then what it does (counts one event)."""
    stores.fresh(db, _Seeded())
    found = [tuple(row) for row in db.execute("SELECT k, n FROM totals")]
    db.execute("UPDATE totals SET n = n + 1")
    return found


def test_every_seed_finds_the_rows_a_first_open_wrote() -> None:
    stores = ProjectionStores()
    found = [_a_seed(stores, stores.live) for _ in range(4)]
    assert found == [[("all", 0)]] * 4, found


class _Logged(SqliteProjectionBase):
    """A trigger of `items` writes into `log`, which the projection names first."""

    name = "logged"
    tables = ("log", "items")
    schema = (
        "CREATE TABLE IF NOT EXISTS log (what TEXT)",
        "CREATE TABLE IF NOT EXISTS items (id TEXT)",
        "CREATE TRIGGER IF NOT EXISTS items_gone AFTER DELETE ON items "
        "BEGIN INSERT INTO log VALUES ('gone ' || old.id); END",
    )


def test_no_seed_finds_what_a_trigger_wrote_while_the_last_seeds_rows_were_deleted() -> None:
    stores = ProjectionStores()
    db = stores.live
    found: list[list[object]] = []
    for seed in range(4):
        stores.fresh(db, _Logged())
        found.append([row[0] for row in db.execute("SELECT what FROM log")])
        db.execute("INSERT INTO items VALUES (?)", [f"seed {seed}"])
    assert found == [[]] * 4, found
