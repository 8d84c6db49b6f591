"""Debounced bursts are durable and take each fire once, through real `dagnats serve`
processes (tests.fault_support) on a NATS server of the test's own.

A subject trigger debounces on the message's customer with a one-hour period and a two-hour
timeout: three messages are taken (acked, recorded as debounced) and the burst is kept in the
trigger-state bucket; serve is killed (SIGKILL) in the middle of the burst. While no serve
runs, the trigger's durable consumer is deleted: every message of the burst is delivered
again at restart, as when the acks die with the process (nats-server writes a consumer's acks
lazily: a SIGKILL of the server a few ms after the acks of three messages lost all three, the
cause of a burst seen pushed back after a restart). Two serves then start on that NATS an hour
and a half "later" (`$DAGNATS_TEST_CLOCK_OFFSET_MS`, the documented test seam, so the downtime
counts): exactly one run starts, named by the burst's first message, with the last message's
input, between the period and the timeout after the first fire; the fires delivered again
make no second burst and push nothing back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from dagnats.client import Client
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.triggers import CLOCK_OFFSET_ENV, INPUT_STREAM, read_fires
from dagnats.runtime.triggers_plan import (
    BURST_PREFIX,
    STATE_BUCKET,
    Burst,
    fire_run_id,
    trigger_key,
)
from tests.fault_support import (
    Processes,
    connected,
    count_events,
    decisions_of,
    events_of,
    workflow,
)
from tests.nats_fixtures import wait_for

HOUR_MS: Final = 3_600_000
WAIT_MS: Final = 30_000
NAP: Final = [{"id": "nap", "type": "sleep", "config": {"duration": "10ms"}}]
NAME: Final = "cart-burst"
DEBOUNCE: Final = {"period": "1h", "timeout": "2h", "key": "data.customer"}
TRIGGER: Final = {"id": "cart", "subject": {"subject": "shop.cart"}, "debounce": DEBOUNCE}
LAST: Final = {"subject": "shop.cart", "data": {"customer": "ann", "n": 3}}
CONSUMER: Final = f"trg_{trigger_key(NAME, 'cart')}"



async def bursts(client: Client) -> list[Burst]:
    js = client.connection.js
    kv = await js.key_value(STATE_BUCKET)
    found: list[Burst] = []
    for name in await kv_keys(js, STATE_BUCKET, BURST_PREFIX):
        entry = await kv.get(name)
        if entry.value:
            found.append(msgspec.json.decode(entry.value, type=Burst))
    return found


async def consumer_took(client: Client, count: int) -> bool:
    """The trigger's consumer exists and has acked its first `count` messages."""
    try:
        info = await client.connection.js.consumer_info(INPUT_STREAM, CONSUMER)
    except Exception:  # not made yet
        return False
    return (info.ack_floor.stream_seq or 0) >= count and not info.num_ack_pending


async def outcomes(client: Client) -> list[str]:
    return [r.outcome for r in await read_fires(client.connection.js, NAME, "cart", 100)]


async def test_a_burst_cut_by_sigkill_starts_one_run_with_its_last_input_after_restart(
    procs: Processes, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    url = private_server.url
    serve = await procs.serve(tmp_path / "a", nats_url=url, http=None)
    async with connected(url, role="admin") as client:
        await client.register_workflow(workflow(NAME, NAP, triggers=[TRIGGER]))
        await wait_for(lambda: consumer_took(client, 0), timeout_ms=WAIT_MS,
                       what="the subject trigger's consumer")  # fmt: skip
        js = client.connection.js
        for n in (1, 2, 3):
            data = msgspec.json.encode({"customer": "ann", "n": n})
            await js.publish("shop.cart", data, headers={"Nats-Msg-Id": f"cart-{n}"})

        async def three_debounced() -> bool:
            return await outcomes(client) == ["debounced"] * 3

        await wait_for(three_debounced, timeout_ms=WAIT_MS, what="three debounced fires")
        await wait_for(lambda: consumer_took(client, 3), timeout_ms=WAIT_MS, what="3 acks")
        (burst,) = await bursts(client)
        assert (burst.fire, burst.fires, burst.released) == (
            "cart-1", ("cart-1", "cart-2", "cart-3"), False)  # fmt: skip
        assert burst.input == LAST
        await serve.process.kill()  # SIGKILL in the middle of the burst (its period is an hour)
        await js.delete_consumer(INPUT_STREAM, CONSUMER)  # its acks lost: all come again
    procs.extra_env[CLOCK_OFFSET_ENV] = str(HOUR_MS + HOUR_MS // 2)
    first = await procs.serve(tmp_path / "a", nats_url=url, http=None)
    second = await procs.serve(tmp_path / "b", nats_url=url, http=None)
    run_id = fire_run_id(NAME, "cart", "cart-1")
    async with connected(url, role="admin") as client:
        final = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
        assert final.status == "completed", final.status
        assert msgspec.json.decode(bytes(final.input)) == {"trigger": "cart", **LAST}
        events = events_of(await decisions_of(client, run_id))
        assert count_events(events, "run.started") == {"": 1}
        await wait_for(lambda: consumer_took(client, 3), timeout_ms=WAIT_MS,
                       what="the burst's three messages taken again")  # fmt: skip
        (after,) = await bursts(client)  # no second burst from the fires delivered again
        assert (after.fire, after.input, after.last_ms) == ("cart-1", LAST, burst.last_ms)
        assert after.started_ms > 0, after
        started = [r for r in await read_fires(client.connection.js, NAME, "cart", 100)
                   if r.outcome == "started"]  # fmt: skip
        assert [(r.fire, r.run_id) for r in started] == [("cart-1", run_id)]
        waited = started[0].at_ms - burst.first_ms  # downtime included
        assert HOUR_MS <= waited <= 2 * HOUR_MS, waited
        runs = {run.run_id for run in await client.list_runs(limit=1_000)}
        assert {run for run in runs if run.startswith("trg-")} == {run_id}
    for process in (first, second):
        assert process.process.alive(), process.process.tail()
