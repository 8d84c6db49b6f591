"""Reading the SQLite query tables: the read-only guard of `dagnats query` (and `POST
/v1/query`), and the `run list` filters (on the `runs` table, or on folded states when there
is no table). Shared by `dagnats/cli/projections.py` and `dagnats/api/`; imports neither.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from dagnats.runtime import projector
from kernel.state import RunState
from projections.sqlite import RUN_COLUMNS

# What a query may do: read. ATTACH (which creates files), DETACH, writes, schema changes
# and PRAGMAs that set a value are denied by SQLite's authorizer (on top of `mode=ro`).
QUERY_ACTIONS_ALLOWED: Final = frozenset(
    (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
     sqlite3.SQLITE_RECURSIVE)
)  # fmt: skip
QUERY_PRAGMAS_OF_A_NAME: Final = frozenset(
    ("table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
     "foreign_key_list")
)  # fmt: skip  # their argument names a table or index: they still only read
QUERY_PRAGMAS_READ: Final = frozenset(
    ("table_list", "function_list", "pragma_list", "collation_list", "user_version",
     "schema_version", "data_version", "page_count", "page_size", "encoding",
     "compile_options", "database_list", "query_only")
)  # fmt: skip  # read only without an argument (with one, some of them set a value)


def read_only_authorizer(
    action: int, first: str | None, second: str | None, _db: str | None, _trigger: str | None
) -> int:
    """SQLite authorizer of `dagnats query`: reads only (a PRAGMA only in its reading form)."""
    if action in QUERY_ACTIONS_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        pragma = (first or "").lower()
        if pragma in QUERY_PRAGMAS_OF_A_NAME or (second is None and pragma in QUERY_PRAGMAS_READ):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY



def list_runs_sql(
    path: Path,
    *,
    status: str | None,
    workflow: str | None,
    since_ms: int | None,
    failed_step: str | None,
    limit: int,
) -> list[dict[str, Any]] | None:
    """Rows of `runs` matching the filters, newest first; None when there is no such table."""
    if not path.exists():
        return None
    database = projector.open_database(path, readonly=True)
    try:
        if "runs" not in database.table_names():
            return None
        where: list[str] = []
        arguments: list[object] = []
        for column, value in (("status", status), ("workflow", workflow)):
            if value is not None:
                where.append(f"{column} = ?")
                arguments.append(value)
        if since_ms is not None:
            where.append("started_at_ms >= ?")
            arguments.append(since_ms)
        if failed_step is not None:
            where.append(
                "(failed_step_id = ? OR run_id IN (SELECT run_id FROM steps "
                "WHERE step_id = ? AND status = 'failed'))"
            )
            arguments.extend((failed_step, failed_step))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        columns = ", ".join(c for c in RUN_COLUMNS if c not in ("input", "output"))
        cursor = database.conn.execute(
            f"SELECT {columns} FROM runs {clause} ORDER BY started_at_ms DESC LIMIT ?",
            [*arguments, limit],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        database.close()


def state_matches(
    state: RunState,
    *,
    status: str | None,
    workflow: str | None,
    since_ms: int | None,
    failed_step: str | None,
) -> bool:
    """The same filters on a folded state (when there is no SQLite file to ask)."""
    name = state.workflow.name if state.workflow is not None else None
    failed = {s.step_id for s in state.steps if s.status == "failed"}
    return (
        (status is None or state.status == status)
        and (workflow is None or name == workflow)
        and (since_ms is None or state.started_at_ms >= since_ms)
        and (failed_step is None or state.failed_step_id == failed_step or failed_step in failed)
    )
