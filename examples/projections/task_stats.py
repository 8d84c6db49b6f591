"""Task attempts, failures and time per task type per day: a custom SQLite projection.

```sh
dagnats projection run examples.projections.task_stats:TaskStats     # catch up, then tail
dagnats query "SELECT * FROM task_daily ORDER BY day DESC, failures DESC"
```

`task_daily` has one row per (UTC day, task type): attempts scheduled, attempts that failed
(errors and timeouts), completions, and the summed time from an attempt's schedule to its end.
Events name a step, not its task type, so the projection keeps its own lookup table
(`task_daily_steps`), filled from `run.started`, which carries the workflow definition.

It counts with `+ 1` updates: that is safe because the runner applies each event exactly once
(its checkpoint is committed in the same transaction as these rows).
"""

from __future__ import annotations

import datetime as dt

from sqlite_utils import Database

from kernel.events import (
    AnyEvent,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepTimedOut,
)
from projections.base import Position, SqliteProjectionBase

DAY_MS = 86_400_000


def day_of(at_ms: int) -> str:
    """The UTC day of a time in ms, as 'YYYY-MM-DD'."""
    return dt.datetime.fromtimestamp(at_ms // DAY_MS * 86_400, dt.UTC).date().isoformat()


class TaskStats(SqliteProjectionBase):
    name = "task_stats"
    version = 1
    events = frozenset(
        {"run.started", "step.scheduled", "step.completed", "step.failed", "step.timed_out"}
    )
    tables = ("task_daily", "task_daily_steps")

    def create(self, db: Database) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS task_daily (day TEXT NOT NULL, task TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, "
            "completions INTEGER NOT NULL DEFAULT 0, busy_ms INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (day, task))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS task_daily_steps (run_id TEXT NOT NULL, "
            "step_id TEXT NOT NULL, task TEXT NOT NULL, scheduled_at_ms INTEGER, "
            "PRIMARY KEY (run_id, step_id))"
        )

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        match event:
            case RunStarted():
                db.conn.executemany(
                    "INSERT OR REPLACE INTO task_daily_steps (run_id, step_id, task) "
                    "VALUES (?, ?, ?)",
                    [(at.run_id, step.id, step.task or step.type) for step in event.workflow.steps],
                )
            case StepScheduled():
                db.execute(
                    "UPDATE task_daily_steps SET scheduled_at_ms = ? "
                    "WHERE run_id = ? AND step_id = ?",
                    [event.at_ms, at.run_id, event.step_id],
                )
                self._count(db, at.run_id, event.step_id, event.at_ms, "attempts")
            case StepCompleted():
                self._count(db, at.run_id, event.step_id, event.at_ms, "completions")
            case StepFailed() | StepTimedOut():
                self._count(db, at.run_id, event.step_id, event.at_ms, "failures")
            case _:
                pass

    def _count(self, db: Database, run_id: str, step_id: str, at_ms: int, column: str) -> None:
        row = db.execute(
            "SELECT task, scheduled_at_ms FROM task_daily_steps WHERE run_id = ? AND step_id = ?",
            [run_id, step_id],
        ).fetchone()
        if row is None:
            return
        task, scheduled_at_ms = row
        busy_ms = 0 if column == "attempts" or scheduled_at_ms is None else at_ms - scheduled_at_ms
        db.execute(
            f"INSERT INTO task_daily (day, task, {column}, busy_ms) VALUES (?, ?, 1, ?) "
            f"ON CONFLICT(day, task) DO UPDATE SET {column} = {column} + 1, "
            "busy_ms = busy_ms + excluded.busy_ms",
            [day_of(at_ms), task, max(0, busy_ms)],
        )
