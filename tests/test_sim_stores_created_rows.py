"""The simulator's projection databases (`dagnats.sim.stores.ProjectionStores.fresh`): every
seed finds the projection's tables as a first open left them, rows its `create` wrote
included (a projection that declares its `schema` and overrides `create` to do more, as
projections/base.py invites: an open whose stamp holds runs neither again)."""

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
