"""Debounced bursts' upkeep against a real nats-server (an injected clock, no real wait): a
burst whose trigger was disabled or deleted is dropped once it was gone for the burst's
timeout, with a fire record saying why; a started burst is kept a while (fires delivered again
are known), then deleted, and its delete marker purged from the bucket's stream, never a
burst made since."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
from msgspec.structs import replace

from dagnats.client import Client
from dagnats.runtime import settings
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.triggers import (
    Entry,
    TriggerService,
    command_starter,
    ensure_trigger_resources,
    load_entries,
    read_fires,
)
from dagnats.runtime.triggers_debounce import purge_marker
from dagnats.runtime.triggers_plan import BURST_PREFIX, STATE_BUCKET, Burst, fire_run_id
from kernel.timestamps import parse_rfc3339_ms

T0 = parse_rfc3339_ms("2031-01-01T00:00:00Z") or 0
TIMEOUT_MS = 60_000
NAME = "tidy"


@pytest_asyncio.fixture
async def client(private_server: EmbeddedNats) -> AsyncIterator[Client]:
    the_client = await Client.connect(private_server.url)
    try:
        await ensure_resources(the_client.connection.js)
        await ensure_trigger_resources(the_client.connection.js)
        await the_client.register_workflow({"name": NAME, "steps": [
            {"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}], "triggers": [
            {"id": "b", "subject": {"subject": "x.tidy"},
             "debounce": {"period": "5s", "timeout": "1m"}}]})  # fmt: skip
        yield the_client
    finally:
        await the_client.close()


class Clock:
    def __init__(self) -> None:
        self.at_ms = T0

    def __call__(self) -> int:
        return self.at_ms


def service(client: Client, clock: Clock, entries: list[Entry]) -> TriggerService:
    found = TriggerService(client.connection.js, command_starter(client.connection), clock=clock)
    found.entries, found.loaded = entries, True  # (no reload: it would start a consumer)
    return found


async def bursts(client: Client) -> tuple[list[str], list[Burst]]:
    """The keys listed under the bursts' prefix (delete markers too) and the live bursts."""
    js = client.connection.js
    names = await kv_keys(js, STATE_BUCKET, BURST_PREFIX)
    kv = await js.key_value(STATE_BUCKET)
    live = []
    for name in names:
        entry = await kv.get(name)
        if entry.value:
            live.append(msgspec.json.decode(entry.value, type=Burst))
    return names, live


@pytest.mark.parametrize(("gone", "reason"), [("disabled", "trigger disabled"),
                                              ("deleted", "trigger deleted")])  # fmt: skip
async def test_a_burst_of_a_gone_trigger_is_dropped_after_its_timeout_with_a_record(
    client: Client, gone: str, reason: str
) -> None:
    (entry,) = await load_entries(client.connection.js)
    clock = Clock()
    first = service(client, clock, [entry])
    for n in range(2):
        assert (await first.fire(entry, f"m{n}", n)).outcome == "debounced"
    left = (
        [replace(entry, trigger=replace(entry.trigger, enabled=False))]
        if gone == "disabled"
        else []
    )
    later = service(client, clock, left)
    clock.at_ms = T0 + 2 * TIMEOUT_MS  # the burst is long due: its trigger is what is missing
    await later.tick()  # first seen gone now
    clock.at_ms += TIMEOUT_MS - 1
    await later.tick()
    names, live = await bursts(client)
    assert [b.fire for b in live] == ["m0"] and len(names) == 1
    clock.at_ms += 1  # gone for the burst's timeout
    await later.tick()
    assert await bursts(client) == ([], [])  # dropped, its delete marker purged
    records = await read_fires(client.connection.js, NAME, "b", 10)
    assert [(r.fire, r.outcome, r.reason) for r in records][-1] == ("m0", "dropped", reason)
    run_id = fire_run_id(NAME, "b", "m0")
    assert await client.connection.history.last_seq(run_id) == 0  # no run started


async def test_a_trigger_back_within_the_timeout_keeps_its_burst(client: Client) -> None:
    (entry,) = await load_entries(client.connection.js)
    clock = Clock()
    live_service = service(client, clock, [entry])
    assert (await live_service.fire(entry, "m0", 0)).outcome == "debounced"
    gone = service(client, clock, [])
    await gone.tick()
    clock.at_ms += TIMEOUT_MS - 1
    await gone.tick()
    gone.entries = [replace(entry, trigger=replace(entry.trigger, enabled=False))]
    clock.at_ms += 1  # disabled now, deleted before: gone for the timeout all the same
    await gone.tick()
    assert (await bursts(client))[1] == []
    fresh = service(client, clock, [])
    assert (await fresh.fire(entry, "m1", 1)).outcome == "debounced"
    await fresh.tick()  # back: a new service sees it missing only from now
    clock.at_ms += TIMEOUT_MS // 2
    fresh.entries = [entry]
    assert (await fresh.fire(entry, "m2", 2)).outcome == "debounced"  # (not due at this tick)
    await fresh.tick()  # present again: the gone clock is reset
    fresh.entries = []
    clock.at_ms += TIMEOUT_MS // 2  # gone for half the timeout since, the whole since m1's tick
    await fresh.tick()
    (kept,) = (await bursts(client))[1]
    assert kept.fires == ("m1", "m2") and not kept.started_ms, kept  # kept, for its trigger


async def test_a_started_burst_is_kept_then_deleted_and_its_marker_purged(
    client: Client,
) -> None:
    (entry,) = await load_entries(client.connection.js)
    clock = Clock()
    engine = service(client, clock, [entry])
    assert (await engine.fire(entry, "m0", 0)).outcome == "debounced"
    clock.at_ms += 5_000
    await engine.tick()
    (started,) = (await bursts(client))[1]
    assert started.started_ms == clock.at_ms
    assert (await engine.fire(entry, "m0", 0)).outcome == "debounced"  # delivered again
    assert [b.fire for b in (await bursts(client))[1]] == ["m0"]
    clock.at_ms += settings.debounce_done_kept_ms - 1
    await engine.tick()
    assert len((await bursts(client))[1]) == 1
    clock.at_ms += 1
    await engine.tick()
    assert await bursts(client) == ([], [])
    runs = [r.run_id for r in await read_fires(client.connection.js, NAME, "b", 10)
            if r.outcome == "started"]  # fmt: skip
    assert runs == [fire_run_id(NAME, "b", "m0")]


async def test_purging_a_marker_keeps_a_burst_made_since(client: Client) -> None:
    js = client.connection.js
    kv = await js.key_value(STATE_BUCKET)
    name = f"{BURST_PREFIX}.t.k"
    await kv.create(name, b"old")
    await kv.delete(name)
    await kv.create(name, b"new")  # made between the delete and the purge
    await purge_marker(js, name)
    assert (await kv.get(name)).value == b"new"
    await kv.delete(name)
    await purge_marker(js, name)
    assert await kv_keys(js, STATE_BUCKET, BURST_PREFIX) == []


async def test_started_bursts_still_remembered_count_against_the_bound(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`debounce_keys_max` bounds what the bucket holds: a started burst kept for its
    redeliveries counts, so a fire of a new key beyond the bound starts its run at once."""
    monkeypatch.setattr(settings, "debounce_keys_max", 1)
    (entry,) = await load_entries(client.connection.js)
    assert entry.trigger.debounce is not None
    keyed = replace(entry, trigger=replace(entry.trigger, debounce=replace(
        entry.trigger.debounce, key="k")))  # fmt: skip
    clock = Clock()
    engine = service(client, clock, [keyed])
    assert (await engine.fire(keyed, "a0", {"k": "a"})).outcome == "debounced"
    clock.at_ms += 5_000
    await engine.tick()  # a's burst starts its run, and is remembered
    (started,) = (await bursts(client))[1]
    assert started.started_ms
    beyond = await engine.fire(keyed, "b0", {"k": "b"})
    assert beyond.outcome == "started", beyond  # not debounced: the bucket holds its bound
