"""Durable timers as JetStream message schedules, against a real nats-server.

Fired timers are observed without a consumer: a fire is a message on the run's command
subject, counted through the stream's per-subject state, so these tests share the session
server with the engine's work-queue consumer of other tests without interfering.
"""

from __future__ import annotations

import time

import pytest
from nats.js import JetStreamContext

from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    SubjectTokenError,
    command_subject,
    ensure_resources,
    schedule_subject,
)
from dagnats.runtime.timers import SCHEDULER_HEADER, JetStreamTimers, rfc3339_ms
from tests.nats_fixtures import connect, unique, wait_for

# Fire times observed within about 100 ms of due (ARCHITECTURE §9); allow generous slack.
FIRE_SLACK_MS = 1_500


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def fired_count(js: JetStreamContext, run_id: str) -> int:
    subject = command_subject(run_id, kind="engine")
    info = await js.stream_info(COMMANDS_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def armed_count(js: JetStreamContext, run_id: str, timer_id: str) -> int:
    subject = schedule_subject(run_id, timer_id)
    info = await js.stream_info(COMMANDS_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def wait_fired(js: JetStreamContext, run_id: str, count: int, timeout_ms: int) -> int:
    """Wait until `count` fires arrived; return the wall time (ms) it was seen."""

    async def arrived() -> bool:
        return await fired_count(js, run_id) >= count

    await wait_for(arrived, timeout_ms=timeout_ms, what=f"{count} fire(s) of run {run_id}")
    return now_ms()


def test_rfc3339_has_millisecond_precision_in_utc() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_767_323_045_678) == "2026-01-02T03:04:05.678Z"


async def test_a_timer_fires_its_payload_to_the_runs_command_subject(
    js: JetStreamContext,
) -> None:
    timers = JetStreamTimers(js)
    run_id = unique("run")
    due = now_ms() + 300
    await timers.arm(run_id, "sleep.s1", due, b"fire-timer-command")
    assert await armed_count(js, run_id, "sleep.s1") == 1
    assert await fired_count(js, run_id) == 0
    seen = await wait_fired(js, run_id, 1, timeout_ms=300 + FIRE_SLACK_MS)
    assert seen >= due - 5, f"fired {due - seen} ms early"
    fired = await js.get_last_msg(COMMANDS_STREAM, command_subject(run_id, kind="engine"))
    assert fired.data == b"fire-timer-command"
    assert fired.headers is not None
    assert fired.headers[SCHEDULER_HEADER] == schedule_subject(run_id, "sleep.s1")

    async def schedule_removed() -> bool:
        return await armed_count(js, run_id, "sleep.s1") == 0

    await wait_for(schedule_removed, timeout_ms=1_000, what="the fired schedule to go")


async def test_a_past_due_time_fires_at_once(js: JetStreamContext) -> None:
    timers = JetStreamTimers(js)
    run_id = unique("run")
    armed_at = now_ms()
    await timers.arm(run_id, "t", armed_at - 60_000, b"late")
    seen = await wait_fired(js, run_id, 1, timeout_ms=FIRE_SLACK_MS)
    assert seen - armed_at < FIRE_SLACK_MS


async def test_cancel_prevents_the_fire(js: JetStreamContext) -> None:
    timers = JetStreamTimers(js)
    run_id, control = unique("run"), unique("run")
    due = now_ms() + 300
    await timers.arm(run_id, "t", due, b"cancelled")
    await timers.arm(control, "t", due, b"control")
    await timers.cancel(run_id, "t")
    assert await armed_count(js, run_id, "t") == 0
    # The control timer, due at the same moment, proves the wait went past the due time.
    await wait_fired(js, control, 1, timeout_ms=300 + FIRE_SLACK_MS)
    assert now_ms() > due
    assert await fired_count(js, run_id) == 0
    await timers.cancel(run_id, "t")  # cancelling again, or a fired timer, is a no-op
    await timers.cancel(control, "t")


async def test_re_arming_replaces_the_timer_and_fires_once(js: JetStreamContext) -> None:
    timers = JetStreamTimers(js)
    later, earlier = unique("run"), unique("run")
    start = now_ms()
    await timers.arm(later, "t", start + 200, b"first")
    await timers.arm(later, "t", start + 600, b"second")  # moved later
    await timers.arm(earlier, "t", start + 900, b"first")
    await timers.arm(earlier, "t", start + 300, b"second")  # moved earlier
    assert await armed_count(js, later, "t") == 1
    seen_earlier = await wait_fired(js, earlier, 1, timeout_ms=300 + FIRE_SLACK_MS)
    seen_later = await wait_fired(js, later, 1, timeout_ms=600 + FIRE_SLACK_MS)
    assert seen_later >= start + 600 - 5, "the replaced (earlier) schedule fired"
    assert seen_earlier < start + 900, "the re-armed earlier time was not honoured"
    # Wait past both original due times (bounded by a control timer), then count.
    control = unique("run")
    await timers.arm(control, "t", start + 1_000, b"control")
    await wait_fired(js, control, 1, timeout_ms=1_000 + FIRE_SLACK_MS)
    for run_id in (later, earlier):
        assert await fired_count(js, run_id) == 1
        fired = await js.get_last_msg(COMMANDS_STREAM, command_subject(run_id, kind="engine"))
        assert fired.data == b"second"


async def test_invalid_ids_are_refused_before_publishing(js: JetStreamContext) -> None:
    timers = JetStreamTimers(js)
    with pytest.raises(SubjectTokenError, match=r"timer_id 'a\.>'"):
        await timers.arm(unique("run"), "a.>", now_ms(), b"")
    with pytest.raises(SubjectTokenError, match=r"run_id 'r\.1'"):
        await timers.arm("r.1", "t", now_ms(), b"")


async def test_timers_survive_a_server_restart(private_server: EmbeddedNats) -> None:
    client = await connect(private_server.url)
    js = client.jetstream()
    await ensure_resources(js)
    run_id = unique("run")
    due = now_ms() + 1_500
    await JetStreamTimers(js).arm(run_id, "t", due, b"durable")
    await client.close()
    await private_server.stop()
    assert now_ms() < due, "the restart test needs the stop to happen before the due time"
    await private_server.start()
    client = await connect(private_server.url)
    try:
        js = client.jetstream()
        assert await armed_count(js, run_id, "t") in (0, 1)  # 0 once it fired
        seen = await wait_fired(js, run_id, 1, timeout_ms=1_500 + FIRE_SLACK_MS)
        assert seen >= due - 5
    finally:
        await client.close()
