"""The in-memory protocols honour the semantics `dagnats.runtime.protocols` writes down (the
ones tests/test_runtime_log.py and test_runtime_queue.py check on a real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from dagnats.sim.loop import SimLoop
from dagnats.sim.memory import LogPort, MemoryEventLog, VirtualTime
from dagnats.sim.memory_queue import (
    CommandPort,
    DeadLetter,
    MemoryTimers,
    TaskPort,
    TimerPort,
    new_command_queue,
    new_task_queue,
)
from dagnats.sim.settings import (
    history_duplicate_window_ms,
    task_ack_wait_ms,
    task_deliver_max,
    task_duplicate_window_ms,
)
from kernel.errors import AppendConflictError

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = SimLoop()  # type: ignore[abstract]
    try:
        return loop.run_until_complete(coroutine)  # type: ignore[no-any-return]
    finally:
        loop.close()


async def read_all(log: LogPort, run_id: str, after_seq: int = 0) -> list[tuple[int, bytes]]:
    return [item async for item in log.read(run_id, after_seq=after_seq)]


def test_append_checks_the_expected_sequence_and_deduplicates() -> None:
    time = VirtualTime()
    log = LogPort(MemoryEventLog(time))

    async def scenario() -> None:
        assert await log.append("r1", b"a", msg_id="m1", expected_last_seq=0) == 1
        assert await log.append("r2", b"x", msg_id="m2", expected_last_seq=0) == 2
        assert await log.append("r1", b"b", msg_id="m3", expected_last_seq=1) == 3
        with pytest.raises(AppendConflictError):
            await log.append("r1", b"c", msg_id="m4", expected_last_seq=1)
        # The earlier append landing (its ack lost): same msg id, stale expectation.
        assert await log.append("r1", b"b", msg_id="m3", expected_last_seq=1) == 3
        assert await read_all(log, "r1") == [(1, b"a"), (3, b"b")]
        assert await read_all(log, "r1", after_seq=1) == [(3, b"b")]
        assert await read_all(log, "nope") == []
        assert await log.last_seq("r1") == 3 and await log.last_seq("nope") == 0
        assert await log.list_runs(10) == ["r1", "r2"]
        assert [seq async for seq, _, _ in log.tail(1)] == [2, 3]

    run(scenario())


def test_a_msg_id_is_deduplicated_only_within_the_window() -> None:
    time = VirtualTime()
    log = LogPort(MemoryEventLog(time))

    async def scenario() -> None:
        assert await log.append("r1", b"a", msg_id="m1", expected_last_seq=0) == 1
        assert await log.append("r2", b"a", msg_id="m1", expected_last_seq=0) == 1  # dup
        time.advance_to(time.now_ms + history_duplicate_window_ms)
        assert await log.append("r2", b"a", msg_id="m1", expected_last_seq=0) == 2

    run(scenario())


def test_a_task_is_redelivered_after_its_ack_wait_and_dropped_after_its_bound() -> None:
    time = VirtualTime()
    queue = new_task_queue(time)
    port = TaskPort(queue, holder="w1")

    async def scenario() -> None:
        await port.publish("t", b"task", "id-1")
        await port.publish("t", b"task", "id-1")  # deduplicated
        assert queue.stats.deduplicated == 1
        time.advance_to(time.now_ms + 10)
        (message,) = await port.fetch("t", batch=5, timeout_ms=1)
        assert message.num_delivered == 1 and message.data == b"task"
        assert await port.fetch("t", batch=5, timeout_ms=1) == []  # held
        time.advance_to(time.now_ms + task_ack_wait_ms)
        assert queue.expire() == [message.entry]
        (again,) = await port.fetch("t", batch=5, timeout_ms=1)
        assert again.num_delivered == 2
        await message.ack()  # a stale delivery settles nothing
        assert queue.pending() == 1
        await again.nak(500)
        assert await port.fetch("t", batch=5, timeout_ms=1) == []
        time.advance_to(time.now_ms + 500)
        (third,) = await port.fetch("t", batch=5, timeout_ms=1)
        await third.ack()
        assert queue.pending() == 0
        time.advance_to(time.now_ms + task_duplicate_window_ms)
        await port.publish("t", b"task", "id-1")  # the window passed: accepted again
        for _ in range(task_deliver_max):
            time.advance_to(time.now_ms + task_ack_wait_ms)
            queue.expire()
            for delivered in await port.fetch("t", batch=1, timeout_ms=1):
                assert delivered.num_delivered <= task_deliver_max
        time.advance_to(time.now_ms + task_ack_wait_ms)
        queue.expire()
        assert queue.pending() == 0 and queue.stats.dropped == 1

    run(scenario())


def test_timers_replace_cancel_and_fire_into_the_command_queue() -> None:
    time = VirtualTime()
    commands = new_command_queue(time)
    timers = MemoryTimers(time, commands)
    port = TimerPort(timers)
    dead: list[DeadLetter] = []
    engine = CommandPort(commands, dead, holder="engine")

    async def scenario() -> None:
        await port.arm("r1", "t1", time.now_ms + 1_000, b"first")
        await port.arm("r1", "t1", time.now_ms + 2_000, b"second")  # replaces
        await port.arm("r1", "t2", time.now_ms + 500, b"gone")
        await port.cancel("r1", "t2")
        await port.cancel("r1", "unknown")
        assert timers.next_due_ms() == time.now_ms + 2_000
        time.advance_to(time.now_ms + 1_999)
        assert timers.due() == []
        time.advance_to(time.now_ms + 1)
        (timer,) = timers.due()
        timers.fire(timer)
        (message,) = await engine.fetch_commands(batch=10, timeout_ms=1)
        assert message.data == b"second" and message.subject.endswith(".r1")
        assert timers.armed == {}
        await engine.publish_dead("command", b"junk", "not a command")
        assert dead[0].reason == "not a command"

    run(scenario())


def test_the_loop_runs_gather_and_sleeps_in_virtual_time() -> None:
    async def child(value: int) -> int:
        await asyncio.sleep(10)
        return value

    async def scenario() -> list[int]:
        return list(await asyncio.gather(child(1), child(2)))

    assert run(scenario()) == [1, 2]
