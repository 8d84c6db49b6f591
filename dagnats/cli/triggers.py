"""`dagnats trigger test|list|show|create|update|delete|history|fire|enable|disable`.

`test` needs no server: it prints an expression's next fire times. The others read the set of
triggers serve runs (each registered workflow's own, overridden by managed ones in the bucket
`dagnats_triggers`: `create`/`update` and `enable`/`disable` write there, validated like a
file's triggers, `dagnats/runtime/triggers_managed.py`). Imports `dagnats.cli.common`
and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from dagnats.cli.common import JsonOption, UrlOption, emit_json, fail, out, run_async, with_client
from dagnats.client import Client
from dagnats.runtime import triggers_managed
from dagnats.runtime.clock import now_ms
from dagnats.runtime.settings import trigger_fire_reply_timeout_s
from dagnats.runtime.triggers import Entry, load_entries, reach_trigger_resources, read_fires
from dagnats.runtime.triggers_plan import (
    ZoneError,
    cron_fire_name,
    next_fire,
    zone_of,
)
from dagnats.runtime.triggers_requests import fire_answer, request_fire
from kernel.cron import parse_cron
from kernel.workflow.trigger_model import CronSource

COUNT_MAX = 1_000
WAIT_MAX_S = 600  # --timeout of `trigger fire`
HISTORY_MAX = 1_000


def register(trigger_app: typer.Typer) -> None:
    """Add the trigger commands to the `trigger` sub-app."""
    trigger_app.command("test")(trigger_test)
    trigger_app.command("list")(trigger_list)
    trigger_app.command("show")(trigger_show)
    trigger_app.command("create")(trigger_create)
    trigger_app.command("update")(trigger_update)
    trigger_app.command("delete")(trigger_delete)
    trigger_app.command("history")(trigger_history)
    trigger_app.command("fire")(trigger_fire)
    trigger_app.command("enable")(trigger_enable)
    trigger_app.command("disable")(trigger_disable)


def trigger_test(
    expression: Annotated[str, typer.Argument(help="A 5-field cron expression.")],
    count: Annotated[
        int, typer.Option("--count", help=f"Fire times to print (1..{COUNT_MAX}).")
    ] = 5,
    timezone: Annotated[str, typer.Option(help="An IANA time zone name.")] = "UTC",
    as_json: JsonOption = False,
) -> None:
    """Print the next fire times of a cron expression (no server needed)."""
    found = parse_cron(expression)
    if isinstance(found, str):
        raise fail(f"cron expression {expression!r} {found}", "e.g. '*/15 9-17 * * 1-5'")
    if not 1 <= count <= COUNT_MAX:
        raise fail(f"--count {count} must be from 1 to {COUNT_MAX}")
    try:
        zone_of(timezone)
    except ZoneError as error:
        raise fail(str(error), "e.g. --timezone Europe/Paris") from None
    source = CronSource(expression=expression, timezone=timezone)
    times: list[str] = []
    at = now_ms()
    for _ in range(count):
        fire = next_fire(source, at)
        if fire is None:
            break
        times.append(cron_fire_name(fire))
        at = fire
    if as_json:
        emit_json({"expression": expression, "timezone": timezone, "fires": times})
        return
    for time in times:
        out.print(time)


def trigger_list(nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List every trigger: workflow, id, kind, enabled."""
    entries = run_async(with_client(nats_url, _entries))
    rows = [
        {"workflow": e.workflow_name, "id": e.trigger.id, "kind": e.trigger.kind,
         "enabled": e.trigger.enabled, "registered": e.workflow is not None}
        for e in entries
    ]  # fmt: skip
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        out.print(f"{row['workflow']}/{row['id']}  {row['kind']}  {state}")


def trigger_history(
    workflow: Annotated[str, typer.Argument(help="The trigger's workflow.")],
    trigger_id: Annotated[str, typer.Argument(help="The trigger's id.")],
    limit: Annotated[int, typer.Option(help=f"Newest records (1..{HISTORY_MAX}).")] = 50,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The trigger's fires: time or message id, run id, outcome, reason."""
    if not 1 <= limit <= HISTORY_MAX:
        raise fail(f"--limit {limit} must be from 1 to {HISTORY_MAX}")

    async def read(client: Client) -> list[dict[str, object]]:
        await reach_trigger_resources(client.connection.js)
        found = await read_fires(client.connection.js, workflow, trigger_id, limit)
        return [msgspec.to_builtins(record) for record in found]

    records = run_async(with_client(nats_url, read))
    if as_json:
        emit_json(records)
        return
    for record in records:
        reason = f"  ({record['reason']})" if record["reason"] else ""
        out.print(f"{record['fire']}  {record['outcome']}  {record['run_id']}{reason}")


def trigger_fire(
    workflow: Annotated[str, typer.Argument(help="The trigger's workflow.")],
    trigger_id: Annotated[str, typer.Argument(help="The trigger's id.")],
    timeout: Annotated[
        float, typer.Option(help=f"Seconds to wait for the engine's answer (1..{WAIT_MAX_S}).")
    ] = trigger_fire_reply_timeout_s,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fire a trigger now (by hand), like any other fire of it: serve's engine starts its run,
    offers the fire to its debounced burst, or records why not; prints the run id."""
    if not 1 <= timeout <= WAIT_MAX_S:
        raise fail(f"--timeout {timeout:g} must be from 1 to {WAIT_MAX_S}")

    async def fire(client: Client) -> dict[str, object]:
        await _entry(client, workflow, trigger_id)  # an unknown trigger: said here, at once
        return fire_answer(await request_fire(client.connection.js, workflow, trigger_id, timeout))

    answer = run_async(with_client(nats_url, fire))
    if as_json:
        emit_json(answer)
        return
    if answer["outcome"] == "started":
        out.print(f"started  {answer['run_id']}")
    elif answer["outcome"] == "debounced" and answer["starts_by"]:
        out.print(f"debounced  offered to the burst, starts by {answer['starts_by']}")
    else:
        out.print(f"{answer['outcome']}  {answer['run_id'] or answer['reason']}")


def trigger_enable(
    workflow: Annotated[str, typer.Argument()], trigger_id: Annotated[str, typer.Argument()],
    nats_url: UrlOption = None,
) -> None:  # fmt: skip
    """Enable a trigger (an override kept beside the workflow's own definition)."""
    run_async(
        with_client(nats_url, lambda client: _set_enabled(client, workflow, trigger_id, True))
    )
    out.print(f"trigger {workflow}/{trigger_id} enabled")


def trigger_disable(
    workflow: Annotated[str, typer.Argument()], trigger_id: Annotated[str, typer.Argument()],
    nats_url: UrlOption = None,
) -> None:  # fmt: skip
    """Disable a trigger: its fires are recorded as skipped, no run starts."""
    run_async(
        with_client(nats_url, lambda client: _set_enabled(client, workflow, trigger_id, False))
    )
    out.print(f"trigger {workflow}/{trigger_id} disabled")


async def _entries(client: Client) -> list[Entry]:
    await reach_trigger_resources(client.connection.js)
    return await load_entries(client.connection.js)


async def _entry(client: Client, workflow: str, trigger_id: str) -> Entry:
    for entry in await _entries(client):
        if (entry.workflow_name, entry.trigger.id) == (workflow, trigger_id):
            return entry
    raise fail(f"no trigger {trigger_id!r} in workflow {workflow!r}", "see `dagnats trigger list`")


async def _set_enabled(client: Client, workflow: str, trigger_id: str, enabled: bool) -> None:
    try:
        await triggers_managed.set_enabled(client.connection.js, workflow, trigger_id, enabled)
    except triggers_managed.TriggerNotFoundError as error:
        raise fail(str(error), "see `dagnats trigger list`") from None


def trigger_show(
    workflow: Annotated[str, typer.Argument(help="The trigger's workflow.")],
    trigger_id: Annotated[str, typer.Argument(help="The trigger's id.")],
    nats_url: UrlOption = None,
) -> None:
    """Show a trigger in force (JSON; secrets are shown as "(set)")."""

    async def show(client: Client) -> dict[str, object]:
        try:
            entry = await triggers_managed.show(client.connection.js, workflow, trigger_id)
        except triggers_managed.TriggerNotFoundError as error:
            raise fail(str(error), "see `dagnats trigger list`") from None
        return triggers_managed.shown(entry)

    emit_json(run_async(with_client(nats_url, show)))


TriggerSpec = Annotated[
    str, typer.Argument(help="The trigger: a JSON file, or the JSON itself ({...}).")
]


def _read_spec(spec: str) -> object:
    text = spec
    if not spec.lstrip().startswith("{"):
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise fail(f"{spec}: {reason}", "pass a JSON file or the JSON itself") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"trigger: not JSON: {error}", 'e.g. \'{"id": "hook", ...}\'') from None


def _put(workflow: str, spec: str, nats_url: str | None, *, create: bool) -> None:
    document = _read_spec(spec)

    async def put(client: Client) -> str:
        definition = await client.get_workflow(workflow)
        js = client.connection.js
        try:
            trigger = await triggers_managed.put(js, definition, document, create=create)
        except triggers_managed.TriggerExistsError as error:
            raise fail(str(error), f"dagnats trigger update {workflow} ...") from None
        except triggers_managed.TriggerNotFoundError as error:
            raise fail(str(error), f"dagnats trigger create {workflow} ...") from None
        return trigger.id

    trigger_id = run_async(with_client(nats_url, put))
    out.print(f"trigger {workflow}/{trigger_id} {'created' if create else 'updated'}")


def trigger_create(
    workflow: Annotated[str, typer.Argument(help="The trigger's workflow (registered).")],
    spec: TriggerSpec,
    nats_url: UrlOption = None,
) -> None:
    """Create a managed trigger (validated like a workflow file's)."""
    _put(workflow, spec, nats_url, create=True)


def trigger_update(
    workflow: Annotated[str, typer.Argument(help="The trigger's workflow.")],
    spec: TriggerSpec,
    nats_url: UrlOption = None,
) -> None:
    """Replace a trigger (its id in the JSON) by a managed one."""
    _put(workflow, spec, nats_url, create=False)


def trigger_delete(
    workflow: Annotated[str, typer.Argument()], trigger_id: Annotated[str, typer.Argument()],
    nats_url: UrlOption = None,
) -> None:  # fmt: skip
    """Delete a managed trigger (a workflow file's trigger of that id is in force again)."""

    async def delete(client: Client) -> None:
        try:
            await triggers_managed.delete(client.connection.js, workflow, trigger_id)
        except triggers_managed.TriggerNotFoundError as error:
            raise fail(str(error), "see `dagnats trigger list`") from None
        except triggers_managed.FileTriggerError as error:
            raise fail(str(error), f"dagnats trigger disable {workflow} {trigger_id}") from None

    run_async(with_client(nats_url, delete))
    out.print(f"trigger {workflow}/{trigger_id} deleted")
