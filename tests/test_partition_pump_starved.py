"""A partitioned engine owning more partitions than its buffer holds (`serve --partitions N`,
N up to `partitions_max`; the buffer holds `command_batch_max`) against a real nats-server.

Each pump keeps room in the buffer for its long poll (`PartitionedCommands._reserved`); with
more pumps than room, the pumps that found none sleep and look again, while each polling pump
whose poll ended empty takes its room back at once (no await between): an idle partition's
pump keeps polling, and a pump that found no room never gets any while the others stay idle.
A command sent to such a partition then waits until traffic on the polling ones churns them.
"""

from __future__ import annotations

import asyncio

import nats.js.errors

from dagnats.runtime import settings
from dagnats.runtime.cluster_serve import partitioned_parts
from dagnats.runtime.connection import Connection
from dagnats.runtime.partitions import OwnedMessage, partition_consumer
from dagnats.runtime.resources import COMMAND_PREFIX, COMMANDS_STREAM
from tests.nats_fixtures import unique, wait_for

WAIT_MS = 30_000
FETCHED_WAIT_MS = 10_000  # a pump polling takes a command within its long poll (1 s)
CANDIDATES = 3


async def _not_polled(connection: Connection, count: int) -> list[int]:
    """Partitions whose consumer has no pull request waiting, at two looks 300 ms apart (a
    polling pump's consumer has one but for a moment between its polls)."""
    quiet: set[int] | None = None
    for _ in range(2):
        now: set[int] = set()
        for partition in range(count):
            try:
                info = await connection.js.consumer_info(
                    COMMANDS_STREAM, partition_consumer(partition)
                )
            except nats.js.errors.NotFoundError:
                continue
            if not info.num_waiting:
                now.add(partition)
        quiet = now if quiet is None else quiet & now
        await asyncio.sleep(0.3)
    assert quiet is not None
    return sorted(quiet)


async def test_a_command_of_every_owned_partition_is_fetched_with_more_partitions_than_room(
    connection: Connection,
) -> None:
    """With command_batch_max + 64 partitions owned and idle, a command sent to a partition
    whose pump is not polling (or the last ones, when every pump polls) is fetched."""
    count = settings.command_batch_max + 64
    assert count <= settings.partitions_max
    parts = await partitioned_parts(connection.js, count)
    assert parts is not None
    commands = parts.commands
    stop = asyncio.Event()
    owning = asyncio.create_task(parts.ownership.run(stop))
    taken: list[OwnedMessage] = []
    try:
        await wait_for(lambda: len(parts.ownership.owned()) == count, timeout_ms=WAIT_MS,
                       what="every partition owned")  # fmt: skip
        commands._steer()  # (the pumps, started as the engine's first fetch does)
        await wait_for(lambda: len(commands._subscriptions) == count, timeout_ms=WAIT_MS,
                       what="every pump bound to its consumer")  # fmt: skip
        quiet = await _not_polled(connection, count)
        chosen = (quiet or list(range(count)))[-CANDIDATES:]
        for partition in chosen:
            await connection.js.publish(f"{COMMAND_PREFIX}.{partition}.{unique('r')}", b"{}")

        async def all_fetched() -> bool:
            taken.extend(await commands.fetch_commands(batch=CANDIDATES, timeout_ms=50))
            return {m._partition for m in taken} >= set(chosen)

        what = f"the commands of partitions {chosen} (not polled: {quiet})"
        await wait_for(all_fetched, timeout_ms=FETCHED_WAIT_MS, what=what)
    finally:
        for message in taken:
            await message.ack()
        stop.set()
        await owning
        await commands.close()
