"""A cron fire whose start did not go out (NATS did not answer its publish) is tried again
at the next tick, not passed over (dagnats/runtime/triggers.py `TriggerService._cron`): the
trigger's last fire (bucket `dagnats_trigger_state`) advances only over fires whose start went
out, as a subject trigger's message is naked, not acked, when its start fails. Against a real
nats-server; the start of the fire fails once, where the publish would raise.
"""

from __future__ import annotations

import nats.errors

from dagnats.client import Client
from dagnats.runtime.triggers import TriggerService, command_starter, read_fires
from dagnats.runtime.triggers_plan import cron_fire_name, fire_run_id
from kernel.workflow import WorkflowDef
from tests.test_triggers_nats import T0, FakeClock, client, nap_workflow, set_last_fire

__all__ = ["client"]  # (the fixture, used by name)


async def test_a_cron_fire_whose_start_failed_is_started_at_the_next_tick(
    client: Client,
) -> None:
    await client.register_workflow(nap_workflow("every_minute", {"id": "m", "cron": {
        "expression": "* * * * *"}}))  # fmt: skip
    js = client.connection.js
    await set_last_fire(js, "every_minute", "m", T0)
    publish = command_starter(client.connection)
    failures = [nats.errors.TimeoutError()]  # the first start's publish is not answered
    started: list[str] = []

    async def start(workflow: WorkflowDef, value: object, run_id: str) -> object:
        if failures:
            raise failures.pop()
        started.append(run_id)
        return await publish(workflow, value, run_id)

    clock = FakeClock(T0)
    service = TriggerService(js, start, clock=clock)
    await service.reload()
    clock.at_ms = T0 + 60_000  # 00:01:30: the 00:01 fire is due
    await service.tick()
    assert not failures and not started, "the first try failed"
    clock.at_ms = T0 + 61_000  # the next tick
    await service.tick()
    run_id = fire_run_id("every_minute", "m", cron_fire_name(T0 + 30_000))
    assert started == [run_id], "the fire is started at the next tick"
    await service.tick()
    assert started == [run_id], "and once"
    fires = await read_fires(js, "every_minute", "m", 10)
    assert [f.outcome for f in fires] == ["failed", "started"], fires
