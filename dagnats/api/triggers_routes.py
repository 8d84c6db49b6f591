"""Webhook and HTTP triggers: the `/hooks<path>` routes of serve's HTTP API.

- `webhook` {path, secret}: `POST /hooks<path>` fires the trigger (a run starts, or the fire is
  debounced, or recorded as skipped) and answers 202 with the run id.
- `http` {path, method, timeout, max_body_bytes, secret, idempotency_header}: `<method>
  /hooks<path>` starts a run whose input is the request (method, path, query, headers without
  credentials, body) and answers what the run's first `respond` step recorded (status,
  headers, body). The run fails first: 500 `workflow_failed` with the run id; cancelled: 503;
  no respond within the trigger's timeout: 504 with the run id (the run goes on); the client
  goes away: the run goes on and its answer is dropped.
- Both: the body is read up to the trigger's bound (413 beyond it); with a `secret`, header
  `X-Dagnats-Signature: sha256=<hex HMAC-SHA256 of the body>` is required and compared in
  constant time (401). An unknown path is 404, a known path with another method 405.
- With an API token, a request without it is served only by a trigger with a `secret` (its
  signature authenticates it: see `dagnats/api/auth.py`); a trigger without one answers 401.
- `idempotency_header`: the first request with a value creates a key in bucket
  `dagnats_trigger_idem` (its entries expire after `settings.idempotency_ttl_ms`); every request
  with that value within the time names the same fire, so the same run (one run even when ten
  arrive at once: the start is deduplicated on its run id) and the same first response.

Each request waits on its own run's history (a watch, client/live_watch.py, closed at the
answer), so concurrent requests never see each other's responses. Fires go through
`TriggerService.fire` (recorded in `DAGNATS_TRIGGER_FIRES`, listed by `dagnats trigger
history`). The set of routes is read again every `settings.trigger_reload_ms`, and at once for
a path it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from litestar import Request, Response, Router, route
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.api import routes_triggers
from dagnats.api.auth import BEARER_MISSING
from dagnats.api.problems import ProblemError, problem_response
from dagnats.client.live_watch import open_watch
from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.triggers import Entry, TriggerService, command_starter, load_entries
from dagnats.runtime.triggers_plan import digest
from kernel import limits
from kernel.events import ResponseRecorded
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from kernel.workflow.trigger_model import HTTP_METHODS

log = logging.getLogger("dagnats.triggers")

HOOKS_PREFIX: Final = "/hooks"
SIGNATURE_HEADER: Final = "x-dagnats-signature"
IDEMPOTENCY_BUCKET: Final = "dagnats_trigger_idem"
# Headers a run's input never holds: credentials of the caller or of this API.
CREDENTIAL_HEADERS: Final = frozenset(
    ("authorization", "proxy-authorization", "cookie", "x-api-key", SIGNATURE_HEADER)
)
route_miss_reload_ms: Final = 250  # an unknown path reads the routes again, at most this often
webhook_body_bytes_max_default: Final = limits.trigger_body_bytes_default  # (no field of its own)
FAILED_STATUSES: Final = ("failed", "compensate_failed")


class Gone:
    """The client went away before the answer."""


GONE: Final = Gone()


class Hooks:
    """The routes of webhook and http triggers, and what answering them needs."""

    def __init__(self, js: JetStreamContext, connection: Connection) -> None:
        self.js = js  # serve's own (engine) connection: the idempotency bucket
        self.connection = connection  # the API client's: starts and history watches
        self.service = TriggerService(js, command_starter(connection))
        self.entries: list[Entry] = []
        self.loaded_ms = -1.0
        self._lock = asyncio.Lock()
        self._idempotency: KeyValue | None = None
        self._ticker: asyncio.Task[None] | None = None

    def start_ticker(self) -> None:
        """Flush debounced webhook fires on time (the service's tick, over these entries)."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.trigger_tick_ms / 1000)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.service.tick()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def forget_routes(self) -> None:
        """The triggers changed (through this API): the next request reads the routes again."""
        self.loaded_ms = -1.0

    async def routes(self, *, missed: bool = False) -> list[Entry]:
        """The webhook and http triggers (read again when stale, or after a miss)."""
        age_ms = (time.monotonic() * 1000) - self.loaded_ms
        due = age_ms >= (route_miss_reload_ms if missed else settings.trigger_reload_ms)
        if self.loaded_ms < 0 or due:
            async with self._lock:
                age_ms = (time.monotonic() * 1000) - self.loaded_ms
                if self.loaded_ms < 0 or age_ms >= route_miss_reload_ms:
                    found = await load_entries(self.js)
                    self.entries = sorted(
                        (e for e in found if e.trigger.route() is not None),
                        key=lambda e: (e.workflow_name, e.trigger.id),
                    )
                    self.service.entries = self.entries  # no cron here: debounce flushes only
                    if any(e.trigger.debounce is not None for e in self.entries):
                        self.start_ticker()
                    self.loaded_ms = time.monotonic() * 1000
        return self.entries

    async def match(self, method: str, path: str) -> Entry:
        """The trigger of (method, path).

        Raises:
            ProblemError: 404 for an unknown path, 405 (with Allow) for another method.
        """
        for missed in (False, True):
            entries = await self.routes(missed=missed)
            on_path = [e for e in entries if (route_of(e) or ("", ""))[1] == path]
            for entry in on_path:
                if (route_of(entry) or ("", ""))[0] == method:
                    return entry
            if on_path:
                allowed = ", ".join(sorted({(route_of(e) or ("", ""))[0] for e in on_path}))
                raise ProblemError(
                    405, f"{method} is not allowed on {HOOKS_PREFIX}{path} (allowed: {allowed})",
                    kind="method-not-allowed", headers={"Allow": allowed},
                )  # fmt: skip
        raise ProblemError(
            404, f"no webhook or http trigger has the path {path!r}", kind="no-trigger",
            hint="see `dagnats trigger list`; routes are read again within "
            f"{settings.trigger_reload_ms // 1000}s of a change",
        )  # fmt: skip

    async def idempotency(self) -> KeyValue:
        if self._idempotency is None:
            try:
                self._idempotency = await self.js.key_value(IDEMPOTENCY_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                self._idempotency = await self.js.create_key_value(
                    bucket=IDEMPOTENCY_BUCKET, history=1,
                    ttl=settings.idempotency_ttl_ms / 1000,
                )  # fmt: skip
        return self._idempotency

    async def idempotent_fire(self, entry: Entry, value: str) -> str:
        """The fire a key value names within its time: the first request's."""
        kv = await self.idempotency()
        key = f"{entry.key}.{digest(value)}"
        try:
            revision: int | None = await kv.create(key, b"1")
        except nats.js.errors.KeyWrongLastSequenceError:
            revision = (await kv.get(key)).revision
        return f"idem:{digest(value)}:{revision}"


def route_of(entry: Entry) -> tuple[str, str] | None:
    return entry.trigger.route()


def hook_route_handlers(hooks: Hooks) -> list[HTTPRouteHandler | Router]:
    """The `/hooks/...` handler, serving `hooks`, and the `/v1/triggers` router (mounted by
    `dagnats/api/serving.py`)."""

    @route(
        f"{HOOKS_PREFIX}/{{path:path}}", http_method=list(HTTP_METHODS),
        summary="Webhook and http triggers", tags=["triggers"], include_in_schema=False,
    )  # fmt: skip
    async def hook(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        shown = "/" + path.lstrip("/")
        entry = await hooks.match(request.method, shown)
        return await answer(hooks, entry, request, shown)

    return [hook, routes_triggers.router]


async def answer(
    hooks: Hooks, entry: Entry, request: Request[Any, Any, Any], path: str
) -> Response[bytes]:
    """Check, fire, and (http) wait for the run's answer."""
    trigger = entry.trigger
    http = trigger.http
    bound = http.max_body_bytes if http is not None else webhook_body_bytes_max_default
    body = await read_body(request, bound)
    webhook = trigger.webhook
    secret = http.secret if http is not None else (webhook.secret if webhook is not None else "")
    if not secret and request.scope.get("state", {}).get(BEARER_MISSING):
        raise ProblemError(
            401, f"trigger {trigger.id!r} has no secret: a request needs the API's bearer token",
            kind="unauthorized", hint="send `Authorization: Bearer <token>`, or give the trigger "
            "a secret and sign the body (X-Dagnats-Signature)",
            headers={"WWW-Authenticate": 'Bearer realm="dagnats"'},
        )  # fmt: skip
    if secret:
        check_signature(request.headers.get(SIGNATURE_HEADER, ""), body, secret)
    value = request_input(request, path, body)
    fire = f"http:{uuid.uuid4().hex}"
    if http is not None and http.idempotency_header:
        key_value = request.headers.get(http.idempotency_header.lower(), "")
        if key_value:
            fire = await hooks.idempotent_fire(entry, key_value)
    record = await hooks.service.fire(entry, fire, value)
    if record.outcome == "skipped":
        raise ProblemError(404, f"trigger {trigger.id!r} of workflow {entry.workflow_name!r}: "
                           f"{record.reason}", kind="trigger-skipped")  # fmt: skip
    if record.outcome == "failed":
        raise ProblemError(503, f"the run could not be started: {record.reason}",
                           kind="start-failed", hint="is the serve's NATS up?")  # fmt: skip
    if http is None:
        content = {"run_id": record.run_id, "trigger": trigger.id, "outcome": record.outcome}
        return Response(msgspec.json.encode(content), status_code=202,
                        media_type="application/json")  # fmt: skip
    deadline = time.monotonic() + http.timeout_ms / 1000
    found = await wait_for_answer(hooks.connection.js, record.run_id, deadline, request)
    if isinstance(found, Gone):
        log.info("trigger %s: the client left before run %s answered; the answer is dropped",
                 trigger.id, record.run_id)  # fmt: skip
        return Response(b"", status_code=499)  # nobody reads it
    return found


async def read_body(request: Request[Any, Any, Any], bound: int) -> bytes:
    """The body, at most `bound` bytes.

    Raises:
        ProblemError: 413 naming the bound.
    """
    too_large = ProblemError(
        413, f"the request body is over this trigger's limit of {bound} bytes (max_body_bytes)",
        kind="body-too-large", field="body",
    )  # fmt: skip
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > bound:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bound:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def signature_of(body: bytes, secret: str) -> str:
    """The value of `X-Dagnats-Signature` for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(given: str, body: bytes, secret: str) -> None:
    """Raises ProblemError 401 unless `given` is the body's signature (constant time)."""
    if not hmac.compare_digest(given.strip().encode(), signature_of(body, secret).encode()):
        what = "missing" if not given else "wrong"
        detail = (f"header X-Dagnats-Signature is {what}: it must be sha256=<hex HMAC-SHA256 "
                  "of the body with the trigger's secret>")  # fmt: skip
        raise ProblemError(401, detail, kind="bad-signature", field="header.X-Dagnats-Signature")


def request_input(request: Request[Any, Any, Any], path: str, body: bytes) -> dict[str, object]:
    """The run's input: method, path, query, headers without credentials, body (JSON when it
    parses, else text)."""
    query: dict[str, object] = {}
    for name, text in request.query_params.multi_items():
        previous = query.get(name)
        if previous is None:
            query[name] = text
        elif isinstance(previous, list):
            previous.append(text)
        else:
            query[name] = [previous, text]
    headers = {
        name.lower(): text for name, text in request.headers.items()
        if name.lower() not in CREDENTIAL_HEADERS
    }  # fmt: skip
    parsed: object = None
    if body:
        try:
            parsed = msgspec.json.decode(body)
        except msgspec.DecodeError:
            parsed = body.decode("utf-8", "replace")
    return {"method": request.method, "path": path, "query": query, "headers": headers,
            "body": parsed}  # fmt: skip


async def _client_gone(request: Request[Any, Any, Any]) -> None:
    """Return when the client disconnects (the body was read: nothing else comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def wait_for_answer(
    js: JetStreamContext, run_id: str, deadline: float, request: Request[Any, Any, Any]
) -> Response[bytes] | Gone:
    """The answer of run `run_id`: its first response, or what its end or the deadline says."""
    watch = await open_watch(js, run_id)
    gone = asyncio.ensure_future(_client_gone(request))
    state: RunState = INITIAL_STATE
    try:
        while True:
            step = asyncio.ensure_future(watch.next(deadline))
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await step
                return GONE
            item = step.result()
            if item is None:
                return problem_response(
                    504, f"run {run_id} did not respond within the trigger's timeout; it goes "
                    "on", kind="respond-timeout", field="run_id", headers={"X-Run-Id": run_id},
                )  # fmt: skip
            for event in item[1].events:
                if isinstance(event, ResponseRecorded):
                    return response_of(event, run_id)
                state = evolve(state, event)
            ended = end_answer(state, run_id)
            if ended is not None:
                return ended
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        await watch.close()


def end_answer(state: RunState, run_id: str) -> Response[bytes] | None:
    """What a run that ended without responding answers (None while it runs)."""
    headers = {"X-Run-Id": run_id}
    if state.status in FAILED_STATUSES:
        return problem_response(
            500, f"run {run_id} failed before it responded", kind="workflow_failed",
            field="run_id", headers=headers, hint=f"dagnats run show {run_id}",
        )  # fmt: skip
    if state.status == "cancelled":
        return problem_response(
            503, f"run {run_id} was cancelled before it responded", kind="workflow_cancelled",
            field="run_id", headers=headers,
        )  # fmt: skip
    if state.status == "completed":
        return problem_response(
            500, f"run {run_id} completed without a respond step answering",
            kind="no_response", field="run_id", headers=headers,
            hint="add a respond step to the workflow",
        )  # fmt: skip
    return None


def response_of(event: ResponseRecorded, run_id: str) -> Response[bytes]:
    """The HTTP response a `response.recorded` says: JSON unless its headers name another
    content type (a JSON string body is then sent as its text)."""
    headers = {name: text for name, text in event.headers}
    lowered = {name.lower(): text for name, text in event.headers}
    content_type = lowered.get("content-type", "application/json")
    body = bytes(event.body)
    if "json" not in content_type:
        with contextlib.suppress(msgspec.DecodeError):
            decoded = msgspec.json.decode(body)
            if isinstance(decoded, str):
                body = decoded.encode()
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    headers["X-Run-Id"] = run_id
    return Response(body, status_code=event.status, headers=headers, media_type=content_type)
