"""The HTTP worker bridge's routes under `/v1/tasks` (Litestar), over a `TaskBridge`.

```
POST /v1/tasks/poll             {"task_types": [...], "max_tasks": 1, "timeout_ms": 30000}
                                -> 200 {"tasks": [{"id", "task", "run_id", "step_id", ...}]}
POST /v1/tasks/{id}/complete    {"output": ...} or, for an agent turn,
                                {"turn": {"agent": "continue", "state": ..., "tool_calls": [...]}}
                                {"turn": {"agent": "done", "output": ...}}
POST /v1/tasks/{id}/fail        {"error": "...", "retryable": true, "retry_after_ms": 5000}
POST /v1/tasks/{id}/heartbeat   {} -> {"id", "lease_ms"}
POST /v1/tasks/results          {"results": [{"id", "output"} | {"id", "turn"} |
                                             {"id", "error", "retryable", "retry_after_ms"}]}
                                -> 200 {"results": [{"id", "status"} | {"id", "status":
                                        "refused", "problem": {...}}]}
```

`/v1/tasks/results` settles up to `bridge_poll_tasks_max` tasks in one request (what a poll of
many returned): each item as its own complete (no `error`) or fail (`error` given), all sent at
once, one answer per item in order; an item refused (unknown id, settled, past its deadline,
output refused) is `"refused"` with its problem and changes nothing of the others. With a
`poll` (the body of /poll, checked before anything is sent) it also polls, while the results
are sent (the leases being sent do not count as held), and answers, once both are done, the
tasks taken under `tasks` (their leases counted from then; one run out meanwhile left to come
back); should that poll be refused (429, 503) the answer is its problem,
and the results stand (sent again, each is refused as settled: nothing is recorded twice; one
not stored is unknown, 404: its task comes back).

complete/fail answer 200 once the server acknowledged the result, 202 while it is still
being sent (it is kept and sent on). Errors are RFC 9457 problem details
(`application/problem+json`: type, title, status, detail, hint, and `errors` with the field
path for a body that does not validate): 400 malformed JSON or a body of the wrong shape, 404
an unknown or expired task id, 409 a task already settled or past its deadline, 413 a body over
`settings.bridge_body_bytes_max`, 422 an output refused (recorded as invalid_output) or a rule
broken, 429 too many tasks held, 503 NATS unreachable.

`bridge_route_handlers(bridge)` gives the Router to mount (dagnats/api/app.py's
`extra_route_handlers`). The problem helper here is local to the bridge's routes: the app's own
(dagnats/api/problems.py) may replace it when both are merged.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, Router, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Body

from dagnats.agent import Continue, Done, ToolCall
from dagnats.api.bridge import TaskBridge
from dagnats.api.bridge_wire import BridgeError, BridgeTask, ResultItem, Status, check_poll
from dagnats.runtime import settings
from kernel import limits

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:dagnats:problem:"
# A JSON request body (Litestar 2.23+ asks for the marker; `Body` works across 2.x).
JSON: Final = Body(media_type=RequestEncodingType.JSON)
TASK_ID_LENGTH_MAX: Final = 128  # the bridge's ids are 24 characters
TaskType = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.task_name_length_max)]


class PollBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    task_types: Annotated[
        list[TaskType], msgspec.Meta(min_length=1, max_length=settings.bridge_poll_task_types_max)
    ]
    max_tasks: Annotated[int, msgspec.Meta(ge=1, le=settings.bridge_poll_tasks_max)] = 1
    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=settings.bridge_poll_timeout_ms_max)] = 0
    worker_id: Annotated[str, msgspec.Meta(max_length=settings.bridge_worker_id_length_max)] = ""


class PollReply(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[BridgeTask]


class ToolCallBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.task_name_length_max)]
    arguments: Any = None
    id: str = ""


class ContinueTurn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                   tag_field="agent", tag="continue"):  # fmt: skip
    """Go on: carry `state` to the next turn after running `tool_calls` (in parallel)."""

    state: Any = None
    tool_calls: list[ToolCallBody] = []
    tokens_in: Annotated[int, msgspec.Meta(ge=0)] = 0
    tokens_out: Annotated[int, msgspec.Meta(ge=0)] = 0
    cost: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class DoneTurn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
               tag_field="agent", tag="done"):  # fmt: skip
    """Stop: `output` is the agent loop step's output."""

    output: Any = None
    tokens_in: Annotated[int, msgspec.Meta(ge=0)] = 0
    tokens_out: Annotated[int, msgspec.Meta(ge=0)] = 0
    cost: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class CompleteBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    output: Any = None
    turn: ContinueTurn | DoneTurn | None = None


class FailBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    error: str = ""
    retryable: bool = True
    retry_after_ms: int | None = None
    traceback: str = ""


class ResultBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task's result: a completion (`output` or `turn`), or a failure (`error` given)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=TASK_ID_LENGTH_MAX)]
    output: Any = None
    turn: ContinueTurn | DoneTurn | None = None
    error: str | None = None
    retryable: bool = True
    retry_after_ms: int | None = None
    traceback: str = ""


class ResultsBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Results to send; with `poll`, the next tasks are taken once they are sent (one
    request per task for a worker that takes one at a time)."""

    results: Annotated[list[ResultBody], msgspec.Meta(max_length=settings.bridge_poll_tasks_max)]
    poll: PollBody | None = None


class HeartbeatBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Empty for now (an empty or missing body is fine)."""


class SettledReply(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: Status


class HeartbeatReply(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    lease_ms: int


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem detail."""

    type: str
    title: str
    status: int
    detail: str
    instance: str = ""
    hint: str = ""
    errors: list[dict[str, str]] = []


class ResultProblem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why one item of /v1/tasks/results was refused (the fields of a problem detail)."""

    type: str
    title: str
    status: int
    detail: str
    hint: str = ""


class ResultReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One item's outcome: its status, or "refused" with the problem (nothing was sent)."""

    id: str
    status: Literal["completed", "failed", "sending", "refused"]
    problem: ResultProblem | None = None


class ResultsReply(msgspec.Struct, frozen=True, kw_only=True):
    results: list[ResultReply]
    tasks: list[BridgeTask] = []  # what `poll` took


def problem_response(problem: Problem) -> Response[Problem]:
    return Response(problem, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE)


def bridge_problem(request: Request[Any, Any, Any], error: Exception) -> Response[Problem]:
    """A `BridgeError` as its problem."""
    assert isinstance(error, BridgeError), type(error)
    return problem_response(Problem(
        type=PROBLEM_TYPE_PREFIX + error.slug, title=error.title, status=error.status,
        detail=error.detail, instance=request.url.path, hint=error.hint,
    ))  # fmt: skip


def http_problem(request: Request[Any, Any, Any], error: Exception) -> Response[Problem]:
    """Litestar's own refusals (bad JSON, validation, 413, ...) as problems."""
    assert isinstance(error, HTTPException), type(error)
    status = error.status_code
    errors: list[dict[str, str]] = []
    if isinstance(error, ValidationException) and isinstance(error.extra, list):
        for item in error.extra[: limits.validation_problems_max]:
            if isinstance(item, dict):
                field = str(item.get("key", ""))
                errors.append({"field": field, "message": str(item.get("message", ""))})
    detail = str(error.detail)
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    slugs = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    slug = slugs.get(status, "http-error")
    hint = ""
    if status == 413:
        hint = f"a task request body is at most {settings.bridge_body_bytes_max} bytes"
    title = "Request body too large" if status == 413 else "Bad request"
    if status not in (400, 413):
        title = str(error.detail) or "HTTP error"
    return problem_response(Problem(
        type=PROBLEM_TYPE_PREFIX + slug, title=title, status=status, detail=detail,
        instance=request.url.path, hint=hint, errors=errors,
    ))  # fmt: skip


def _settled(task_id: str, status: Status) -> Response[SettledReply]:
    code = 202 if status == "sending" else 200
    return Response(SettledReply(id=task_id, status=status), status_code=code)


def _task_id(request: Request[Any, Any, Any]) -> str:
    """The `{task_id}` of the path (read from the request: the declared-parameter styles of
    Litestar differ across 2.x releases)."""
    task_id = request.path_params["task_id"]
    assert isinstance(task_id, str)
    return task_id


def _turn_of(body: CompleteBody | ResultBody) -> Continue | Done | None:
    turn = body.turn
    if isinstance(turn, ContinueTurn):
        calls = tuple(ToolCall(c.name, c.arguments, c.id) for c in turn.tool_calls)
        return Continue(turn.state, calls, tokens_in=turn.tokens_in, tokens_out=turn.tokens_out,
                        cost=turn.cost)  # fmt: skip
    if isinstance(turn, DoneTurn):
        return Done(turn.output, tokens_in=turn.tokens_in, tokens_out=turn.tokens_out,
                    cost=turn.cost)  # fmt: skip
    return None


def result_reply(item: ResultBody, answer: Status | BridgeError) -> ResultReply:
    """One item's answer: its status, or "refused" with the problem (not an error)."""
    if not isinstance(answer, BridgeError):
        return ResultReply(id=item.id, status=answer)
    problem = ResultProblem(
        type=PROBLEM_TYPE_PREFIX + answer.slug, title=answer.title, status=answer.status,
        detail=answer.detail, hint=answer.hint,
    )  # fmt: skip
    return ResultReply(id=item.id, status="refused", problem=problem)


def result_item(item: ResultBody) -> ResultItem:
    return ResultItem(
        item.id, item.output, _turn_of(item), item.error, item.retryable, item.retry_after_ms,
        item.traceback,
    )  # fmt: skip


def bridge_route_handlers(bridge: TaskBridge) -> list[Router]:
    """The bridge's routes under `/v1/tasks` over `bridge`, their bodies bounded and their
    errors as problem details."""

    @post("/poll", status_code=200, summary="Take tasks (long poll)")
    async def poll_tasks(data: Annotated[PollBody, JSON]) -> PollReply:
        """Up to `max_tasks` tasks of `task_types`, waiting at most `timeout_ms` for one."""
        tasks = await bridge.poll(
            data.task_types, max_tasks=data.max_tasks, timeout_ms=data.timeout_ms,
            worker_id=data.worker_id,
        )  # fmt: skip
        return PollReply(tasks=tasks)

    @post("/{task_id:str}/complete", status_code=200, summary="Complete a task")
    async def complete_task(
        request: Request[Any, Any, Any], data: Annotated[CompleteBody, JSON]
    ) -> Response[SettledReply]:
        """Complete the task with `output`, or an agent turn with `turn` (continue/done)."""
        task_id = _task_id(request)
        status = await bridge.complete(task_id, data.output, turn=_turn_of(data))
        return _settled(task_id, status)

    @post("/{task_id:str}/fail", status_code=200, summary="Fail a task")
    async def fail_task(
        request: Request[Any, Any, Any], data: Annotated[FailBody, JSON]
    ) -> Response[SettledReply]:
        """Fail the attempt: retryable (no sooner than `retry_after_ms`) or for good."""
        task_id = _task_id(request)
        status = await bridge.fail(
            task_id, data.error, retryable=data.retryable,
            retry_after_ms=data.retry_after_ms, traceback=data.traceback,
        )  # fmt: skip
        return _settled(task_id, status)

    @post("/{task_id:str}/heartbeat", status_code=200, summary="Keep a task")
    async def heartbeat_task(request: Request[Any, Any, Any]) -> HeartbeatReply:
        """Restart the task's heartbeat timeout (send one every `heartbeat_ms`)."""
        task_id = _task_id(request)
        return HeartbeatReply(id=task_id, lease_ms=await bridge.heartbeat(task_id))

    @post("/results", status_code=200, summary="Complete or fail several tasks")
    async def settle_tasks(data: Annotated[ResultsBody, JSON]) -> ResultsReply:
        """Each item completes (no `error`) or fails (`error` given) its task; all are sent
        at once, and each gets its own answer, in order (a refused one: its problem). With
        `poll`, the next tasks are taken meanwhile (as by /poll), answered under `tasks`."""
        if data.poll is not None:  # a bad poll is refused before anything is sent
            polled = data.poll
            check_poll(polled.task_types, polled.max_tasks, polled.timeout_ms, polled.worker_id)
        items = [result_item(item) for item in data.results]
        tasks: list[BridgeTask] | BridgeError = []
        if data.poll is None:
            answers = await bridge.settle(items)
        else:
            answers, tasks = await bridge.settle_then_poll(
                items, polled.task_types, max_tasks=polled.max_tasks,
                timeout_ms=polled.timeout_ms, worker_id=polled.worker_id,
            )  # fmt: skip
        if isinstance(tasks, BridgeError):
            raise tasks  # (the results stand)
        replies = [result_reply(i, a) for i, a in zip(data.results, answers, strict=True)]
        return ResultsReply(results=replies, tasks=tasks)

    router = Router(
        path="/v1/tasks",
        route_handlers=[poll_tasks, complete_task, fail_task, heartbeat_task, settle_tasks],
        exception_handlers={BridgeError: bridge_problem, HTTPException: http_problem},
        request_max_body_size=settings.bridge_body_bytes_max,
        tags=["tasks"],
    )
    return [router]
