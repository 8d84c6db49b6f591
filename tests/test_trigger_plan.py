"""Cron fires and debounce in virtual time (dagnats/runtime/triggers_plan.py): the planning
the trigger service does, driven by a clock that is only a number."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from dagnats.runtime import settings as shell
from dagnats.runtime.triggers_plan import (
    Burst,
    burst_due,
    burst_name,
    cron_fire_name,
    debounce_key,
    fires_between,
    fires_to_run,
    new_burst,
    next_fire,
    offered,
    seen,
)
from kernel.timestamps import parse_rfc3339_ms
from kernel.workflow.trigger_model import CronSource, Debounce

T0 = parse_rfc3339_ms("2031-03-01T00:00:00Z") or 0
MINUTE = 60_000


def test_a_zone_reads_the_expression_as_wall_time() -> None:
    paris = CronSource(expression="0 9 * * *", timezone="Europe/Paris")
    fire = next_fire(paris, T0)
    assert fire is not None and cron_fire_name(fire) == "2031-03-01T08:00:00.000Z"  # UTC+1
    summer = next_fire(paris, parse_rfc3339_ms("2031-07-01T00:00:00Z") or 0)
    assert summer is not None and cron_fire_name(summer) == "2031-07-01T07:00:00.000Z"  # UTC+2


def test_missed_fires_follow_the_backfill() -> None:
    hourly = CronSource(expression="0 * * * *", backfill=2)
    run, skipped = fires_to_run(hourly, T0, T0 + 5 * 60 * MINUTE + 10 * MINUTE)
    assert [cron_fire_name(f)[11:16] for f in run] == ["04:00", "05:00"] and skipped == 3
    on_time, none_skipped = fires_to_run(hourly, T0, T0 + 60 * MINUTE + 5_000)
    assert [cron_fire_name(f)[11:16] for f in on_time] == ["01:00"] and none_skipped == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10), st.integers(0, 12))
def test_the_newest_backfill_missed_fires_run_however_many_were_missed(
    backfill: int, hours_down: int
) -> None:
    """Found by the two-serves end-to-end test: a backfill over the number missed kept only
    one (a negative slice start)."""
    hourly = CronSource(expression="0 * * * *", backfill=backfill)
    run, skipped = fires_to_run(
        hourly, T0 + 30 * MINUTE, T0 + hours_down * 60 * MINUTE + 30 * MINUTE
    )
    assert len(run) == min(backfill, hours_down) and skipped == hours_down - len(run)
    assert run == fires_between(hourly, T0, T0 + hours_down * 60 * MINUTE)[hours_down - len(run) :]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40 * MINUTE), min_size=1, max_size=30))
def test_ticking_in_any_steps_fires_each_minute_once(steps: list[int]) -> None:
    """However virtual time advances, each fire time is run exactly once while the gaps stay
    under the lateness bound, and never twice when they do not."""
    every = CronSource(expression="* * * * *", backfill=shell.cron_fires_scan_max)
    last, now, seen = T0, T0, []
    for step in steps:
        now += step
        run, _ = fires_to_run(every, last, now)
        seen.extend(run)
        last = run[-1] if run else last
    assert len(seen) == len(set(seen))
    assert seen == fires_between(every, T0, now)


def offer(burst: Burst | None, key: str, fire: str, value: object, at_ms: int) -> Burst:
    after = offered(burst, new_burst("t", key, fire, value, at_ms))
    assert after is not None, f"fire {fire} was taken as seen"
    return after


def test_a_burst_keeps_its_first_fire_and_takes_the_last_input() -> None:
    rule = Debounce(period_ms=5_000, timeout_ms=20_000, key="user")
    burst = None
    for second in range(0, 4):
        value = {"user": "ann", "n": second}
        key = debounce_key(rule, value)
        burst = offer(burst, key, f"m{second}", value, T0 + second * 1000)
    assert burst is not None and burst.key == '"ann"' and burst.fire == "m0"
    assert (burst.first_ms, burst.last_ms, burst.input) == (T0, T0 + 3000, {"user": "ann", "n": 3})
    assert not burst_due(rule, burst, T0 + 7_999) and burst_due(rule, burst, T0 + 8_000)
    again = offer(replace(burst, released=True), '"ann"', "m9", {"n": 9}, T0 + 9_000)
    assert (again.fire, again.first_ms, again.input) == ("m9", T0 + 9_000, {"n": 9})
    assert burst_name("t", '"ann"') != burst_name("t", '"bob"')


def test_every_fire_offered_again_is_no_news_to_its_burst_started_or_not() -> None:
    """nats-server may lose acks of a whole burst in a crash: each of its fires comes again,
    the first, a middle one, the last, also after the burst's run started."""
    burst = None
    for second in range(0, 5):
        burst = offer(burst, "", f"m{second}", second, T0 + second * 1000)
    assert burst is not None
    for fire in ("m0", "m2", "m4"):
        assert offered(burst, new_burst("t", "", fire, -1, T0 + 99_000)) is None
    started = replace(burst, released=True, started_ms=T0 + 9_000)
    assert offered(started, new_burst("t", "", "m3", -1, T0 + 99_000)) is None
    after = offer(started, "", "m7", 7, T0 + 99_000)  # a new fire: a new burst
    assert (after.fire, after.input, after.started_ms, after.released) == ("m7", 7, 0, False)
    assert seen(after, "m2") and not seen(after, "m8")


@given(st.integers(1, 3 * shell.debounce_fires_remembered_max))
def test_a_burst_remembers_its_newest_fires_within_the_bound(count: int) -> None:
    burst = None
    for number in range(count):
        burst = offer(burst, "", f"m{number}", number, T0 + number)
    assert burst is not None
    assert len(burst.fires) == min(count, shell.debounce_fires_remembered_max)
    assert burst.fires[-1] == f"m{count - 1}" and seen(burst, "m0")  # the first: its run id


def test_a_burst_that_never_goes_quiet_is_released_at_its_timeout() -> None:
    rule = Debounce(period_ms=5_000, timeout_ms=20_000)
    burst = None
    released: list[object] = []
    for second in range(0, 60):
        now = T0 + second * 1000
        burst = offer(burst, "", f"m{second}", second, now)
        if burst_due(rule, burst, now):
            released.append(burst.input)
            burst = None
    assert released == [20, 41]  # 20 s after each burst's first fire, with the last input
