"""What the console reads from the query tables (`<data dir>/dagnats.sqlite`, read-only): the
dashboard's numbers and a page of the runs list with its filters.

Every query is bounded (`LIMIT`, a window of minutes, a page size); each function opens the file
read-only and closes it, and is meant to run in a thread (`asyncio.to_thread`): the serve's
loop runs the engine. No writes, no network.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

from sqlite_utils import Database

from dagnats.runtime import projector
from kernel.state import RunStatus
from kernel.workflow.durations import parse_duration
from projections.sqlite import RUN_COLUMNS

RUN_STATUSES: Final = tuple(s for s in get_args(RunStatus) if s != "new")
_DAYS: Final = re.compile(r"(\d{1,5})d")

runs_page_size: Final = 50
runs_pages_max: Final = 200  # paging goes this deep (page * size rows are skipped by SQLite)
dashboard_minutes: Final = 30  # the per-minute chart's window
dashboard_workflows_shown: Final = 5
search_chars_max: Final = 128


@dataclass(frozen=True)
class Dashboard:
    counts: dict[str, int] = field(default_factory=dict)
    per_minute: list[tuple[int, int, int]] = field(default_factory=list)  # minute, started, ended
    slowest: list[dict[str, Any]] = field(default_factory=list)
    failing: list[dict[str, Any]] = field(default_factory=list)
    available: bool = False


@dataclass(frozen=True)
class RunFilters:
    status: str | None = None
    workflow: str | None = None
    since_ms: int | None = None
    failed_step: str | None = None
    search: str | None = None  # a run id or its beginning
    page: int = 1


def since_ms(text: str, now_ms: int) -> int | None:
    """The moment `since` names (a duration back, `7d`, or an ISO date), None if neither."""
    days = _DAYS.fullmatch(text)
    if days:
        return now_ms - int(days.group(1)) * 86_400_000
    duration = parse_duration(text, "since")
    if isinstance(duration, int):
        return now_ms - duration
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _rows(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _has_runs(path: Path) -> Database | None:
    if not path.exists():
        return None
    database = projector.open_database(path, readonly=True)
    if "runs" not in database.table_names():
        database.close()
        return None
    return database


def dashboard(path: Path, now_ms: int) -> Dashboard:
    """Counts by status, runs started and ended per minute over the last
    `dashboard_minutes`, and the slowest (mean duration) and most failing workflows."""
    database = _has_runs(path)
    if database is None:
        return Dashboard()
    try:
        conn = database.conn
        counts = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        first_minute = now_ms // 60_000 - dashboard_minutes + 1
        started = dict(conn.execute(
            "SELECT started_at_ms / 60000, count(*) FROM runs WHERE started_at_ms >= ? "
            "GROUP BY 1", [first_minute * 60_000]).fetchall())  # fmt: skip
        ended = dict(conn.execute(
            "SELECT ended_at_ms / 60000, count(*) FROM runs WHERE ended_at_ms >= ? "
            "GROUP BY 1", [first_minute * 60_000]).fetchall())  # fmt: skip
        per_minute = [
            (minute, int(started.get(minute, 0)), int(ended.get(minute, 0)))
            for minute in range(first_minute, first_minute + dashboard_minutes)
        ]
        slowest = _rows(conn.execute(
            "SELECT workflow, count(*) AS runs, avg(ended_at_ms - started_at_ms) AS mean_ms, "
            "max(ended_at_ms - started_at_ms) AS max_ms FROM runs WHERE ended_at_ms IS NOT NULL "
            "AND status = 'completed' GROUP BY workflow ORDER BY mean_ms DESC LIMIT ?",
            [dashboard_workflows_shown]))  # fmt: skip
        failing = _rows(conn.execute(
            "SELECT workflow, count(*) AS failed, max(started_at_ms) AS last_ms FROM runs "
            "WHERE status IN ('failed', 'compensate_failed') GROUP BY workflow "
            "ORDER BY failed DESC LIMIT ?", [dashboard_workflows_shown]))  # fmt: skip
    finally:
        database.close()
    return Dashboard(
        counts={str(k): int(v) for k, v in counts.items()}, per_minute=per_minute,
        slowest=slowest, failing=failing, available=True,
    )  # fmt: skip


def runs_page(path: Path, filters: RunFilters) -> tuple[list[dict[str, Any]], bool] | None:
    """One page of `runs` matching `filters`, newest first, and whether a next page exists;
    None when there are no query tables yet."""
    assert 1 <= filters.page <= runs_pages_max, filters.page
    database = _has_runs(path)
    if database is None:
        return None
    where: list[str] = []
    arguments: list[object] = []
    for column, value in (("status", filters.status), ("workflow", filters.workflow)):
        if value:
            where.append(f"{column} = ?")
            arguments.append(value)
    if filters.since_ms is not None:
        where.append("started_at_ms >= ?")
        arguments.append(filters.since_ms)
    if filters.failed_step:
        where.append(
            "(failed_step_id = ? OR run_id IN (SELECT run_id FROM steps "
            "WHERE step_id = ? AND status = 'failed'))"
        )
        arguments.extend((filters.failed_step, filters.failed_step))
    if filters.search:
        escaped = filters.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("run_id LIKE ? ESCAPE '\\'")
        arguments.append(escaped + "%")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    columns = ", ".join(c for c in RUN_COLUMNS if c not in ("input", "output"))
    try:
        rows = _rows(database.conn.execute(
            f"SELECT {columns} FROM runs {clause} ORDER BY started_at_ms DESC, run_id "
            "LIMIT ? OFFSET ?",
            [*arguments, runs_page_size + 1, (filters.page - 1) * runs_page_size],
        ))  # fmt: skip
    finally:
        database.close()
    return rows[:runs_page_size], len(rows) > runs_page_size


def workflow_names(path: Path) -> list[str]:
    """The workflows that have runs (for the filter's choices)."""
    database = _has_runs(path)
    if database is None:
        return []
    try:
        found = database.conn.execute(
            "SELECT DISTINCT workflow FROM runs ORDER BY workflow LIMIT 500"
        ).fetchall()
    finally:
        database.close()
    return [str(row[0]) for row in found]
