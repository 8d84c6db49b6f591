"""A deliberately slow custom projection for the SIGKILL test: one row per event, and a pause
per event so the projector is killed in the middle of a batch."""

from __future__ import annotations

import os
import time

from sqlite_utils import Database

from kernel.events import AnyEvent
from projections.base import Position, SqliteProjectionBase, tag_of

PAUSE_ENV = "DAGNATS_TEST_PAUSE_MS"


class SlowProjection(SqliteProjectionBase):
    name = "slow"
    version = 1
    tables = ("slow_events",)

    def __init__(self) -> None:
        self.pause_s = int(os.environ.get(PAUSE_ENV, "2")) / 1000

    def create(self, db: Database) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS slow_events (seq INTEGER NOT NULL, idx INTEGER NOT NULL, "
            "run_id TEXT NOT NULL, type TEXT NOT NULL)"  # no key: a duplicate would show
        )

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        db.execute(
            "INSERT INTO slow_events (seq, idx, run_id, type) VALUES (?, ?, ?, ?)",
            [at.seq, at.index, at.run_id, tag_of(event)],
        )
        time.sleep(self.pause_s)
