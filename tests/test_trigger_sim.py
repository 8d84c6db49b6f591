"""The simulator's trigger scenarios (dagnats/sim/triggers_sim.py): the real trigger service's
cron ticks and debounce in virtual time, with crashes and restarts, checked by an oracle
written apart from the planner."""

from __future__ import annotations

import asyncio

import pytest

from dagnats.runtime import settings
from dagnats.runtime.triggers_plan import cron_fire_name, fire_run_id
from dagnats.sim.triggers_sim import (
    PERIOD_MS,
    T0,
    WORKFLOW,
    MemoryState,
    StartLog,
    burst_violations,
    cron_violations,
    simulate_cron,
    simulate_debounce,
)
from kernel.workflow.trigger_model import Debounce

SEEDS = range(40)


@pytest.mark.parametrize("backfill", [0, 2, 5])
def test_cron_fires_run_once_and_per_backfill_with_crashing_racing_engines(backfill: int) -> None:
    crashes = runs = 0
    for seed in SEEDS:
        report = simulate_cron(seed, engines=3, backfill=backfill)
        assert not report.violations, (seed, report.violations[:5])
        crashes += report.crashes
        runs += len(report.runs)
    assert crashes > 20 and runs > 100  # the seeds did crash engines and run fires


def test_a_seed_replays_exactly() -> None:
    first, again = simulate_cron(7), simulate_cron(7)
    assert first.runs == again.runs and first.crashes == again.crashes


def test_debounced_bursts_start_one_run_with_the_last_input_within_timeout() -> None:
    runs = 0
    for seed in SEEDS:
        report = simulate_debounce(seed)
        assert not report.violations, (seed, report.violations[:5])
        runs += len(report.runs)
    assert runs > 200


def test_bursts_survive_crashes_inside_a_tick_one_run_each_with_the_last_input() -> None:
    runs = crashes = 0
    for seed in SEEDS:
        report = simulate_debounce(seed, tick_crash_rate=0.1)
        assert not report.violations, (seed, report.violations[:5])
        runs += len(report.runs)
        crashes += report.crashes
    assert runs > 200 and crashes > 100  # the seeds did crash mid-release


def test_the_burst_oracle_names_a_lost_burst_a_wrong_input_and_an_early_start() -> None:
    rule = Debounce(period_ms=5_000, timeout_ms=20_000, key="user")
    starts = StartLog(None, MemoryState())
    fires = [("fire", T0 + at, f"m{at}", "ann", {"user": "ann", "n": at})
             for at in (0, 1, 9000)]  # fmt: skip
    fires.append(("fire", T0, "b0", "bob", {"user": "bob", "n": 0}))
    starts.clock.now = T0 + 3_000  # before ann's burst (last fire T0+1) was quiet
    first = fire_run_id(WORKFLOW, "burst", "m0")
    asyncio.run(starts(None, {"user": "ann", "n": 0}, first))  # type: ignore[arg-type]
    found = burst_violations(fires, starts, rule)  # type: ignore[arg-type]
    assert any("not {'user': 'ann', 'n': 9000}" in line for line in found), found  # its last
    assert any("before it was due" in line for line in found), found
    assert any("['b0'] of key bob started no run" in line for line in found), found


def run_of(fire: int) -> str:
    return fire_run_id(WORKFLOW, "cron", cron_fire_name(fire))


async def test_the_oracle_names_a_fire_started_twice_and_a_missed_backfill() -> None:
    state = MemoryState()
    starts = StartLog(None, state)
    now = T0 + 10 * PERIOD_MS + PERIOD_MS // 2  # 10 fires missed, none on time
    state.now = now
    state.reads.append((T0, now))
    state.updates.append((T0, now, now))
    await starts(None, {}, run_of(T0 + 10 * PERIOD_MS))  # type: ignore[arg-type]
    starts.accepted[run_of(T0 + 10 * PERIOD_MS)] += 1  # as if the dedup failed
    await starts(None, {}, run_of(T0 + 3 * PERIOD_MS))  # type: ignore[arg-type]
    found = cron_violations(state, starts, backfill=2)
    assert any("started 2 times" in line for line in found), found
    assert any(cron_fire_name(T0 + 9 * PERIOD_MS) in line and "never ran" in line
               for line in found), found  # fmt: skip
    assert any("no tick was allowed" in line for line in found), found
    assert settings.cron_late_ms < PERIOD_MS  # (the schedule keeps on-time and missed apart)
