"""The console's pages (GET): dashboard, runs, a run (and its live part and SSE), approvals
inbox, workflows, a workflow, static files.

Reads only: the query tables (`dagnats.console.reads`, in a thread) and the run histories and
workflows through the API's `Client`. Every value shown goes through an autoescaping template.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any, Final

from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from dagnats.api import routes_live
from dagnats.api.routes_runs import watched_states
from dagnats.api.services import Services, ServicesDep
from dagnats.client import RunNotFoundError, WorkflowNotFoundError
from dagnats.console import dag_svg, reads, runview
from dagnats.console.common import fragment, page
from dagnats.console.reads import RUN_STATUSES
from dagnats.console.security import KeysDep
from kernel.errors import DagnatsError
from kernel.events import Decision
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from kernel.workflow import workflow_to_document

STATIC_TYPES: Final = {
    "htmx.min.js": "text/javascript", "htmx-sse.min.js": "text/javascript",
    "live.js": "text/javascript",
    "console.css": "text/css", "LICENSE-htmx.txt": "text/plain; charset=utf-8",
}  # fmt: skip
history_read_max: Final = 20_000  # history messages a run page folds (beyond: the last state)
approvals_listed_max: Final = 500


def now_ms() -> int:
    return int(time.time() * 1000)


@get("/static/{name:str}", include_in_schema=False, sync_to_thread=False)
def static(name: FromPath[str]) -> Response[bytes]:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        return Response(b"not found", status_code=404, media_type="text/plain")
    data = resources.files("dagnats.console").joinpath("static", name).read_bytes()
    return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@get("/", include_in_schema=False)
async def dashboard(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    path = services.sqlite_path()
    board = reads.Dashboard()
    if path is not None:
        board = await asyncio.to_thread(reads.dashboard, path, now_ms())
    pending = await services.client.pending_approvals(approvals_listed_max)
    peak = max([max(s, e) for _, s, e in board.per_minute] or [0]) or 1
    return page(
        request, keys, "dashboard.html", title="Dashboard", board=board, pending=pending,
        peak=peak, statuses=RUN_STATUSES,
    )  # fmt: skip


def _filters(params: Any) -> tuple[reads.RunFilters, str]:
    """The runs page's filters from its query string, and a problem with them ("" if none)."""
    status = params.get("status") or None
    problem = ""
    if status is not None and status not in RUN_STATUSES:
        problem, status = f"status {status!r} is not a run status", None
    since_text = (params.get("since") or "").strip()
    since_ms = None
    if since_text:
        since_ms = reads.since_ms(since_text, now_ms())
        if since_ms is None:
            problem = f"since {since_text!r} is neither a duration (2h, 7d) nor an ISO date"
    page_text = params.get("page") or "1"
    page_number = int(page_text) if page_text.isdigit() else 1
    page_number = min(max(page_number, 1), reads.runs_pages_max)
    search = (params.get("q") or "").strip()[: reads.search_chars_max] or None
    return reads.RunFilters(
        status=status, workflow=params.get("workflow") or None, since_ms=since_ms,
        failed_step=params.get("failed_step") or None, search=search, page=page_number,
    ), problem  # fmt: skip


@get("/runs", include_in_schema=False)
async def runs(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    params = request.query_params
    filters, problem = _filters(params)
    path = services.sqlite_path()
    found = None
    names: list[str] = []
    if path is not None:
        found = await asyncio.to_thread(reads.runs_page, path, filters)
        names = await asyncio.to_thread(reads.workflow_names, path)
    rows, more = found if found is not None else ([], False)
    query = {k: params.get(k) or "" for k in ("status", "workflow", "since", "failed_step", "q")}
    return page(
        request, keys, "runs.html", title="Runs", rows=rows, more=more, filters=filters,
        query=query, problem=problem, statuses=RUN_STATUSES, workflows=names,
        tables=found is not None,
    )  # fmt: skip


async def _history(services: Services, run_id: str) -> list[tuple[int, Decision]]:
    decisions: list[tuple[int, Decision]] = []
    messages = services.client.history(run_id)
    async with contextlib.aclosing(messages):
        async for seq, decision in messages:
            decisions.append((seq, decision))
            if len(decisions) >= history_read_max:
                break
    if not decisions:
        raise RunNotFoundError(run_id)
    return decisions


def _fold(decisions: list[tuple[int, Decision]]) -> RunState:
    state = INITIAL_STATE
    for _, decision in decisions:
        for event in decision.events:
            state = evolve(state, event)
    return state


async def run_context(services: Services, run_id: str) -> dict[str, Any]:
    """Everything a run page (and its live part) shows."""
    decisions = await _history(services, run_id)
    state = _fold(decisions)
    children = await services.client.children(run_id)
    lineage = await services.client.lineage(run_id) if (
        state.continued_from or state.continued_as) else []  # fmt: skip
    turns = runview.agent_turns(decisions)
    name = state.workflow.name if state.workflow is not None else "?"
    return {
        "run": state, "workflow_name": name, "terminal": is_terminal(state),
        "last_seq": decisions[-1][0], "steps": runview.step_rows(state, now_ms()),
        "dag": dag_svg.render(runview.dag_nodes(state), title=f"DAG of run {run_id}"),
        "timeline": runview.timeline(decisions), "turns": turns,
        "turn_totals": runview.totals(turns), "children": children, "lineage": lineage,
        "pending": [a for a in state.approvals if not a.decision],
        "input": runview.show_json(state.input), "output": runview.show_json(state.output),
        "duration": runview.duration_text(
            ((state.ended_at_ms or now_ms()) - state.started_at_ms)
            if state.started_at_ms else None),
    }  # fmt: skip


@get("/runs/{run_id:str}", include_in_schema=False)
async def run(
    request: Request[Any, Any, Any], run_id: FromPath[str], services: ServicesDep, keys: KeysDep
) -> Any:
    try:
        context = await run_context(services, run_id)
    except (RunNotFoundError, DagnatsError) as error:
        return page(request, keys, "missing.html", status=404, title="Run not found",
                    message=str(error))  # fmt: skip
    return page(request, keys, "run.html", title=f"Run {run_id}", run_id=run_id, **context)


@get("/runs/{run_id:str}/live", include_in_schema=False)
async def run_live(run_id: FromPath[str], services: ServicesDep) -> Any:
    """The live part of a run page (htmx fetches it when the SSE stream says it changed)."""
    context = await run_context(services, run_id)
    return fragment("run_region.html", run_id=run_id, **context)


@get("/runs/{run_id:str}/events", include_in_schema=False)
async def run_events(
    run_id: FromPath[str], services: ServicesDep, after: FromQuery[int] = 0
) -> ServerSentEvent:
    """`changed` after each new history message past `after`, `end` when the run ends."""
    await services.client.get_run(run_id)
    return ServerSentEvent(_changes(services, run_id, after))


async def _changes(
    services: Services, run_id: str, after: int
) -> AsyncGenerator[ServerSentEventMessage, None]:
    async for seq, _, state in watched_states(services, run_id):
        if is_terminal(state):
            yield ServerSentEventMessage(data=state.status, event="end", id=seq)
            return
        if seq > after:
            yield ServerSentEventMessage(data=str(seq), event="changed", id=seq)


@get("/runs/{run_id:str}/model-live", include_in_schema=False)
async def model_live(run_id: FromPath[str], services: ServicesDep) -> ServerSentEvent:
    """A run's live model text (the HTTP API's `GET /v1/runs/{id}/live`, dagnats/api/
    routes_live.py) under the console's own access rule: a session, not the API's bearer."""
    stream: ServerSentEvent = await routes_live.live_text.fn(run_id=run_id, services=services)
    return stream


@get("/approvals", include_in_schema=False)
async def approvals(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    pending = await services.client.pending_approvals(approvals_listed_max)
    identities = sorted(services.approver_identities())
    return page(
        request, keys, "approvals.html", title="Approvals inbox", pending=pending,
        identities=identities, show_json=runview.show_json,
    )  # fmt: skip


@get("/workflows", include_in_schema=False)
async def workflows(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    names = await services.client.list_workflows()
    return page(request, keys, "workflows.html", title="Workflows", names=names)


@get("/workflows/{name:str}", include_in_schema=False)
async def workflow(
    request: Request[Any, Any, Any], name: FromPath[str], services: ServicesDep, keys: KeysDep,
    revision: FromQuery[int | None] = None,
) -> Any:  # fmt: skip
    client = services.client
    try:
        definition = await client.get_workflow(name, revision)
        revisions = await client.workflow_revisions(name)
    except (WorkflowNotFoundError, DagnatsError) as error:
        return page(request, keys, "missing.html", status=404, title="Workflow not found",
                    message=str(error))  # fmt: skip
    nodes = [dag_svg.Node(d.id, d.depends_on, kind=d.type) for d in definition.steps]
    shown = revision if revision is not None else (revisions[-1] if revisions else 1)
    return page(
        request, keys, "workflow.html", title=f"Workflow {name}", name=name,
        revision=shown, revisions=revisions,
        document=runview.show_json(workflow_to_document(definition)),
        dag=dag_svg.render(nodes, title=f"DAG of workflow {name}"),
    )  # fmt: skip


HANDLERS: Final = (
    static, dashboard, runs, run, run_live, run_events, model_live, approvals, workflows,
    workflow,
)  # fmt: skip
