"""Enabling and disabling a trigger (`triggers_managed.set_enabled`, the one function behind
`dagnats trigger enable|disable`, `POST /v1/triggers/.../enable|disable` and the console's
buttons) against a real nats-server: the override lands in the bucket, the trigger in force
follows it, and an unknown id is refused naming the workflow and the id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest
import pytest_asyncio
import typer

from dagnats.cli.triggers import _set_enabled
from dagnats.client import Client
from dagnats.runtime import triggers_managed
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.triggers import ManagedTrigger, ensure_trigger_resources, managed_key
from dagnats.runtime.triggers_plan import TRIGGERS_BUCKET

NIGHTLY: dict[str, object] = {
    "name": "nightly",
    "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}],
    "triggers": [{"id": "every", "cron": {"expression": "0 3 * * *"}}],
}


@pytest_asyncio.fixture
async def client(private_server: EmbeddedNats) -> AsyncIterator[Client]:
    the_client = await Client.connect(private_server.url)
    try:
        for ensure in (ensure_resources, ensure_trigger_resources):
            await ensure(the_client.connection.js)
        await the_client.register_workflow(NIGHTLY)
        yield the_client
    finally:
        await the_client.close()


async def stored(client: Client) -> ManagedTrigger:
    kv = await client.connection.js.key_value(TRIGGERS_BUCKET)
    found = await kv.get(managed_key("nightly", "every"))
    assert found.value, "the override is in the bucket"
    return msgspec.json.decode(found.value, type=ManagedTrigger)


async def test_disable_then_enable_writes_an_override_the_trigger_follows(client: Client) -> None:
    js = client.connection.js
    assert (await triggers_managed.show(js, "nightly", "every")).trigger.enabled
    entry = await triggers_managed.set_enabled(js, "nightly", "every", False)
    assert (entry.workflow_name, entry.trigger.id, entry.trigger.enabled) == (
        "nightly", "every", False)  # fmt: skip
    assert (await stored(client)).trigger.enabled is False
    assert (await triggers_managed.show(js, "nightly", "every")).trigger.enabled is False
    await triggers_managed.set_enabled(js, "nightly", "every", True)
    override = await stored(client)
    assert override.trigger.enabled is True
    assert override.trigger.cron is not None
    assert override.trigger.cron.expression == "0 3 * * *", "the rest of the trigger is kept"
    assert (await triggers_managed.show(js, "nightly", "every")).trigger.enabled is True


async def test_an_unknown_trigger_is_refused_naming_workflow_and_id(client: Client) -> None:
    with pytest.raises(triggers_managed.TriggerNotFoundError) as caught:
        await triggers_managed.set_enabled(client.connection.js, "nightly", "nope", False)
    assert "'nope'" in str(caught.value) and "'nightly'" in str(caught.value)
    kv = await client.connection.js.key_value(TRIGGERS_BUCKET)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(managed_key("nightly", "nope"))


async def test_the_cli_turns_an_unknown_trigger_into_one_line_and_a_hint(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as caught:
        await _set_enabled(client, "nightly", "nope", True)
    assert caught.value.exit_code == 1
    shown = capsys.readouterr().err
    assert "no trigger 'nope' in workflow 'nightly'" in shown, shown
    assert "dagnats trigger list" in shown, shown
