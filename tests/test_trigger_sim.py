"""The simulator's trigger scenarios (dagnats/sim/triggers_sim.py): the real trigger service's
cron ticks and debounce in virtual time, with crashes and restarts, checked by an oracle
written apart from the planner."""

from __future__ import annotations

import pytest

from dagnats.runtime import settings
from dagnats.runtime.triggers_plan import cron_fire_name, fire_run_id
from dagnats.sim.triggers_sim import (
    PERIOD_MS,
    T0,
    WORKFLOW,
    MemoryState,
    StartLog,
    cron_violations,
    simulate_cron,
    simulate_debounce,
)

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
