"""`/v1/approvals`: list pending, show, approve, reject; `/v1/events`: publish an external
event; `/v1/query`: read-only SQL on the query tables.

Mirrors `dagnats approval list|show|approve|reject`, `dagnats event publish` and `dagnats
query` (the same read-only guard, `dagnats.query_tables.read_only_authorizer`). A decision is
made with the credential of the approver identity `by` names (see `dagnats/api/services.py`):
the engine records that identity; a second decision is 409 naming who decided first.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Literal

from litestar import Router, get, post
from litestar.params import FromPath, JSONBody, Parameter

from dagnats.api import limits as api_limits
from dagnats.api.problems import ProblemError
from dagnats.api.services import Services, ServicesDep
from dagnats.api.views import (
    ApprovalView,
    DecisionBody,
    EventBody,
    EventPublishedView,
    PendingListView,
    QueryBody,
    QueryView,
    approval_view,
)
from dagnats.client import ApprovalNotFoundError
from dagnats.query_tables import read_only_authorizer
from dagnats.runtime import projector
from kernel.errors import DagnatsError
from steps import approvals

KeyParameter = Annotated[str, Parameter(description="The approval's key when a step asks several.")]


@get("/", summary="List approvals waiting for a decision, oldest first")
async def list_pending(services: ServicesDep) -> PendingListView:
    return PendingListView(approvals=await services.client.pending_approvals())


@get("/{run_id:str}/{step_id:str}", summary="Show one approval (and who decided)")
async def show_approval(
    run_id: FromPath[str], step_id: FromPath[str], services: ServicesDep, key: KeyParameter = ""
) -> ApprovalView:
    state = await services.client.get_run(run_id)
    found = approvals.find(state, key or step_id)
    if found is None:
        raise ApprovalNotFoundError(
            run_id, key or step_id, f"run {run_id!r} has no approval {key or step_id!r}"
        )
    return approval_view(run_id, found)


async def _decide(
    decision: Literal["approve", "reject"],
    run_id: str,
    step_id: str,
    body: DecisionBody,
    services: Services,
) -> ApprovalView:
    client = await services.approver(body.by)
    identity = client.connection.identity
    if decision == "approve":
        resolved = await client.approve(
            run_id, step_id, data=body.data, comment=body.comment, by=identity, key=body.key
        )
    else:
        resolved = await client.reject(
            run_id, step_id, data=body.data, comment=body.comment, by=identity, key=body.key
        )
    return approval_view(run_id, resolved)


@post("/{run_id:str}/{step_id:str}/approve", status_code=200, summary="Approve")
async def approve(
    run_id: FromPath[str],
    step_id: FromPath[str],
    services: ServicesDep,
    data: JSONBody[DecisionBody | None] = None,
) -> ApprovalView:
    """The step completes with `data`; 409 if it was resolved already (by whom, when)."""
    return await _decide("approve", run_id, step_id, data or DecisionBody(), services)


@post("/{run_id:str}/{step_id:str}/reject", status_code=200, summary="Reject")
async def reject(
    run_id: FromPath[str],
    step_id: FromPath[str],
    services: ServicesDep,
    data: JSONBody[DecisionBody | None] = None,
) -> ApprovalView:
    """The step fails for good (on_failure and compensation apply)."""
    return await _decide("reject", run_id, step_id, data or DecisionBody(), services)


approvals_router = Router(
    path="/v1/approvals",
    route_handlers=[list_pending, show_approval, approve, reject],
    tags=["approvals"],
)


@post("/v1/events", status_code=202, summary="Publish an external event", tags=["events"])
async def publish_event(data: JSONBody[EventBody], services: ServicesDep) -> EventPublishedView:
    """Every run waiting for `name` (a wait_for_event step, a cancel_on) gets it."""
    seq = await services.client.publish_event(data.name, data.payload, event_id=data.event_id)
    return EventPublishedView(event=data.name, seq=seq)


@post("/v1/query", status_code=200, summary="Read-only SQL on the query tables", tags=["query"])
async def query(data: JSONBody[QueryBody], services: ServicesDep) -> QueryView:
    """SELECT (and PRAGMAs that only read) on runs, steps, events, approvals, ..."""
    if not 1 <= data.limit <= api_limits.query_rows_max:
        raise ProblemError(
            400, f"limit {data.limit} is out of 1..{api_limits.query_rows_max}",
            kind="validation", field="limit",
        )  # fmt: skip
    if len(data.sql) > api_limits.query_sql_chars_max:
        raise ProblemError(
            400, f"sql has {len(data.sql)} characters; at most "
            f"{api_limits.query_sql_chars_max} (query_sql_chars_max)",
            kind="validation", field="sql",
        )  # fmt: skip
    path = services.sqlite_path()
    if path is None or not path.exists():
        raise ProblemError(
            503, "no query tables here (no SQLite file in the serve's data dir)",
            kind="no-query-tables", hint="`dagnats serve` maintains <data dir>/dagnats.sqlite",
        )  # fmt: skip
    columns, rows = await asyncio.to_thread(_run_query, path, data.sql, data.limit)
    return QueryView(columns=columns, rows=[dict(zip(columns, r, strict=True)) for r in rows])


def _run_query(path: Path, sql: str, limit: int) -> tuple[list[str], list[tuple[object, ...]]]:
    """The query, in a thread (the serve's loop runs the engine), cut off after
    `query_time_s_max`.

    Raises:
        ProblemError: 503 without tables; 400 naming SQLite's message.
    """
    try:
        database = projector.open_database(path, readonly=True)
    except DagnatsError as error:
        raise ProblemError(503, str(error), kind="no-query-tables") from None
    deadline = time.monotonic() + api_limits.query_time_s_max
    try:
        database.conn.set_authorizer(read_only_authorizer)
        database.conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        cursor = database.conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, cursor.fetchmany(limit)
    except Exception as error:  # sqlite3.Error, and read-only violations
        message = " ".join(str(error).split())
        hint = "the tables: runs, steps, events, ..."
        if "not authorized" in message:
            message += " (the query tables are readonly: no ATTACH, writes or setting PRAGMAs)"
            hint = "`dagnats query` runs SELECT, and PRAGMAs that only read"
        if "interrupted" in message:
            message += f" (over query_time_s_max = {api_limits.query_time_s_max} s)"
        raise ProblemError(
            400, f"query failed: {message}", kind="query", field="sql", hint=hint
        ) from None
    finally:
        database.close()
