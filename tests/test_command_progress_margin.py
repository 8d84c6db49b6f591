"""Review of the command pump (runtime/command_pump `keep_in_progress`): how long a command in
hand may wait for its first progress ack, against a real nats-server.

A command with a standing pull got its first progress ack at the second look after it came
(within two intervals), not the first. With command_ack_wait_ms = 3 *
command_progress_interval_ms, the slack left for the event loop's lag over those two looks
was one interval, where it had been two: a loop held up about 1.5 s at the wrong moment (a
stand-in for lag that adds up over two looks on a loaded 2-core machine) let the ack wait of
a command in hand run out, and the server delivered it again while the engine still worked
on it. The pump now looks twice an interval (the second look after a command came is within
one interval), and this stall costs nothing again.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest
from nats.aio.msg import Msg

from dagnats.runtime import settings
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamTaskQueue
from dagnats.runtime.task_polls import pull_expires_ms
from tests.nats_fixtures import connect, unique, wait_for
from tests.test_command_window import record_schedules, recording_engine
from tests.test_standing_pull import SLOW_S, SlowTasks, _start

WAIT_MS = 20_000
STALL_S = 1.5  # the loop held up: < ack wait - interval (old slack), > ack wait - 2 intervals
LEAD_S = 0.1  # the stall starts this long before the look it delays


async def test_a_stall_of_the_loop_before_the_second_look_does_not_let_a_command_come_again(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    interval_s = settings.command_progress_interval_ms / 1000
    ack_wait_s = settings.command_ack_wait_ms / 1000
    assert ack_wait_s - 2 * interval_s < STALL_S - LEAD_S < ack_wait_s - interval_s
    assert 2 * interval_s + STALL_S < SLOW_S, "the second command is in hand past the stall"
    loop = asyncio.get_running_loop()
    observer = await connect(private_server.url)
    progress_at: list[float] = []  # loop time of each progress ack seen on the wire

    async def record(message: Msg) -> None:
        if message.data == b"+WPI":
            progress_at.append(loop.time())

    await observer.subscribe("$JS.ACK.>", cb=record)
    await observer.flush()
    deliveries: list[tuple[str, int]] = []
    engine, slow = recording_engine(
        connection,
        lambda messages: deliveries.extend((m.subject, m.num_delivered) for m in messages),
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    try:
        send = connection.commands.publish_command
        first = unique("slowb")  # in hand long: its progress acks show when the looks are
        await send(first, _start(first, unique("slow")), first)
        await wait_for(lambda: bool(progress_at), timeout_ms=WAIT_MS, what="a look")
        look = progress_at[-1]
        second = unique("slowm")  # comes just after that look
        await send(second, _start(second, unique("slow")), second)
        await wait_for(
            lambda: progress_at[-1] > look + interval_s / 2, timeout_ms=WAIT_MS,
            what="the next look",
        )  # fmt: skip
        next_look = progress_at[-1]
        await asyncio.sleep(max(0.0, next_look + interval_s - LEAD_S - loop.time()))
        time.sleep(STALL_S)  # the loop held up across the look after next
        await asyncio.wait_for(slow.slow_done.wait(), WAIT_MS / 1000)
        await wait_for(lambda: not engine._unsettled, timeout_ms=WAIT_MS, what="all settled")
    finally:
        stop.set()
        await serving
        await observer.close()
    again = [(subject, count) for subject, count in deliveries if count > 1]
    assert len(deliveries) == 2 and not again, f"delivered again: {deliveries}"


DRAIN_S = 9.0  # a task publish held up past a pull request's life and then the ack wait


class DrainingTasks(SlowTasks):
    """SlowTasks, its slow publishes held up DRAIN_S."""

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        if task_type.startswith("slow"):
            await asyncio.sleep(DRAIN_S)
            self.slow_done.set()
        await self.inner.publish(task_type, payload, msg_id)


async def test_a_command_in_hand_at_stop_is_kept_in_progress_until_it_settled(
    private_server: EmbeddedNats, connection: Connection
) -> None:
    """Engine one stops (its `stop` set, as serve's shutdown does) with a slow command in
    hand (its task publish held up DRAIN_S, past the ack wait and the life of engine one's
    pull requests): its serve waits for it to settle, and meanwhile sends it progress acks,
    so the server does not hand it to engine two while engine one still works on it (two
    engines on one run's command at once)."""
    assert pull_expires_ms + settings.command_ack_wait_ms < DRAIN_S * 1000
    handled: list[tuple[str, int]] = []  # engine two's commands (subject, deliveries)
    slow = DrainingTasks(connection.tasks)
    one = Engine(connection.history, cast(JetStreamTaskQueue, slow), connection.timers,
                 connection.commands)  # fmt: skip
    other = Connection(await connect(private_server.url))
    two = Engine(other.history, other.tasks, other.timers, other.commands)
    record_schedules(
        two, lambda messages: handled.extend((m.subject, m.num_delivered) for m in messages)
    )
    stop_one, stop_two = asyncio.Event(), asyncio.Event()
    serving_one = asyncio.create_task(one.serve(connection.commands, stop_one))
    serving_two: asyncio.Task[None] | None = None
    try:
        run_id = unique("slow")
        await connection.commands.publish_command(run_id, _start(run_id, unique("slow")), run_id)
        await wait_for(lambda: bool(one._unsettled), timeout_ms=WAIT_MS, what="in hand")
        serving_two = asyncio.create_task(two.serve(other.commands, stop_two))
        stop_one.set()  # engine one stops: it settles what it holds first
        await asyncio.wait_for(serving_one, WAIT_MS / 1000)
        assert slow.slow_done.is_set(), "engine one settled its command before it stopped"
    finally:
        stop_one.set()
        stop_two.set()
        await asyncio.gather(serving_one, return_exceptions=True)
        if serving_two is not None:
            await asyncio.gather(serving_two, return_exceptions=True)
        await other.close()
    assert not handled, f"engine two got engine one's command while it was in hand: {handled}"


async def test_commands_given_back_at_a_full_window_again_and_again_are_not_lost(
    private_server: EmbeddedNats, connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone engine whose window (of one, here) stays full past command_progress_interval_ms
    gives back what its pull brought (a nak), and fetches it again once there is room: each
    give-back is one more delivery. Two slow starts come while a third is in hand: both are
    given back; once there is room one is taken (its slow publish fills the window again) and
    the other is given back a second time. With command_deliver_max at 2 (100 in production:
    100 such rounds) the server then never delivers it again and its run never starts: no
    engine died, nothing is dead-lettered, the command just stays in the stream. An engine
    holding a command delivered command_give_back_deliveries_max times (1 here, half the
    deliveries in production) now gives nothing back (runtime/queue `release`): it stays held,
    kept in progress, for the next fetch."""
    monkeypatch.setattr(settings, "command_deliver_max", 2)  # (read when the consumer is made)
    monkeypatch.setattr(settings, "command_give_back_deliveries_max", 1)
    slow = SlowTasks(connection.tasks)
    engine = Engine(connection.history, cast(JetStreamTaskQueue, slow), connection.timers,
                    connection.commands)  # fmt: skip
    engine._unsettled = CommandWindow(size_max=1, room_min=1)
    stop = asyncio.Event()
    serving = asyncio.create_task(engine.serve(connection.commands, stop))
    try:
        send = connection.commands.publish_command
        first = unique("slow")
        await send(first, _start(first, unique("slow")), first)
        await wait_for(lambda: bool(engine._unsettled), timeout_ms=WAIT_MS, what="in hand")
        later = [unique("slow") for _ in range(2)]
        for run_id in later:
            await send(run_id, _start(run_id, unique("slow")), run_id)

        async def both_started() -> bool:
            return all([await connection.history.last_seq(run_id) > 0 for run_id in later])

        await wait_for(both_started, timeout_ms=int(4 * SLOW_S * 1000), what="both started")
    finally:
        stop.set()
        await serving
