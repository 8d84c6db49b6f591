"""RFC 9457 problem details: every error the HTTP API answers, as `application/problem+json`.

A problem carries `type`, `title`, `status`, `detail` (the same one line the CLI prints),
`hint` (the CLI's hint line) and, for validation problems, the `field` path and `errors`
(every problem found, each with its path). `ProblemError` is raised by handlers (and by the
bridge, `dagnats/api/bridge*.py`) for a problem of their own; `problem_handlers()` turns the
project's errors (`DagnatsError` and its subclasses), Litestar's own (bad parameters, unknown
routes, wrong methods, bodies over the limit, malformed JSON) and NATS failures into problems.

This module may import Litestar, msgspec, the client's errors and the kernel's; it does no I/O.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap

from dagnats.api import limits as api_limits
from dagnats.client.errors import (
    ApprovalNotFoundError,
    ApprovalResolvedError,
    RunExistsError,
    RunFinishedError,
    RunNotFoundError,
    WorkflowNotFoundError,
    WorkflowRevisionNotFoundError,
)
from dagnats.json_input import JsonInputError
from dagnats.runtime.history_guard import HistoryStreamGoneError
from dagnats.runtime.resources import SubjectTokenError
from kernel.errors import DagnatsError, PayloadTooLargeError, WorkflowInvalidError

log = logging.getLogger("dagnats.api")
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:dagnats:problem:"
TITLES: Final[dict[int, str]] = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}
errors_listed_max: Final = 100


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One validation problem: where (a path in the request), what was found, and the rule."""

    field: str
    detail: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem details document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str = ""
    hint: str = ""
    field: str = ""
    errors: list[FieldProblem] = msgspec.field(default_factory=list)


class ProblemError(Exception):
    """Raise from a handler to answer with a problem (status, one-line detail, optional
    hint and field path)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str = "",
        hint: str = "",
        field: str = "",
        errors: tuple[FieldProblem, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        assert 400 <= status <= 599, f"a problem's status {status} is not an error status"
        self.status = status
        self.detail = detail
        self.kind = kind or _slug(TITLES.get(status, "error"))
        self.hint = hint
        self.field = field
        self.errors = errors
        self.headers = headers or {}
        super().__init__(detail)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str = "",
    hint: str = "",
    field: str = "",
    errors: tuple[FieldProblem, ...] = (),
    instance: str = "",
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A problem+json response."""
    problem = Problem(
        type=TYPE_PREFIX + (kind or _slug(TITLES.get(status, "error"))),
        title=TITLES.get(status, "Error"),
        status=status,
        detail=" ".join(detail.split()) or TITLES.get(status, "Error"),
        instance=instance,
        hint=hint,
        field=field,
        errors=list(errors[:errors_listed_max]),
    )
    return Response(
        content=msgspec.json.encode(problem),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


# -- the project's errors --------------------------------------------------------------------

# (status, kind, hint) by error type; the first match in order wins (subclasses first).
ERROR_STATUS: Final[tuple[tuple[type[DagnatsError], int, str, str], ...]] = (
    (RunNotFoundError, 404, "run-not-found", "list runs with GET /v1/runs"),
    (WorkflowNotFoundError, 404, "workflow-not-found", "register it with POST /v1/workflows"),
    (WorkflowRevisionNotFoundError, 404, "revision-not-found",
     "see its revisions with GET /v1/workflows/{name}"),
    (ApprovalNotFoundError, 404, "approval-not-found",
     "list pending approvals with GET /v1/approvals"),
    (RunExistsError, 409, "run-exists", "choose another run id, or leave it out"),
    (RunFinishedError, 409, "run-finished", "see what happened with GET /v1/runs/{run_id}"),
    (ApprovalResolvedError, 409, "approval-resolved",
     "see who decided with GET /v1/approvals/{run_id}/{step_id}"),
    (PayloadTooLargeError, 413, "payload-too-large",
     "store large data elsewhere and pass a reference"),
    (JsonInputError, 400, "invalid-json-value",
     "JSON is taken as written: fix the value at that path"),
    (SubjectTokenError, 400, "invalid-id", ""),
    (HistoryStreamGoneError, 503, "history-gone", ""),
)  # fmt: skip


def from_error(error: DagnatsError, instance: str = "") -> Response[bytes]:
    """The problem for one of the project's errors (its first line, its hint)."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, WorkflowInvalidError):
        errors = tuple(
            FieldProblem(field=p.path, detail=f"{p.value} — {p.rule}") for p in error.problems
        )
        return problem_response(
            422, detail, kind="workflow-invalid", hint="fix the fields listed in errors",
            field=errors[0].field, errors=errors, instance=instance,
        )  # fmt: skip
    hint = getattr(error, "hint", "") or ""
    for error_type, status, kind, default_hint in ERROR_STATUS:
        if isinstance(error, error_type):
            field = _json_field(error) if isinstance(error, JsonInputError) else ""
            return problem_response(
                status, detail, kind=kind, hint=hint or default_hint, field=field,
                instance=instance,
            )  # fmt: skip
    return problem_response(400, detail, kind="invalid-request", hint=hint, instance=instance)


def _json_field(error: JsonInputError) -> str:
    """The path of the bad value inside its field: `input.a[0]`, `input[0]`, `input`."""
    if not error.path:
        return error.field
    joiner = "" if error.path.startswith("[") else "."
    return f"{error.field}{joiner}{error.path}"


# -- Litestar's own errors -------------------------------------------------------------------

_MSGSPEC_PATH: Final = re.compile(r" - at `\$(?:\.data)?([^`]*)`$")
_BYTE: Final = re.compile(r"\(byte (\d+)\)")


def from_validation(error: ValidationException, instance: str) -> Response[bytes]:
    """A 400 naming the field path of each bad parameter or body field."""
    found: list[FieldProblem] = []
    extra = error.extra if isinstance(error.extra, list) else []
    cause = str(error.__cause__ or "")
    match = _MSGSPEC_PATH.search(cause)
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", ""))
        raw_source = item.get("source", "")
        source = str(getattr(raw_source, "value", raw_source))  # an enum of Litestar's
        key = str(item.get("key", ""))
        field = key
        if source == "body":
            field = ("body" + match.group(1)) if match is not None else "body"
        elif source:
            field = f"{source}.{key}"
        found.append(FieldProblem(field=field, detail=message))
    if not found:
        found.append(FieldProblem(field="", detail=error.detail))
    first = found[0]
    detail = f"{first.field}: {first.detail}" if first.field else first.detail
    if len(found) > 1:
        detail += f" (and {len(found) - 1} more)"
    return problem_response(
        400, detail, kind="validation", field=first.field, errors=tuple(found),
        hint="see the request's schema in GET /openapi.json", instance=instance,
    )  # fmt: skip


def from_http(error: HTTPException, request: Request[Any, Any, Any]) -> Response[bytes]:
    """Litestar's HTTP errors as problems: 404 route, 405 method, 413 body, 400 bad JSON."""
    instance = request.url.path
    status = error.status_code
    if isinstance(error, ValidationException):
        return from_validation(error, instance)
    if isinstance(error, NotFoundException):
        return problem_response(
            404, f"no route {request.method} {instance}", kind="no-route",
            hint="see the routes in GET /openapi.json", instance=instance,
        )  # fmt: skip
    if isinstance(error, MethodNotAllowedException):
        allowed = error.headers.get("allow", "") if error.headers else ""
        return problem_response(
            405, f"{request.method} is not allowed on {instance}"
            + (f" (allowed: {allowed})" if allowed else ""),
            kind="method-not-allowed", instance=instance, headers=error.headers,
        )  # fmt: skip
    if status == 413:
        return problem_response(
            413, f"the request body is over the limit of {api_limits.request_body_bytes_max} "
            "bytes (request_body_bytes_max)", kind="body-too-large", field="body",
            hint="store large data elsewhere and pass a reference", instance=instance,
        )  # fmt: skip
    if status == 400 and _is_json_error(error):
        return problem_response(
            400, malformed_json_detail(str(error.detail), request), kind="malformed-json",
            field="body", hint="send one JSON document, UTF-8", instance=instance,
        )  # fmt: skip
    return problem_response(status, str(error.detail), instance=instance, headers=error.headers)


def _is_json_error(error: HTTPException) -> bool:
    text = f"{error.detail} {error.__cause__ or ''}".lower()
    return any(word in text for word in ("json", "truncated", "malformed", "decode", "serializ"))


def malformed_json_detail(message: str, request: Request[Any, Any, Any]) -> str:
    """`body is not valid JSON: <what> at byte N` (N: where the decoder stopped)."""
    what = message.split(":", 1)[-1].strip() if "malformed" in message.lower() else message
    match = _BYTE.search(what)
    if match is not None:
        what = _BYTE.sub("", what).strip()
        return f"body is not valid JSON: {what.lower()} at byte {match.group(1)}"
    length = request.headers.get("content-length", "")
    where = f" at byte {length} (its end)" if length.isdigit() else ""
    return f"body is not valid JSON: {what.lower().rstrip('.')}{where}"


def nats_problem(error: BaseException, instance: str) -> Response[bytes]:
    """NATS could not answer: 503 with the one line the CLI prints."""
    description = getattr(error, "description", None)
    text = str(description) if description else (str(error) or type(error).__name__)
    return problem_response(
        503, f"NATS request failed: {text}", kind="nats-unavailable",
        hint="is NATS (the serve's nats-server) up?", instance=instance,
    )  # fmt: skip


def handle(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """The one exception handler of the app."""
    instance = request.url.path
    if isinstance(error, ProblemError):
        return problem_response(
            error.status, error.detail, kind=error.kind, hint=error.hint, field=error.field,
            errors=error.errors, instance=instance, headers=error.headers,
        )  # fmt: skip
    if isinstance(error, HTTPException):
        return from_http(error, request)
    if isinstance(error, DagnatsError):
        return from_error(error, instance)
    if isinstance(error, (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)):
        return nats_problem(error, instance)
    log.exception("unexpected error on %s %s", request.method, instance)
    return problem_response(
        500, f"unexpected {type(error).__name__} (the serve's log has the traceback)",
        kind="internal", instance=instance,
    )  # fmt: skip


def problem_handlers() -> ExceptionHandlersMap:
    """The app's exception handlers (every exception goes through `handle`)."""
    return {Exception: handle}
