"""Durable timers as JetStream message schedules (nats-server 2.12+, ARCHITECTURE §9).

`arm` publishes the timer's payload (an encoded FireTimer command) on
`dagnats.sched.<run_id>.<timer_id>` in DAGNATS_COMMANDS (a stream with allow_msg_schedules)
with the headers `Nats-Schedule: @at <RFC 3339 UTC, ms>` and `Nats-Schedule-Target: <the run's
engine command subject>`; at the due time the server publishes the payload to the target, where the
engine's consumer picks it up as a command. `cancel` purges the schedule's subject.

Behaviour verified on nats-server 2.15.1 (tests/test_runtime_timers.py):
- a schedule subject holds one schedule: publishing again on it replaces the armed one, so
  re-arming fires once, at the new time (later or earlier); no purge is needed first, and
  no Nats-Msg-Id is set (it would drop a re-arm within the duplicate window);
- a due time in the past fires at once (within the scheduler's tick, well under a second);
- the fired message carries `Nats-Scheduler: <schedule subject>` and the schedule message is
  removed once it fired (`Nats-Schedule-Next: purge`);
- purging the subject cancels; cancelling an unknown or fired timer is a no-op;
- schedules survive a server restart (they are stream messages, file storage).

This module may publish and purge on the schedule subjects only.
"""

from __future__ import annotations

import datetime
from typing import Final

from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.partition_count import PartitionCount
from dagnats.runtime.resources import COMMANDS_STREAM, command_subject, schedule_subject
from kernel.errors import PayloadTooLargeError

SCHEDULE_HEADER: Final = "Nats-Schedule"
SCHEDULE_TARGET_HEADER: Final = "Nats-Schedule-Target"
SCHEDULER_HEADER: Final = "Nats-Scheduler"


def rfc3339_ms(at_ms: int) -> str:
    """`2026-01-02T03:04:05.678Z` for milliseconds since the epoch (UTC, ms precision)."""
    assert at_ms >= 0, at_ms
    seconds, millis = divmod(at_ms, 1000)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


class JetStreamTimers:
    """`protocols.Timers` over message schedules in DAGNATS_COMMANDS."""

    def __init__(
        self, js: JetStreamContext, *, partitions: PartitionCount | int | None = None
    ) -> None:
        self.js = js
        # The deployment's stored count (runtime/partition_count), or a fixed one.
        self.partitions = (
            partitions if isinstance(partitions, PartitionCount) else PartitionCount(js, partitions)
        )

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        """Arm (or re-arm: it replaces) the run's timer; at fire_at_ms the payload arrives
        on the run's command subject. A past due time fires at once.

        Raises:
            SubjectTokenError: run_id or timer_id is not a safe subject token.
            PayloadTooLargeError: payload over settings.history_message_bytes_max.
        """
        assert fire_at_ms >= 0, fire_at_ms
        if len(payload) > settings.history_message_bytes_max:
            raise PayloadTooLargeError(
                "timer payload", len(payload), settings.history_message_bytes_max
            )
        headers = {
            SCHEDULE_HEADER: f"@at {rfc3339_ms(fire_at_ms)}",
            SCHEDULE_TARGET_HEADER: command_subject(run_id, await self.partitions.get(), "engine"),
        }
        subject = schedule_subject(run_id, timer_id)
        await self.js.publish(subject, payload, stream=COMMANDS_STREAM, headers=headers)

    async def cancel(self, run_id: str, timer_id: str) -> None:
        """Disarm the timer (purge its schedule subject); a no-op if none is armed."""
        await self.js.purge_stream(COMMANDS_STREAM, subject=schedule_subject(run_id, timer_id))
