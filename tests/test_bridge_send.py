"""The bridge's SendBatch: the deliveries of results being sent together are heartbeated (one
worker_heartbeat.Heartbeat) while (and only while) a result of theirs is not acknowledged."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dagnats.api.bridge_send import SendBatch
from dagnats.runtime.protocols import TaskMessage
from tests.nats_fixtures import wait_for

HEARTBEAT_MS = 20


class CountingMessage:
    """A delivery that counts its heartbeats (`in_progress`); nothing else is called."""

    def __init__(self) -> None:
        self.beats = 0

    async def in_progress(self) -> None:
        self.beats += 1


@dataclass
class Lease:
    state: str = "settling"
    messages: list[CountingMessage] = field(default_factory=lambda: [CountingMessage()])

    @property
    def deliveries(self) -> list[TaskMessage]:
        return self.messages  # type: ignore[return-value]  # what SendBatch calls of them


async def test_a_long_send_is_heartbeated_until_its_last_result_is_acknowledged() -> None:
    batch = SendBatch()
    fast, slow = Lease(), Lease()
    batch.leases += [fast, slow]
    batch.arm(HEARTBEAT_MS)
    fast.state = "sent"  # acknowledged at once: never heartbeated
    batch.one_done()

    async def slow_beaten_twice() -> bool:
        return slow.messages[0].beats >= 2

    await wait_for(slow_beaten_twice, timeout_ms=20_000, what="two heartbeats of the slow send")
    slow.state = "sent"
    batch.one_done()
    beats = slow.messages[0].beats
    await asyncio.sleep(3 * HEARTBEAT_MS / 1000)  # three intervals: no beat after the last
    assert (fast.messages[0].beats, slow.messages[0].beats) == (0, beats)


async def test_sends_acknowledged_within_an_interval_are_never_heartbeated() -> None:
    batch = SendBatch()
    leases = [Lease() for _ in range(3)]
    batch.leases += leases
    batch.arm(HEARTBEAT_MS)
    assert batch.left == 3
    for lease in leases:
        lease.state = "sent"
        batch.one_done()
    assert batch.left == 0 and batch.heartbeat is not None
    await asyncio.sleep(3 * HEARTBEAT_MS / 1000)  # three intervals: the timer was cancelled
    assert [lease.messages[0].beats for lease in leases] == [0, 0, 0]
