"""`/v1/triggers`: list, show, create, update, delete triggers and read their fire history.

Mirrors `dagnats trigger list|show|create|update|delete|enable|disable|history|fire`
(`dagnats/runtime/triggers_managed.py` does the work for both). Secrets are never shown (a
set one reads "(set)"). Mounted by `dagnats/api/serving.py` with the `/hooks` routes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from litestar import Response, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody, Parameter
from nats.js.client import JetStreamContext

from dagnats.api.problems import ProblemError
from dagnats.api.services import Services, ServicesDep
from dagnats.runtime import triggers_managed
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.triggers import (
    ManagedTrigger,
    load_entries,
    reach_trigger_resources,
    read_fires,
)
from dagnats.runtime.triggers_plan import TRIGGERS_BUCKET, trigger_key
from dagnats.runtime.triggers_requests import (
    FireRequestRefusedError,
    FireUnansweredError,
    fire_answer,
    request_fire,
)

HISTORY_MAX = 1_000


class TriggerBody(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger to create: its workflow and its definition (the workflow format's form)."""

    workflow: str
    trigger: dict[str, Any]


def _js(services: Services) -> JetStreamContext:
    return services.client.connection.js


def _not_found(error: triggers_managed.TriggerNotFoundError) -> ProblemError:
    return ProblemError(
        404, str(error), kind="trigger-not-found", hint="list with GET /v1/triggers"
    )


@get("/", summary="List every trigger (a workflow's own and managed ones)")
async def list_triggers(services: ServicesDep) -> list[dict[str, object]]:
    js = _js(services)
    await reach_trigger_resources(js)
    managed = await _managed_keys(js)
    return [
        triggers_managed.shown(entry, managed=trigger_key(entry.workflow_name, entry.trigger.id)
                               in managed)
        for entry in await load_entries(js)
    ]  # fmt: skip


async def _managed_keys(js: JetStreamContext) -> set[str]:
    kv = await js.key_value(TRIGGERS_BUCKET)
    keys: set[str] = set()
    for key in await kv_keys(js, TRIGGERS_BUCKET):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
            found = await kv.get(key)
            if found.value:
                item = msgspec.json.decode(found.value, type=ManagedTrigger)
                keys.add(trigger_key(item.workflow, item.trigger.id))
    return keys


@get("/{workflow:str}/{trigger_id:str}", summary="Show a trigger (secrets hidden)")
async def show_trigger(
    workflow: FromPath[str], trigger_id: FromPath[str], services: ServicesDep
) -> dict[str, object]:
    try:
        entry = await triggers_managed.show(_js(services), workflow, trigger_id)
    except triggers_managed.TriggerNotFoundError as error:
        raise _not_found(error) from None
    return triggers_managed.shown(entry)


@post("/", status_code=201, summary="Create a managed trigger (validated like a file's)")
async def create_trigger(data: JSONBody[TriggerBody], services: ServicesDep) -> dict[str, object]:
    definition = await services.client.get_workflow(data.workflow)
    try:
        trigger = await triggers_managed.put(_js(services), definition, data.trigger, create=True)
    except triggers_managed.TriggerExistsError as error:
        raise ProblemError(409, str(error), kind="trigger-exists", field="trigger.id") from None
    services.triggers_changed()
    return {"workflow": data.workflow, "id": trigger.id}


@put("/{workflow:str}/{trigger_id:str}", summary="Replace a trigger by a managed one")
async def update_trigger(
    workflow: FromPath[str],
    trigger_id: FromPath[str],
    data: JSONBody[dict[str, Any]],
    services: ServicesDep,
) -> dict[str, object]:
    if data.get("id", trigger_id) != trigger_id:
        raise ProblemError(400, f"trigger.id {data.get('id')!r} is not {trigger_id!r} (the path)",
                           kind="validation", field="trigger.id")  # fmt: skip
    definition = await services.client.get_workflow(workflow)
    document = {**data, "id": trigger_id}
    try:
        await triggers_managed.put(_js(services), definition, document, create=False)
    except triggers_managed.TriggerNotFoundError as error:
        raise _not_found(error) from None
    services.triggers_changed()
    return {"workflow": workflow, "id": trigger_id}


@delete("/{workflow:str}/{trigger_id:str}", status_code=204, summary="Delete a managed trigger")
async def delete_trigger(
    workflow: FromPath[str], trigger_id: FromPath[str], services: ServicesDep
) -> None:
    try:
        await triggers_managed.delete(_js(services), workflow, trigger_id)
    except triggers_managed.TriggerNotFoundError as error:
        raise _not_found(error) from None
    except triggers_managed.FileTriggerError as error:
        raise ProblemError(409, str(error), kind="file-trigger",
                           hint="disable it with POST .../disable") from None  # fmt: skip
    services.triggers_changed()


async def _set_enabled(services: Services, workflow: str, trigger_id: str, on: bool) -> None:
    try:
        await triggers_managed.set_enabled(_js(services), workflow, trigger_id, on)
    except triggers_managed.TriggerNotFoundError as error:
        raise _not_found(error) from None
    services.triggers_changed()


@post("/{workflow:str}/{trigger_id:str}/enable", status_code=200, summary="Enable a trigger")
async def enable_trigger(
    workflow: FromPath[str], trigger_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    await _set_enabled(services, workflow, trigger_id, True)
    return Response(b'{"enabled": true}', media_type="application/json")


@post("/{workflow:str}/{trigger_id:str}/disable", status_code=200, summary="Disable a trigger")
async def disable_trigger(
    workflow: FromPath[str], trigger_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    await _set_enabled(services, workflow, trigger_id, False)
    return Response(b'{"enabled": false}', media_type="application/json")


@post("/{workflow:str}/{trigger_id:str}/fire", status_code=200, summary="Fire a trigger now")
async def fire_trigger(
    workflow: FromPath[str], trigger_id: FromPath[str], services: ServicesDep
) -> dict[str, object]:
    """Like `dagnats trigger fire`: a request the engine answers (the run started, or the
    fire offered to its burst with `starts_by`, or why not); 404 for an unknown trigger,
    504 when no engine answered in time."""
    try:
        reply = await request_fire(_js(services), workflow, trigger_id)
    except FireRequestRefusedError as error:
        raise ProblemError(404, str(error), kind="trigger-not-found",
                           hint="list with GET /v1/triggers") from None  # fmt: skip
    except FireUnansweredError as error:
        raise ProblemError(504, str(error), kind="trigger-fire-unanswered",
                           hint=error.hint) from None  # fmt: skip
    return fire_answer(reply)


@get("/{workflow:str}/{trigger_id:str}/history", summary="A trigger's fires, oldest first")
async def trigger_history(
    workflow: FromPath[str],
    trigger_id: FromPath[str],
    services: ServicesDep,
    limit: int = Parameter(default=50, ge=1, le=HISTORY_MAX),
) -> list[dict[str, object]]:
    found = await read_fires(_js(services), workflow, trigger_id, limit)
    return [msgspec.to_builtins(record) for record in found]


router = Router(
    path="/v1/triggers",
    route_handlers=[
        list_triggers, show_trigger, create_trigger, update_trigger, delete_trigger,
        enable_trigger, disable_trigger, fire_trigger, trigger_history,
    ],
    tags=["triggers"],
)  # fmt: skip

__all__ = ["router"]
