"""The console's forms (POST): log in and out, cancel, signal and retry a run, approve or
reject an approval, start a run of a workflow.

Each checks the form's origin and CSRF token first (`common.posted_form`), acts through the
API's clients (every write is a command to the engine), records who did it
(`common.record`; a cancel's and a retry's reason name the actor too; an approval records the
approver identity `by` as the HTTP API does, `dagnats/api/routes_approvals.py`), and answers
with a 303 back to a page with a one-line notice or error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect

from dagnats.api.problems import ProblemError
from dagnats.api.services import ServicesDep
from dagnats.client import lifecycle
from dagnats.console import security
from dagnats.console.common import (
    PREFIX,
    FormRefusedError,
    actor_of,
    back,
    page,
    posted_form,
    record,
    refused,
)
from dagnats.console.security import SESSION_COOKIE, KeysDep
from kernel.errors import DagnatsError

text_field_chars_max: Final = 10_000
json_field_chars_max: Final = 256 * 1024


def _json(fields: dict[str, str], name: str) -> Any:
    """A JSON field of a form (empty: null).

    Raises:
        DagnatsError: naming the field and where its JSON breaks.
    """
    text = fields.get(name, "").strip()
    if len(text) > json_field_chars_max:
        raise DagnatsError(f"{name} has {len(text)} characters; at most {json_field_chars_max}")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DagnatsError(f"{name} is not JSON: {error.msg} at line {error.lineno} "
                           f"column {error.colno}") from None  # fmt: skip


def _text(fields: dict[str, str], name: str) -> str:
    return fields.get(name, "").strip()[:text_field_chars_max]


def _message(error: Exception) -> str:
    if isinstance(error, ProblemError):
        return str(error.detail)
    return " ".join(str(error).split())


def _safe_next(target: str) -> str:
    """Only a console path (never another site) after login."""
    if target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


@get("/login", include_in_schema=False)
async def login_form(request: Request[Any, Any, Any], keys: KeysDep) -> Any:
    if keys.token is None:
        return Redirect(f"{PREFIX}/", status_code=303)
    return page(request, keys, "login.html", title="Log in",
                next=_safe_next(request.query_params.get("next", "")))  # fmt: skip


@post("/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any], keys: KeysDep) -> Any:
    try:
        fields = await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    target = _safe_next(fields.get("next", ""))
    actor = security.clean_actor(fields.get("name", ""))
    if not actor or not security.token_matches(keys, fields.get("token", "")):
        query = urlencode({"next": target, "error": "the name is empty or the token is wrong"})
        record(actor or "(no name)", "failed to log in", "console")
        return Redirect(f"{PREFIX}/login?{query}", status_code=303)
    value = security.make_session(keys, actor, int(time.time()))
    cookie = Cookie(
        key=SESSION_COOKIE, value=value, path=PREFIX, httponly=True, secure=True,
        samesite="strict", max_age=security.session_s_max,
    )  # fmt: skip
    record(actor, "logged in", "console")
    return Redirect(target, status_code=303, cookies=[cookie])


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any], keys: KeysDep) -> Any:
    try:
        await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    record(actor_of(request), "logged out", "console")
    response: Response[Any] = Redirect(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


RunAction = Callable[[dict[str, str], str], Awaitable[tuple[str, str, str]]]
"""What a run's form does, given its fields and the actor: (what the record says was done,
the record's detail, the notice). Raises DagnatsError to go back with its message."""


async def _on_run(
    request: Request[Any, Any, Any], run_id: str, keys: KeysDep, act: RunAction
) -> Any:
    """A run page's form: checked, acted on, recorded, answered with a 303 back to the run."""
    try:
        fields = await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    actor = actor_of(request)
    try:
        done, detail, notice = await act(fields, actor)
    except DagnatsError as error:
        return back(f"/runs/{run_id}", error=_message(error))
    record(actor, done, f"run {run_id}", detail)
    return back(f"/runs/{run_id}", notice=notice)


@post("/runs/{run_id:str}/cancel", include_in_schema=False, status_code=303)
async def cancel(
    request: Request[Any, Any, Any], run_id: FromPath[str], services: ServicesDep, keys: KeysDep
) -> Any:
    async def act(fields: dict[str, str], actor: str) -> tuple[str, str, str]:
        reason = _text(fields, "reason")
        full_reason = f"cancelled by {actor} from the console" + (f": {reason}" if reason else "")
        await services.client.cancel(run_id, full_reason)
        return "cancelled", reason, "cancel sent"

    return await _on_run(request, run_id, keys, act)


@post("/runs/{run_id:str}/signal", include_in_schema=False, status_code=303)
async def signal(
    request: Request[Any, Any, Any], run_id: FromPath[str], services: ServicesDep, keys: KeysDep
) -> Any:
    async def act(fields: dict[str, str], actor: str) -> tuple[str, str, str]:
        name = _text(fields, "name")
        await services.client.signal(run_id, name, _json(fields, "payload"))
        return f"sent signal {name!r} to", "", f"signal {name} sent"

    return await _on_run(request, run_id, keys, act)


@post("/runs/{run_id:str}/retry", include_in_schema=False, status_code=303)
async def retry(
    request: Request[Any, Any, Any], run_id: FromPath[str], services: ServicesDep, keys: KeysDep
) -> Any:
    async def act(fields: dict[str, str], actor: str) -> tuple[str, str, str]:
        from_step = _text(fields, "from_step")
        await lifecycle.retry(
            services.client, run_id, from_step=from_step,
            reason=f"retried by {actor} from the console", confirm_wait_s=5.0,
        )  # fmt: skip
        return "retried", f"from {from_step}" if from_step else "", "retry sent"

    return await _on_run(request, run_id, keys, act)


@post("/approvals/{run_id:str}/{step_id:str}", include_in_schema=False, status_code=303)
async def decide(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    step_id: FromPath[str],
    services: ServicesDep,
    keys: KeysDep,
) -> Any:
    """Approve or reject as the approver identity `by` names (the HTTP API's rule)."""
    try:
        fields = await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    decision = fields.get("decision", "")
    if decision not in ("approve", "reject"):
        return back("/approvals", error=f"decision {decision[:20]!r} is not approve or reject")
    try:
        client = await services.approver(_text(fields, "by"))
        identity = client.connection.identity
        act = client.approve if decision == "approve" else client.reject
        await act(
            run_id, step_id, data=_json(fields, "data"), comment=_text(fields, "comment"),
            by=identity, key=_text(fields, "key"),
        )  # fmt: skip
    except (DagnatsError, ProblemError) as error:
        return back("/approvals", error=_message(error))
    past = "approved" if decision == "approve" else "rejected"
    record(actor_of(request), f"{past} as {identity}", f"run {run_id} step {step_id}")
    return back("/approvals", notice=f"{past} {run_id} / {step_id} as {identity}")


@post("/workflows/{name:str}/start", include_in_schema=False, status_code=303)
async def start(
    request: Request[Any, Any, Any], name: FromPath[str], services: ServicesDep, keys: KeysDep
) -> Any:
    try:
        fields = await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    try:
        run_id = await services.client.start(name, _json(fields, "input"))
    except DagnatsError as error:
        return back(f"/workflows/{name}", error=_message(error))
    record(actor_of(request), "started", f"run {run_id} of workflow {name}")
    return back(f"/runs/{run_id}", notice="run started")


HANDLERS: Final = (login_form, login, logout, cancel, signal, retry, decide, start)
