"""A partitioned engine's buffered commands (dagnats/runtime/partitions.py
`PartitionedCommands`) against a real nats-server: the partitions' pumps pull commands into a
buffer the engine's fetches take from. A command that waits there while the engine's window
is full (its commands in hand slow) must be kept in progress like a command in hand (the
engine's `keep_in_progress` acks what the queue's `held` shows), else its consumer's ack wait
(`command_ack_wait_ms`) ends and it is delivered again while a copy sits in the buffer.
"""

from __future__ import annotations

import asyncio
from typing import cast

from nats.aio.msg import Msg

from dagnats.runtime import settings
from dagnats.runtime.cluster_serve import PartitionedSource, partitioned_parts
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.queue import JetStreamTaskQueue
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_command_window import record_schedules
from tests.test_standing_pull import SLOW_S, SlowTasks, _start

WAIT_MS = 15_000


async def test_a_command_buffered_past_its_ack_wait_is_kept_in_progress_not_delivered_again(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    """A slow start fills a window of one; a fast start sent next waits in the buffer longer
    than the ack wait; it is delivered once, and progress-acked while it waits."""
    assert settings.command_ack_wait_ms < SLOW_S * 1000
    parts = await partitioned_parts(connection.js, settings.partitions_default)
    assert parts is not None
    observer = await connect(private_server.url)
    progress: list[str] = []

    async def record(message: Msg) -> None:
        if message.data == b"+WPI":
            progress.append(message.subject)

    await observer.subscribe("$JS.ACK.>", cb=record)
    await observer.flush()
    slow = SlowTasks(connection.tasks)
    engine = Engine(parts.history, cast(JetStreamTaskQueue, slow), connection.timers,
                    connection.commands)  # fmt: skip
    engine._unsettled = CommandWindow(size_max=1, room_min=1)
    deliveries: dict[str, list[int]] = {}

    def scheduled(messages: list[CommandMessage]) -> None:
        for message in messages:
            deliveries.setdefault(message.subject, []).append(message.num_delivered)

    record_schedules(engine, scheduled)
    stop = asyncio.Event()
    owning = asyncio.create_task(parts.ownership.run(stop))
    source = PartitionedSource(parts.commands, connection.commands)
    serving: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: len(parts.ownership.owned()) == settings.partitions_default,
                       timeout_ms=WAIT_MS, what="every partition owned")  # fmt: skip
        serving = asyncio.create_task(engine.serve(source, stop))
        held_up, fast = unique("slow"), unique("fast")
        await connection.commands.publish_command(held_up, _start(held_up, unique("slow")),
                                                  held_up)  # fmt: skip
        await wait_for(lambda: len(engine._unsettled) == 1, timeout_ms=WAIT_MS, what="in hand")
        await connection.commands.publish_command(fast, _start(fast, "work"), fast)
        await asyncio.wait_for(slow.slow_done.wait(), WAIT_MS / 1000)
        await wait_for(lambda: len(deliveries) == 2 and not engine._unsettled,
                       timeout_ms=WAIT_MS, what="both settled")  # fmt: skip
        assert await connection.history.last_seq(fast) > 0
    finally:
        stop.set()
        if serving is not None:
            await serving
        await owning
        await parts.commands.close()
        await observer.close()
    [fast_subject] = [subject for subject in deliveries if fast in subject]
    assert deliveries[fast_subject] == [1], f"the buffered command came again: {deliveries}"
    assert progress, "no progress ack for a command buffered past the ack wait"
    assert engine.counters.get("ignored", 0) == 0, engine.counters


async def test_a_partition_given_up_hands_back_its_buffered_commands_at_once(
    connection: Connection,
) -> None:
    """A command buffered for a partition this engine then gives up (lost, or released to a
    new engine) is naked by its pump as it ends, not held until a fetch takes it (a full
    window holds fetches off): the partition's hand empties, and a release can finish."""
    parts = await partitioned_parts(connection.js, settings.partitions_default)
    assert parts is not None
    stop = asyncio.Event()
    owning = asyncio.create_task(parts.ownership.run(stop))
    try:
        await wait_for(lambda: len(parts.ownership.owned()) == settings.partitions_default,
                       timeout_ms=WAIT_MS, what="every partition owned")  # fmt: skip
        parts.commands._steer()  # (the pumps, started as the engine's first fetch does)
        run_id = unique("given")
        await connection.commands.publish_command(run_id, _start(run_id, "work"), run_id)
        await wait_for(lambda: len(parts.commands.held()) == 1, timeout_ms=WAIT_MS,
                       what="the command buffered")  # fmt: skip
        [message] = parts.commands.held()
        partition = message._partition
        parts.ownership._lose(partition, "given up by the test")
        await wait_for(lambda: not parts.commands.held(), timeout_ms=WAIT_MS,
                       what="the command handed back")  # fmt: skip
        assert parts.ownership.in_hand[partition] == 0
        assert all(m._partition != partition for m in parts.commands.held())
    finally:
        stop.set()
        await owning
        await parts.commands.close()
