"""The heartbeats of a worker's attempts on one timer (dagnats/worker_heartbeat.py
`Heartbeats`): a live attempt among many that ended is still beaten every interval, an
attempt stopped before its first beat is never beaten and costs no timer, and the queue of
stopped entries stays bounded."""

from __future__ import annotations

import asyncio
import logging

from dagnats.worker_heartbeat import Heartbeats, stopped_kept_max
from tests.nats_fixtures import wait_for

WAIT_MS = 20_000


class Delivery:
    """A task delivery counting its heartbeats."""

    def __init__(self) -> None:
        self.beats = 0

    async def in_progress(self) -> None:
        self.beats += 1


def timers() -> int:
    """Timers on the running loop (not cancelled)."""
    loop = asyncio.get_running_loop()
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled())


async def test_attempts_that_end_before_their_beat_are_never_beaten_and_share_one_timer() -> None:
    beats = Heartbeats(30, logging.getLogger("test"))
    before = timers()
    long = Delivery()
    live = beats.start([long].copy)  # type: ignore[arg-type]
    short = [Delivery() for _ in range(500)]
    for delivery in short:
        beat = beats.start([delivery].copy)  # type: ignore[arg-type]
        await beat.stop()
        assert timers() <= before + 1, "one timer for all the beats"
        assert beats.queued() <= beats.live() + stopped_kept_max + 1, beats.queued()
    await wait_for(lambda: long.beats >= 3, timeout_ms=WAIT_MS, what="the live attempt's beats")
    assert not any(delivery.beats for delivery in short), "a stopped attempt was beaten"
    await live.stop()
    beaten = long.beats
    assert beats.live() == 0
    await wait_for(lambda: beats.queued() == 0, timeout_ms=WAIT_MS, what="the queue emptied")
    assert long.beats == beaten, "a beat after stop"


async def test_many_live_attempts_are_each_beaten_every_interval() -> None:
    beats = Heartbeats(20, logging.getLogger("test"))
    deliveries = [Delivery() for _ in range(50)]
    started = [beats.start([delivery].copy) for delivery in deliveries]  # type: ignore[arg-type]
    await wait_for(lambda: all(delivery.beats >= 2 for delivery in deliveries),
                   timeout_ms=WAIT_MS, what="two beats each")  # fmt: skip
    for beat in started[::2]:
        await beat.stop()
    counts = [delivery.beats for delivery in deliveries]
    await wait_for(lambda: all(delivery.beats >= counts[index] + 2
                               for index, delivery in enumerate(deliveries) if index % 2),
                   timeout_ms=WAIT_MS, what="the live ones beaten on")  # fmt: skip
    assert all(deliveries[index].beats == counts[index] for index in range(0, 50, 2)), (
        "a stopped attempt beaten after its stop"
    )
    for beat in started[1::2]:
        await beat.stop()
    assert beats.live() == 0
