"""`/v1/runs`: start, list, show, history, wait, cancel, signal, live events (SSE), audit.

Mirrors `dagnats run start|list|show|history|wait|cancel|signal|audit` and the `Client`
methods behind them; every write is a command to the engine through the `Client`.

Idempotency: `POST /v1/runs` with an `Idempotency-Key` header starts the run under an id
derived from the workflow and the key (`idem-` + sha256), so the same key for the same
workflow returns the first run for as long as its history is kept (at least 24 h, the
promise), also under concurrent requests: they send the same start under the same message id
(deduplicated by JetStream) and all wait for the one run. The key is durable because the run
id is: nothing else is stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any, get_args

import litestar.params
from litestar import Request, Response, Router, get, post
from litestar.params import FromQuery, JSONBody, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from dagnats.api import limits as api_limits
from dagnats.api.admission import schema_problem, start_time
from dagnats.api.problems import ProblemError
from dagnats.api.services import Services, ServicesDep
from dagnats.api.views import (
    AcceptedView,
    AuditView,
    CancelBody,
    HistoryItem,
    HistoryPage,
    RunListView,
    RunView,
    SignalBody,
    SignalSentView,
    StartedView,
    StartRunBody,
    WaitView,
    history_item,
    run_view,
    summary_of_row,
    summary_of_state,
)
from dagnats.client import RunNotFoundError, WaitTimeoutError
from dagnats.input_schema import InputSchemaError
from dagnats.query_tables import list_runs_sql, state_matches
from dagnats.runtime.clock import now_ms
from dagnats.runtime.parked import decode_message
from dagnats.runtime.resources import check_run_id
from kernel.events import Decision
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, RunStatus, is_terminal
from kernel.workflow.durations import parse_duration

RUN_STATUSES = tuple(s for s in get_args(RunStatus) if s != "new")
IDEMPOTENCY_PREFIX = "idem-"
_DAYS = re.compile(r"(\d{1,5})d")

RunId = Annotated[str, Parameter(description="The run's id.", max_length=128)]


def idempotent_run_id(workflow: str, key: str) -> str:
    """The run id a key stands for (per workflow): stable, a safe subject token."""
    digest = hashlib.sha256(f"{workflow}\0{key}".encode()).hexdigest()[:48]
    return IDEMPOTENCY_PREFIX + digest


def _check_key(key: str) -> str:
    if not 1 <= len(key) <= api_limits.idempotency_key_chars_max or not all(
        33 <= ord(char) <= 126 for char in key
    ):
        raise ProblemError(
            400,
            f"header Idempotency-Key has {len(key)} characters; it must be 1.."
            f"{api_limits.idempotency_key_chars_max} visible ASCII characters",
            kind="validation", field="header.Idempotency-Key", hint="e.g. a UUID",
        )  # fmt: skip
    return key


def _header_parameter(name: str, description: str) -> Any:
    """An optional request header: `HeaderParameter` where Litestar has it (it deprecates
    `Parameter(header=...)`, a warning that fails an import under -W error), else that."""
    header_parameter = getattr(litestar.params, "HeaderParameter", None)
    if header_parameter is not None:
        return header_parameter(name=name, default=None, required=False, description=description)
    return Parameter(header=name, default=None, required=False, description=description)


@post("/", status_code=201, summary="Start a run (idempotent with Idempotency-Key or run_id)")
async def start_run(
    data: JSONBody[StartRunBody],
    services: ServicesDep,
    idempotency_key: str | None = _header_parameter(
        "Idempotency-Key", "The same key for the same workflow returns the first run."
    ),
) -> Response[StartedView]:
    """201 with the run id; 200 when the run existed already (same run id or key)."""
    client = services.client
    run_id = data.run_id
    if idempotency_key is not None:
        if run_id is not None:
            raise ProblemError(
                400, "give run_id or an Idempotency-Key header, not both",
                kind="validation", field="run_id",
            )  # fmt: skip
        run_id = idempotent_run_id(data.workflow, _check_key(idempotency_key))
    # Does the run exist? Its history's last sequence (one direct get), not its state.
    existing = run_id is not None and await client.connection.history.last_seq(
        check_run_id(run_id)
    ) > 0  # fmt: skip
    if existing and idempotency_key is not None:
        assert run_id is not None
        view = StartedView(run_id=run_id, workflow=data.workflow, created=False)
        return Response(view, status_code=200)
    run_at_ms = start_time(data.run_at)
    try:
        started = await client.start(data.workflow, data.input, run_id=run_id, run_at_ms=run_at_ms)
    except InputSchemaError as error:
        raise schema_problem(error) from None
    view = StartedView(run_id=started, workflow=data.workflow, created=not existing)
    return Response(view, status_code=200 if existing else 201)


def _since_ms(text: str, now: int) -> int:
    days = _DAYS.fullmatch(text)
    if days:
        return now - int(days.group(1)) * 86_400_000
    duration = parse_duration(text, "since")
    if isinstance(duration, int):
        return now - duration
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ProblemError(
            400, f"since {text!r} is neither a duration nor an ISO date",
            kind="validation", field="query.since", hint="e.g. since=2h, 7d, 2025-01-31",
        ) from None  # fmt: skip
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@get("/", summary="List runs, newest first (the `run list` filters)")
async def list_runs(
    services: ServicesDep,
    status: FromQuery[str | None] = None,
    workflow: FromQuery[str | None] = None,
    since: str | None = Parameter(default=None, description="A duration back or an ISO date."),
    failed_step: FromQuery[str | None] = None,
    limit: int = Parameter(
        default=api_limits.runs_listed_default, ge=1, le=api_limits.runs_listed_max
    ),
) -> RunListView:
    if status is not None and status not in RUN_STATUSES:
        raise ProblemError(
            400, f"status {status!r} is not a run status (allowed: {', '.join(RUN_STATUSES)})",
            kind="validation", field="query.status",
        )  # fmt: skip
    since_ms = _since_ms(since, now_ms()) if since is not None else None
    path = services.sqlite_path()
    rows = None
    if path is not None:
        rows = list_runs_sql(
            path, status=status, workflow=workflow, since_ms=since_ms,
            failed_step=failed_step, limit=limit,
        )  # fmt: skip
    if rows is not None:
        return RunListView(runs=[summary_of_row(row) for row in rows], source="sqlite")
    states = await services.client.list_runs(api_limits.runs_listed_max)
    matching = [
        summary_of_state(state) for state in states
        if state_matches(
            state, status=status, workflow=workflow, since_ms=since_ms, failed_step=failed_step
        )
    ]  # fmt: skip
    return RunListView(runs=matching[:limit], source="history")


@get("/{run_id:str}", summary="Show a run (its state folded from history)")
async def show_run(run_id: RunId, services: ServicesDep) -> RunView:
    client = services.client
    state = await client.get_run(run_id)
    return run_view(state, await client.children(run_id))


@get("/{run_id:str}/history", summary="A page of a run's history (after a sequence)")
async def run_history(
    run_id: RunId,
    services: ServicesDep,
    after: int = Parameter(default=0, ge=0, description="The last sequence already seen."),
    limit: int = Parameter(
        default=api_limits.history_page_default, ge=1, le=api_limits.history_page_max
    ),
) -> HistoryPage:
    history = services.client.connection.history
    items: list[HistoryItem] = []
    more = False
    messages = history.read(check_run_id(run_id), after_seq=after)
    async with contextlib.aclosing(messages):
        async for seq, data in messages:
            if len(items) == limit:
                more = True
                break
            items.append(history_item(seq, decode_message(run_id, seq, data)))
    if not items and after == 0:
        raise RunNotFoundError(run_id)
    next_after = items[-1].seq if more else None
    return HistoryPage(run_id=run_id, items=items, next_after=next_after)


@get("/{run_id:str}/wait", summary="Wait for a run to end (a long poll with a bound)")
async def wait_run(
    run_id: RunId,
    services: ServicesDep,
    timeout_s: float = Parameter(
        default=api_limits.wait_timeout_s_default, gt=0, le=api_limits.wait_timeout_s_max
    ),
) -> WaitView:
    """`ended` false: the bound passed first (the run's state then); ask again."""
    try:
        state = await services.client.wait(run_id, timeout_s=timeout_s)
    except WaitTimeoutError as error:
        return WaitView(ended=False, run=run_view(error.state))
    return WaitView(ended=True, run=run_view(state))


@post("/{run_id:str}/cancel", status_code=202, summary="Cancel a run")
async def cancel_run(
    run_id: RunId, services: ServicesDep, data: JSONBody[CancelBody | None] = None
) -> AcceptedView:
    await services.client.cancel(run_id, data.reason if data is not None else "")
    return AcceptedView(run_id=run_id)


@post("/{run_id:str}/signals", status_code=202, summary="Send a named signal to a run")
async def signal_run(
    run_id: RunId, data: JSONBody[SignalBody], services: ServicesDep
) -> SignalSentView:
    await services.client.signal(run_id, data.name, data.payload)
    return SignalSentView(run_id=run_id, signal=data.name)


@get("/{run_id:str}/audit", summary="Replay-audit a run")
async def audit_run(run_id: RunId, services: ServicesDep) -> AuditView:
    report = await services.client.audit(run_id, sqlite_path=services.sqlite_path())
    return AuditView(
        run_id=report.run_id, consistent=report.consistent, summary=report.summary(),
        messages=report.messages, events=report.events, status=report.status,
        last_seq=report.last_seq, snapshot_checked=report.snapshot_checked,
        rows_checked=report.rows_checked,
        divergence=report.divergence.describe() if report.divergence is not None else None,
    )  # fmt: skip


@get(
    "/{run_id:str}/events",
    summary="A run's history live, as Server-Sent Events (id = history sequence)",
    response_description="text/event-stream; resume with the Last-Event-ID header",
)
async def run_events(
    request: Request[Any, Any, Any],
    run_id: RunId,
    services: ServicesDep,
    after: int = Parameter(default=0, ge=0, description="Resume after this sequence."),
) -> ServerSentEvent:
    """Each event is one history message (`event: decision`, `id: <seq>`, data: JSON); the
    stream ends when the run ends or after `sse_stream_s_max`; reconnect with Last-Event-ID."""
    last_event_id = request.headers.get("last-event-id", "")
    if last_event_id:
        if not last_event_id.isdigit():
            raise ProblemError(
                400, f"header Last-Event-ID {last_event_id[:40]!r} is not a history sequence",
                kind="validation", field="header.Last-Event-ID",
            )  # fmt: skip
        after = max(after, int(last_event_id))
    client = services.client
    await client.get_run(run_id)  # 404 before the stream starts
    return ServerSentEvent(_events(services, run_id, after))


async def _events(
    services: Services, run_id: str, after: int
) -> AsyncGenerator[ServerSentEventMessage, None]:
    import msgspec

    async for seq, decision, state in watched_states(services, run_id):
        if seq > after:
            data = msgspec.json.encode(history_item(seq, decision)).decode()
            yield ServerSentEventMessage(data=data, event="decision", id=seq)
        if is_terminal(state):
            yield ServerSentEventMessage(data=state.status, event="end", id=seq)
            return


async def watched_states(
    services: Services, run_id: str
) -> AsyncGenerator[tuple[int, Decision, RunState], None]:
    """(history sequence, decision, the run's state after it) of each history message of a
    run, live, for at most `sse_stream_s_max` (the API's and the console's event streams)."""
    state = INITIAL_STATE
    watch = services.client.watch(run_id, timeout_s=api_limits.sse_stream_s_max)
    async with contextlib.aclosing(watch):
        async for seq, decision in watch:
            for event in decision.events:
                state = evolve(state, event)
            yield seq, decision, state


router = Router(
    path="/v1/runs",
    route_handlers=[
        start_run, list_runs, show_run, run_history, wait_run, cancel_run, signal_run,
        audit_run, run_events,
    ],
    tags=["runs"],
)  # fmt: skip
