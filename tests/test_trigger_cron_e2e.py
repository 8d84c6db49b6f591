"""Cron triggers end to end through real `dagnats serve` processes (tests.fault_support).

No test waits a real minute: serve's trigger service reads `$DAGNATS_TEST_CLOCK_OFFSET_MS`
(a documented test seam, dagnats/runtime/triggers.py), so a restarted serve stands hours
later, with the fires of the hours it "was down" due. An hourly schedule keeps the fires
expected exact: virtual time stands at half past an hour, far from the next fire.

- A fire due while serve was down (SIGKILL) runs once after the restart, as `backfill` says
  (the older missed one is skipped); a crash before the trigger's state is advanced (the state
  put back, serve killed and started again) starts no run twice.
- Two serve processes on one NATS (`--nats-url`), both running the trigger service: one run
  per fire, also when the fires are seen again (the state put back twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import nats.js.errors
import pytest

from dagnats.client import Client
from dagnats.runtime.clock import now_ms
from dagnats.runtime.triggers import CLOCK_OFFSET_ENV, read_fires, service_clock
from dagnats.runtime.triggers_plan import STATE_BUCKET, cron_fire_name, fire_run_id, trigger_key
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



def hourly(name: str, backfill: int) -> bytes:
    trigger = {"id": "hourly", "cron": {"expression": "0 * * * *", "backfill": backfill}}
    return workflow(name, NAP, triggers=[trigger])


def half_past(at_ms: int, hours_later: int) -> int:
    """Half past the hour `hours_later` hours after the one of `at_ms`."""
    return (at_ms // HOUR_MS + hours_later) * HOUR_MS + HOUR_MS // 2


async def trigger_state(client: Client, name: str) -> int | None:
    try:
        kv = await client.connection.js.key_value(STATE_BUCKET)
        found = await kv.get(trigger_key(name, "hourly"))
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None  # not made yet
    return int(found.value or b"0")


async def wait_state(client: Client, name: str, what: str, at_least: int = 0) -> int:
    seen: list[int] = []

    async def reached() -> bool:
        value = await trigger_state(client, name)
        if value is not None and value >= at_least:
            seen.append(value)
            return True
        return False

    await wait_for(reached, timeout_ms=WAIT_MS, what=what)
    return seen[-1]


async def put_state(client: Client, name: str, at_ms: int) -> None:
    kv = await client.connection.js.key_value(STATE_BUCKET)
    await kv.put(trigger_key(name, "hourly"), str(at_ms).encode())


async def started_fires(client: Client, name: str, count: int) -> list[str]:
    """The fires recorded as started, once `count` of them are (bounded wait)."""
    found: list[str] = []

    async def enough() -> bool:
        records = await read_fires(client.connection.js, name, "hourly", 100)
        found[:] = [r.fire for r in records if r.outcome == "started"]
        return len(found) >= count

    await wait_for(enough, timeout_ms=WAIT_MS, what=f"{count} started fires of {name}")
    return found


async def assert_one_run_each(client: Client, name: str, fires: list[int]) -> None:
    """Each fire's run completed with one run.started, and no other trigger run exists."""
    expected = {fire_run_id(name, "hourly", cron_fire_name(fire)) for fire in fires}
    for run_id in sorted(expected):
        final = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
        assert final.status == "completed", (run_id, final.status)
        events = events_of(await decisions_of(client, run_id))
        assert count_events(events, "run.started") == {"": 1}, run_id
    runs = {run.run_id for run in await client.list_runs(limit=1_000)}
    assert {run for run in runs if run.startswith("trg-")} == expected


async def test_a_fire_due_while_serve_was_down_runs_once_after_restart(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir, name = tmp_path / "data", "cron-down"
    serve = await procs.serve(data_dir, http=None)
    async with connected(serve.url, role="admin") as client:
        await client.register_workflow(hourly(name, backfill=2))
        first_seen = await wait_state(client, name, "the trigger first seen by serve")
    await serve.process.kill()  # down: three hourly fires come due "meanwhile"
    now_virtual = half_past(first_seen, 3)
    procs.extra_env[CLOCK_OFFSET_ENV] = str(now_virtual - now_ms())
    serve = await procs.serve(data_dir, port=serve.port, http=None)
    top = (now_virtual // HOUR_MS) * HOUR_MS
    due = [top - HOUR_MS, top]  # backfill 2: the newest two of the three missed
    async with connected(serve.url, role="admin") as client:
        fired = await started_fires(client, name, 2)
        assert sorted(fired) == [cron_fire_name(fire) for fire in due]
        await wait_state(client, name, "the state advanced", at_least=top)
        await assert_one_run_each(client, name, due)
        # A crash after the starts and before the state's update: the same fires come again.
        await put_state(client, name, first_seen)
    await serve.process.kill()
    serve = await procs.serve(data_dir, port=serve.port, http=None)
    async with connected(serve.url, role="admin") as client:
        await wait_state(client, name, "the state advanced again", at_least=top)
        await assert_one_run_each(client, name, due)
        records = await read_fires(client.connection.js, name, "hourly", 100)
        assert sorted(r.fire for r in records if r.outcome == "started") == sorted(
            cron_fire_name(fire) for fire in due
        )


async def test_two_serves_on_one_nats_start_one_run_per_cron_fire(
    procs: Processes, tmp_path: Path
) -> None:
    name = "cron-two"
    now_virtual = half_past(now_ms(), 0)
    procs.extra_env[CLOCK_OFFSET_ENV] = str(now_virtual - now_ms())
    first = await procs.serve(tmp_path / "a", http=None)
    second = await procs.serve(tmp_path / "b", nats_url=first.url, http=None)
    top = (now_virtual // HOUR_MS) * HOUR_MS
    due = [top - 3 * HOUR_MS, top - 2 * HOUR_MS, top - HOUR_MS, top]
    async with connected(first.url, role="admin") as client:
        await client.register_workflow(hourly(name, backfill=5))
        await wait_state(client, name, "the trigger first seen by a serve")
        for _ in range(3):  # down four hours, then the same fires seen again twice
            await put_state(client, name, half_past(top, -4))
            await wait_state(client, name, "the state advanced", at_least=top)
        await started_fires(client, name, len(due))
        await assert_one_run_each(client, name, due)
    for serve in (first, second):
        assert serve.process.alive(), serve.process.tail()
        assert "cron tick failed" not in serve.process.stderr(), serve.process.tail()


def test_the_clock_seam_is_off_unless_set_and_names_a_bad_value() -> None:
    assert service_clock({}) is now_ms
    moved = service_clock({CLOCK_OFFSET_ENV: str(HOUR_MS)})
    assert moved() - now_ms() >= HOUR_MS - 1_000
    with pytest.raises(ValueError, match=f"{CLOCK_OFFSET_ENV} 'soon' must be an integer"):
        service_clock({CLOCK_OFFSET_ENV: "soon"})
