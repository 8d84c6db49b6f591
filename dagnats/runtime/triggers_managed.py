"""Managed triggers: create, show, update and delete a workflow's triggers in the bucket
`dagnats_triggers` (what `dagnats trigger create|show|update|delete` and `/v1/triggers` do).

A managed trigger is validated like one in the workflow's file: read with the format's reader
(`kernel.workflow.trigger_parse`), then the workflow's rules run over its triggers with this one
in place (route conflicts with the others included) and its time zone is looked up; problems
name their field as `trigger.<field>`. A managed trigger overrides the file's trigger of the
same id (`set_enabled`, behind `enable`/`disable`, writes such an override); deleting it brings
the file's back.
"""

from __future__ import annotations

import msgspec
import nats.errors
from msgspec.structs import replace
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime.triggers import (
    Entry,
    ManagedTrigger,
    load_entries,
    managed_key,
    reach_trigger_resources,
)
from dagnats.runtime.triggers_plan import TRIGGERS_BUCKET, zone_problems
from kernel.errors import DagnatsError, Problem, WorkflowInvalidError
from kernel.workflow import WorkflowDef, validate_workflow
from kernel.workflow.problems import Problems
from kernel.workflow.trigger_model import TriggerDef, triggers_of
from kernel.workflow.trigger_parse import read_trigger, trigger_document

FIELD: str = "trigger"
SECRET_SHOWN: str = "(set)"


class TriggerNotFoundError(DagnatsError):
    """No trigger of that id in that workflow."""

    def __init__(self, workflow: str, trigger_id: str) -> None:
        self.workflow = workflow
        self.trigger_id = trigger_id
        super().__init__(f"no trigger {trigger_id!r} in workflow {workflow!r}")


class TriggerExistsError(DagnatsError):
    """`create` of an id the workflow already has."""

    def __init__(self, workflow: str, trigger_id: str) -> None:
        super().__init__(
            f"workflow {workflow!r} has a trigger {trigger_id!r} already (update it instead)"
        )


class FileTriggerError(DagnatsError):
    """`delete` of a trigger only the workflow's file declares."""

    def __init__(self, workflow: str, trigger_id: str) -> None:
        super().__init__(
            f"trigger {trigger_id!r} is declared in workflow {workflow!r}'s definition: edit "
            "it there and register again, or disable it"
        )


def checked_trigger(
    document: object, workflow: WorkflowDef, others: list[TriggerDef]
) -> TriggerDef:
    """The trigger `document` describes, if it keeps every rule beside `others`.

    Raises:
        WorkflowInvalidError: every problem, each at `trigger.<field>` (route conflicts too).
    """
    problems = Problems()
    trigger = read_trigger(document, FIELD, problems)
    if problems.found:
        raise WorkflowInvalidError(tuple(problems.found), workflow=workflow.name)
    kept = [other for other in others if other.id != trigger.id]
    combined = replace(workflow, triggers=(*kept, trigger))
    own = f"triggers[{len(kept)}]"
    found: list[Problem] = []
    for problem in (*validate_workflow(combined), *zone_problems(combined)):
        path = problem.path
        if path == own or path.startswith((own + ".", own + "[")):
            path = FIELD + path[len(own) :]
        found.append(replace(problem, path=path))
    if found:
        raise WorkflowInvalidError(tuple(found), workflow=workflow.name)
    return trigger


async def route_conflicts(js: JetStreamContext, workflow: WorkflowDef) -> tuple[Problem, ...]:
    """A problem for each webhook or http route of `workflow` that a trigger of another
    registered workflow already serves (same method and path), naming that workflow."""
    own = [(index, t.route(), t) for index, t in enumerate(triggers_of(workflow))]
    if not any(route is not None for _, route, _ in own):
        return ()
    taken: dict[tuple[str, str], Entry] = {}
    for entry in await load_entries(js):
        route = entry.trigger.route()
        if route is not None and entry.workflow_name != workflow.name:
            taken.setdefault(route, entry)
    found: list[Problem] = []
    for index, route, trigger in own:
        other = taken.get(route) if route is not None else None
        if other is None or route is None:
            continue
        kind = "webhook" if trigger.webhook is not None else "http"
        found.append(Problem(
            path=f"triggers[{index}].{kind}.path", value=repr(route[1]),
            rule=f"{route[0]} /hooks{route[1]} is already served by trigger "
            f"{other.trigger.id!r} of workflow {other.workflow_name!r}: routes are unique "
            "across workflows",
        ))  # fmt: skip
    return tuple(found)


async def check_route_conflicts(js: JetStreamContext, workflow: WorkflowDef) -> None:
    """Nothing when no other workflow serves one of `workflow`'s routes (or the triggers
    cannot be read: a client without them registers as before).

    Raises:
        WorkflowInvalidError: naming each route and the workflow that has it.
    """
    try:
        problems = await route_conflicts(js, workflow)
    except (nats.errors.Error, TimeoutError):
        return
    if problems:
        raise WorkflowInvalidError(problems, workflow=workflow.name)


async def _of_workflow(js: JetStreamContext, workflow: str) -> list[Entry]:
    await reach_trigger_resources(js)
    return [entry for entry in await load_entries(js) if entry.workflow_name == workflow]


async def show(js: JetStreamContext, workflow: str, trigger_id: str) -> Entry:
    """The trigger in force (managed, else the file's).

    Raises:
        TriggerNotFoundError: none of that id.
    """
    for entry in await _of_workflow(js, workflow):
        if entry.trigger.id == trigger_id:
            return entry
    raise TriggerNotFoundError(workflow, trigger_id)


async def put(
    js: JetStreamContext, definition: WorkflowDef, document: object, *, create: bool
) -> TriggerDef:
    """Create (`create`: the id must be new) or update (it must exist) a managed trigger of
    the registered workflow `definition` (the caller reads it: `Client.get_workflow`).

    Raises:
        WorkflowInvalidError: the trigger breaks a rule (fields at `trigger.*`).
        TriggerExistsError, TriggerNotFoundError: as `create` says.
    """
    workflow = definition.name
    entries = await _of_workflow(js, workflow)
    trigger = checked_trigger(document, definition, [entry.trigger for entry in entries])
    others = [entry.trigger for entry in entries if entry.trigger.id != trigger.id]
    await check_route_conflicts(js, replace(definition, triggers=(*others, trigger)))
    exists = any(entry.trigger.id == trigger.id for entry in entries)
    if create and exists:
        raise TriggerExistsError(workflow, trigger.id)
    if not create and not exists:
        raise TriggerNotFoundError(workflow, trigger.id)
    managed = ManagedTrigger(workflow=workflow, trigger=trigger)
    kv = await js.key_value(TRIGGERS_BUCKET)
    await kv.put(managed_key(workflow, trigger.id), msgspec.json.encode(managed))
    return trigger


async def delete(js: JetStreamContext, workflow: str, trigger_id: str) -> None:
    """Delete a managed trigger (the file's of the same id, if any, is in force again).

    Raises:
        TriggerNotFoundError: no such trigger; FileTriggerError: only the file declares it.
    """
    entry = await show(js, workflow, trigger_id)
    kv: KeyValue = await js.key_value(TRIGGERS_BUCKET)
    key = managed_key(workflow, trigger_id)
    try:
        found = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        found = None
    if found is None or not found.value:
        raise FileTriggerError(workflow, entry.trigger.id)
    await kv.delete(key)


async def set_enabled(js: JetStreamContext, workflow: str, trigger_id: str, enabled: bool) -> Entry:
    """Enable or disable the trigger in force (`dagnats trigger enable|disable`, the HTTP
    routes and the console): an override of it, `enabled` as given, in the bucket.

    Raises:
        TriggerNotFoundError: none of that id.
    """
    entry = await show(js, workflow, trigger_id)
    managed = ManagedTrigger(workflow=workflow, trigger=replace(entry.trigger, enabled=enabled))
    kv = await js.key_value(TRIGGERS_BUCKET)
    await kv.put(managed_key(workflow, trigger_id), msgspec.json.encode(managed))
    return replace(entry, trigger=managed.trigger)


def shown(entry: Entry, *, managed: bool | None = None) -> dict[str, object]:
    """A trigger as the CLI and the API show it: its document with secrets hidden."""
    document = trigger_document(entry.trigger)
    for kind in ("webhook", "http"):
        source = document.get(kind)
        if isinstance(source, dict) and source.get("secret"):
            source["secret"] = SECRET_SHOWN
    result: dict[str, object] = {
        "workflow": entry.workflow_name, "id": entry.trigger.id, "kind": entry.trigger.kind,
        "enabled": entry.trigger.enabled, "registered": entry.workflow is not None,
        "trigger": document,
    }  # fmt: skip
    if managed is not None:
        result["managed"] = managed
    return result


__all__ = [
    "FileTriggerError",
    "TriggerExistsError",
    "TriggerNotFoundError",
    "check_route_conflicts",
    "checked_trigger",
    "delete",
    "put",
    "set_enabled",
    "show",
    "shown",
]
