"""Cron and subject triggers against a real nats-server and an in-process engine (`Server`
on the test's own server): cron fires through an injected clock (no test waits a minute),
one run per fire with two trigger services at once, a fire due while no engine ran runs once
after restart (as the backfill says), and a subject message published while serve was down
starts its run when serve is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest_asyncio
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.serve import Server
from dagnats.runtime.triggers import (
    TriggerService,
    command_starter,
    ensure_trigger_resources,
    load_entries,
    read_fires,
)
from dagnats.runtime.triggers_plan import (
    BURST_PREFIX,
    STATE_BUCKET,
    Burst,
    cron_fire_name,
    fire_run_id,
    trigger_key,
)
from kernel.timestamps import parse_rfc3339_ms
from tests.nats_fixtures import wait_for

WAIT_MS = 20_000
T0 = parse_rfc3339_ms("2031-01-01T00:00:30Z") or 0
HOUR_MS = 3_600_000


def nap_workflow(name: str, trigger: dict[str, object]) -> dict[str, object]:
    return {
        "name": name,
        "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}],
        "triggers": [trigger],
    }


@pytest_asyncio.fixture
async def client(private_server: EmbeddedNats) -> AsyncIterator[Client]:
    the_client = await Client.connect(private_server.url)
    try:
        await ensure_resources(the_client.connection.js)
        await ensure_trigger_resources(the_client.connection.js)
        yield the_client
    finally:
        await the_client.close()


@contextlib.asynccontextmanager
async def serve(url: str, data_dir: Path) -> AsyncIterator[Server]:
    server = Server(data_dir, nats_url=url)
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield server
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await server.stop()


class FakeClock:
    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def __call__(self) -> int:
        return self.at_ms


async def runs_started(client: Client, run_id: str) -> int:
    count = 0
    async for _, decision in client.history(run_id):
        count += sum(1 for event in decision.events if type(event).__name__ == "RunStarted")
    return count


async def set_last_fire(js: JetStreamContext, workflow: str, trigger_id: str, at_ms: int) -> None:
    kv = await js.key_value(STATE_BUCKET)
    await kv.put(trigger_key(workflow, trigger_id), str(at_ms).encode())


async def test_two_engines_start_one_run_per_cron_fire(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    await client.register_workflow(nap_workflow("every_minute", {"id": "m", "cron": {
        "expression": "* * * * *"}}))  # fmt: skip
    js = client.connection.js
    await set_last_fire(js, "every_minute", "m", T0)
    clock = FakeClock(T0)
    engines = [TriggerService(js, command_starter(client.connection), clock=clock)
               for _ in range(2)]  # fmt: skip
    for service in engines:
        await service.reload()
    clock.at_ms = T0 + 60_000  # 00:01:30: the 00:01 fire is due
    await asyncio.gather(*(service.tick() for service in engines))
    fire_ms = T0 + 30_000
    run_id = fire_run_id("every_minute", "m", cron_fire_name(fire_ms))
    async with serve(private_server.url, tmp_path / "data"):
        state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
    assert state.status == "completed"
    assert await runs_started(client, run_id) == 1
    assert msgspec.json.decode(bytes(state.input))["fire_time"] == "2031-01-01T00:01:00.000Z"
    await asyncio.gather(*(service.tick() for service in engines))  # the same moment again
    fires = await read_fires(js, "every_minute", "m", 10)
    assert [(f.outcome, f.run_id) for f in fires] == [("started", run_id)]  # one record


async def test_a_fire_due_while_down_runs_once_after_restart_as_backfill_says(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    await client.register_workflow(nap_workflow("hourly", {"id": "h", "cron": {
        "expression": "0 * * * *", "backfill": 1}}))  # fmt: skip
    js = client.connection.js
    await set_last_fire(js, "hourly", "h", T0)  # then no engine ran for three hours
    clock = FakeClock(T0 + 3 * HOUR_MS + 600_000)  # 03:10:30: 01:00, 02:00, 03:00 missed
    restarted = TriggerService(js, command_starter(client.connection), clock=clock)
    await restarted.reload()
    await restarted.tick()
    await restarted.tick()  # a second look changes nothing
    newest = fire_run_id("hourly", "h", cron_fire_name(T0 - 30_000 + 3 * HOUR_MS))
    older = fire_run_id("hourly", "h", cron_fire_name(T0 - 30_000 + 2 * HOUR_MS))
    async with serve(private_server.url, tmp_path / "data"):
        state = await client.wait(newest, timeout_s=WAIT_MS / 1000)
    assert state.status == "completed" and await runs_started(client, newest) == 1
    assert await runs_started(client, older) == 0  # backfill 1: only the newest missed fire
    fires = await read_fires(js, "hourly", "h", 10)
    assert [f.run_id for f in fires if f.outcome == "started"] == [newest]


async def test_a_subject_message_published_while_serve_was_down_starts_its_run(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    await client.register_workflow(nap_workflow("orders", {"id": "o", "subject": "shop.order"}))
    js = client.connection.js
    async with serve(private_server.url, tmp_path / "data"):  # it creates stream and consumer
        await wait_for(lambda: _consumer_exists(js, "orders", "o"), timeout_ms=WAIT_MS,
                       what="the subject trigger's consumer")  # fmt: skip
    await js.publish("shop.order", b'{"order": 7}', headers={"Nats-Msg-Id": "order-7"})
    await js.publish("shop.order", b'{"order": 7}', headers={"Nats-Msg-Id": "order-7"})
    run_id = fire_run_id("orders", "o", "order-7")
    async with serve(private_server.url, tmp_path / "data"):
        await wait_for(lambda: _has_history(client, run_id), timeout_ms=WAIT_MS,
                       what="the run of the message")  # fmt: skip
        state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
    assert msgspec.json.decode(bytes(state.input)) == {
        "trigger": "o", "subject": "shop.order", "data": {"order": 7}}  # fmt: skip
    assert await runs_started(client, run_id) == 1


async def test_a_fire_of_a_disabled_trigger_is_recorded_with_its_reason(client: Client) -> None:
    trigger = {"id": "x", "enabled": False, "cron": {"expression": "* * * * *"}}
    await client.register_workflow(nap_workflow("off", trigger))
    js = client.connection.js
    service = TriggerService(js, command_starter(client.connection), clock=FakeClock(T0))
    await service.reload()
    (entry,) = [e for e in service.entries if e.workflow_name == "off"]
    record = await service.fire(entry, "manual-1", {})
    assert (record.outcome, record.reason, record.run_id) == ("skipped", "trigger disabled", "")
    assert [f.reason for f in await read_fires(js, "off", "x", 10)] == ["trigger disabled"]


async def _consumer_exists(js: JetStreamContext, workflow: str, trigger_id: str) -> bool:
    try:
        await js.consumer_info("DAGNATS_TRIGGER_IN", f"trg_{trigger_key(workflow, trigger_id)}")
    except Exception:  # not there yet
        return False
    return True


async def _has_history(client: Client, run_id: str) -> bool:
    return await client.connection.history.last_seq(run_id) > 0


async def test_a_debounced_burst_outlives_its_service_and_two_engines_start_it_once(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    debounce = {"period": "5s", "timeout": "1m", "key": "data.user"}
    await client.register_workflow(nap_workflow("bursty", {"id": "b", "subject": "x.burst",
                                                           "debounce": debounce}))  # fmt: skip
    js = client.connection.js
    clock = FakeClock(T0)
    gone = TriggerService(js, command_starter(client.connection), clock=clock)
    (entry,) = [e for e in await load_entries(js) if e.workflow_name == "bursty"]
    for n in range(3):
        clock.at_ms = T0 + n * 1_000
        record = await gone.fire(entry, f"msg-{n}", {"data": {"user": "ann", "n": n}})
        assert record.outcome == "debounced"
    del gone  # the engine that saw the burst is gone, its memory with it
    engines = [TriggerService(js, command_starter(client.connection), clock=clock)
               for _ in range(2)]  # fmt: skip
    for service in engines:
        service.entries = [entry]  # (no reload: it would start the subject's consumer)
        service.loaded = True
    clock.at_ms = T0 + 6_000  # 4 s after the last fire: not quiet yet
    await asyncio.gather(*(service.tick() for service in engines))
    run_id = fire_run_id("bursty", "b", "msg-0")
    assert await client.connection.history.last_seq(run_id) == 0
    clock.at_ms = T0 + 7_000
    await asyncio.gather(*(service.tick() for service in engines))
    await asyncio.gather(*(service.tick() for service in engines))
    async with serve(private_server.url, tmp_path / "data"):
        state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
    last = {"user": "ann", "n": 2}
    assert msgspec.json.decode(bytes(state.input)) == {"trigger": "b", "data": last}
    assert await runs_started(client, run_id) == 1
    fires = await read_fires(js, "bursty", "b", 10)
    assert [(f.outcome, f.run_id) for f in fires if f.outcome == "started"] == [("started", run_id)]
    kv = await js.key_value(STATE_BUCKET)
    (name,) = await kv_keys(js, STATE_BUCKET, BURST_PREFIX)  # kept a while, marked started
    burst = msgspec.json.decode((await kv.get(name)).value or b"", type=Burst)
    assert (burst.fire, burst.started_ms) == ("msg-0", T0 + 7_000)
