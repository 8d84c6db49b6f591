"""The console's operations pages: triggers (each workflow's, enabled, last fires), dead
letters (list, show, retry, discard) and the worker directory, with their forms.

Reads and writes go through the same functions as `dagnats trigger`, `dagnats dlq` and
`dagnats workers` (dagnats/runtime/triggers*.py, dagnats/client/lifecycle.py). Every form
checks its origin and CSRF token (`common.posted_form`) and records who acted (`common.record`;
a dead letter's retry and discard reasons name the actor too).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath

from dagnats.api.services import Services, ServicesDep
from dagnats.client import RunNotFoundError, lifecycle
from dagnats.console import runview
from dagnats.console.common import (
    FormRefusedError,
    actor_of,
    back,
    page,
    posted_form,
    record,
    refused,
)
from dagnats.console.security import KeysDep
from dagnats.runtime import triggers_managed
from dagnats.runtime.triggers import (
    FireRecord,
    load_entries,
    reach_trigger_resources,
    read_fires,
)
from kernel.errors import DagnatsError

fires_shown_max: Final = 5  # last fires shown per trigger on the triggers page
dead_letters_listed_max: Final = 200
reason_chars_max: Final = 1_000


class TriggerRow(msgspec.Struct, frozen=True, kw_only=True):
    workflow: str
    trigger_id: str
    kind: str
    enabled: bool
    registered: bool
    document: str
    fires: list[FireRecord]


async def _trigger_rows(services: Services) -> list[TriggerRow]:
    js = services.client.connection.js
    await reach_trigger_resources(js)
    rows: list[TriggerRow] = []
    for entry in await load_entries(js):
        shown = triggers_managed.shown(entry)
        fires = await read_fires(js, entry.workflow_name, entry.trigger.id, fires_shown_max)
        rows.append(TriggerRow(
            workflow=entry.workflow_name, trigger_id=entry.trigger.id,
            kind=entry.trigger.kind or "?", enabled=entry.trigger.enabled,
            registered=entry.workflow is not None,
            document=runview.show_json(shown["trigger"]), fires=fires[::-1],
        ))  # fmt: skip
    rows.sort(key=lambda row: (row.workflow, row.trigger_id))
    return rows


@get("/triggers", include_in_schema=False)
async def triggers(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    rows = await _trigger_rows(services)
    return page(request, keys, "triggers.html", title="Triggers", rows=rows,
                fires_max=fires_shown_max)  # fmt: skip


@post("/triggers/{workflow:str}/{trigger_id:str}/{verb:str}", include_in_schema=False,
      status_code=303)  # fmt: skip
async def set_trigger(
    request: Request[Any, Any, Any], workflow: FromPath[str],
    trigger_id: FromPath[str], verb: FromPath[str],
    services: ServicesDep, keys: KeysDep,
) -> Any:  # fmt: skip
    """Enable or disable a trigger (as `dagnats trigger enable|disable`: a managed override)."""
    try:
        await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    if verb not in ("enable", "disable"):
        return back("/triggers", error=f"action {verb[:20]!r} is not enable or disable")
    js = services.client.connection.js
    try:
        await triggers_managed.set_enabled(js, workflow, trigger_id, verb == "enable")
    except DagnatsError as error:
        return back("/triggers", error=" ".join(str(error).split()))
    record(actor_of(request), f"{verb}d", f"trigger {workflow}/{trigger_id}")
    return back("/triggers", notice=f"trigger {workflow}/{trigger_id} {verb}d")


@get("/dead-letters", include_in_schema=False)
async def dead_letters(
    request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep
) -> Any:
    workflow = request.query_params.get("workflow") or None
    letters = await lifecycle.list_dead_letters(
        services.client, workflow=workflow, limit=dead_letters_listed_max
    )
    return page(request, keys, "dead_letters.html", title="Dead letters", letters=letters,
                workflow=workflow or "", limit=dead_letters_listed_max)  # fmt: skip


@get("/dead-letters/{run_id:str}/{step_id:str}", include_in_schema=False)
async def dead_letter(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    step_id: FromPath[str],
    services: ServicesDep,
    keys: KeysDep,
) -> Any:
    try:
        letter = await lifecycle.dead_letter(services.client, run_id, step_id)
    except (RunNotFoundError, DagnatsError) as error:
        return page(request, keys, "missing.html", status=404, title="Dead letter not found",
                    message=str(error))  # fmt: skip
    return page(
        request, keys, "dead_letter.html", title=f"Dead letter {run_id} / {step_id}",
        letter=letter, input=runview.show_json(letter.input),
    )  # fmt: skip


@post("/dead-letters/{run_id:str}/{step_id:str}/{verb:str}", include_in_schema=False,
      status_code=303)  # fmt: skip
async def act_on_dead_letter(
    request: Request[Any, Any, Any], run_id: FromPath[str],
    step_id: FromPath[str], verb: FromPath[str],
    services: ServicesDep, keys: KeysDep,
) -> Any:  # fmt: skip
    """Retry (the run reopens from the step) or discard a dead letter."""
    try:
        fields = await posted_form(request, keys)
    except FormRefusedError as error:
        return refused(str(error))
    if verb not in ("retry", "discard"):
        return back("/dead-letters", error=f"action {verb[:20]!r} is not retry or discard")
    actor = actor_of(request)
    given = fields.get("reason", "").strip()[:reason_chars_max]
    reason = f"{verb} by {actor} from the console" + (f": {given}" if given else "")
    try:
        await lifecycle.dead_letter(services.client, run_id, step_id)
        if verb == "retry":
            await lifecycle.retry(services.client, run_id, from_step=step_id, reason=reason)
        else:
            await lifecycle.discard(services.client, run_id, step_id, reason=reason)
    except DagnatsError as error:
        return back("/dead-letters", error=" ".join(str(error).split()))
    record(actor, f"{verb} of dead letter", f"run {run_id} step {step_id}", given)
    past = "retried" if verb == "retry" else "discarded"
    return back("/dead-letters", notice=f"dead letter {run_id} / {step_id} {past}")


@get("/workers", include_in_schema=False)
async def workers(request: Request[Any, Any, Any], services: ServicesDep, keys: KeysDep) -> Any:
    stale = request.query_params.get("stale") == "1"
    entries = await lifecycle.list_workers(services.client, include_stale=stale)
    return page(request, keys, "workers.html", title="Workers", workers=entries, stale=stale)


HANDLERS: Final = (triggers, set_trigger, dead_letters, dead_letter, act_on_dead_letter, workers)
