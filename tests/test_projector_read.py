"""The projector's reads by the lean push consumer (`projector_read`): `read_until` gives the
same (seq, run id, payload) as the ordered consumer's tail, from any start, ending at the
given last sequence; `tail` gives the same, then what is appended after it started, and goes
on after its server restarts (nothing missed, nothing twice); a Projector that catches up by
the one, then tails by the other, misses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

from nats.js import JetStreamContext

from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import Projector
from dagnats.runtime.projector_read import read_until
from dagnats.runtime.projector_read import tail as lean_tail
from dagnats.runtime.resources import history_subject
from projections.base import Message
from tests.nats_fixtures import RestartableServer

RUNS = 7
PER_RUN = 30
BOUND_S = 30.0


async def publish(js: JetStreamContext, count: int, tag: str) -> list[int]:
    seqs = []
    for index in range(count):
        run_id = f"{tag}-{index % RUNS}"
        ack = await js.publish(history_subject(run_id), f"{tag}:{index}".encode())
        seqs.append(ack.seq)
    return seqs


async def tail(js: JetStreamContext, after_seq: int, count: int) -> list[tuple[int, str, bytes]]:
    got = []
    reader = JetStreamEventLog(js).tail(after_seq)
    try:
        async for message in reader:
            got.append(message)
            if len(got) == count:
                return got
    finally:
        await reader.aclose()
    return got


async def test_read_until_is_the_tail_of_the_same_messages(private_js: JetStreamContext) -> None:
    seqs = await publish(private_js, RUNS * PER_RUN, "run")
    for after in (0, seqs[0], seqs[len(seqs) // 2], seqs[-2]):
        until = seqs[-1] - 3 if after < seqs[-1] - 3 else seqs[-1]
        read = [m async for m in read_until(private_js, after, until)]
        expected = await asyncio.wait_for(tail(private_js, after, until - after), BOUND_S)
        assert read == expected, (after, until)
        assert [m[0] for m in read] == list(range(after + 1, until + 1))
    assert [m async for m in read_until(private_js, seqs[-1], seqs[-1])] == []


async def take(messages: AsyncGenerator[Message, None], count: int) -> list[Message]:
    """The next `count` messages of a tail (each within BOUND_S)."""
    return [await asyncio.wait_for(anext(messages), BOUND_S) for _ in range(count)]


async def test_tail_gives_what_the_ordered_consumer_gives_then_what_comes(
    private_js: JetStreamContext,
) -> None:
    seqs = await publish(private_js, RUNS * PER_RUN, "tail")
    after = seqs[len(seqs) // 3]
    async with contextlib.aclosing(lean_tail(private_js, after)) as reader:
        held = await take(reader, seqs[-1] - after)
        expected = await asyncio.wait_for(tail(private_js, after, seqs[-1] - after), BOUND_S)
        assert held == expected
        later = await publish(private_js, RUNS, "later")
        live = await take(reader, RUNS)
    assert [m[0] for m in live] == later
    assert [m[1] for m in live] == [f"later-{index}" for index in range(RUNS)]
    assert live[-1][2] == f"later:{RUNS - 1}".encode()


async def test_tail_goes_on_after_its_server_restarts(tmp_path: Path) -> None:
    restartable = RestartableServer(tmp_path / "nats")
    try:
        js = (await restartable.start()).jetstream()
        before = await publish(js, RUNS, "before")
        async with contextlib.aclosing(lean_tail(js, 0)) as reader:
            first = await take(reader, RUNS)
            await restartable.restart()
            after = await publish(js, RUNS, "after")
            second = await take(reader, RUNS)
        assert [m[0] for m in first] == before
        assert [m[0] for m in second] == after, "a message missed or given twice"
    finally:
        await restartable.close()


class Recorder:
    """A projector target that records what it was given."""

    kind = "test"
    name = "recorder"
    version = "1"
    where = "memory"

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, bytes]] = []

    async def open(self) -> int:
        return 0

    async def apply(
        self, messages: list[tuple[int, str, bytes]], after_seq: int
    ) -> tuple[int, int]:
        fresh = [m for m in messages if m[0] > after_seq]
        self.seen.extend(fresh)
        return max([after_seq, *(m[0] for m in messages)]), len(fresh)

    async def stored_seq(self) -> int:
        return self.seen[-1][0] if self.seen else 0

    async def settle(self) -> None:
        pass

    async def reset(self) -> None:
        self.seen.clear()

    async def close(self) -> None:
        pass


async def test_projector_catches_up_then_tails(private_js: JetStreamContext) -> None:
    before = await publish(private_js, RUNS * PER_RUN, "old")
    target = Recorder()
    stop = asyncio.Event()
    runner = asyncio.create_task(Projector(private_js, target).run(stop))
    try:
        after = await publish(private_js, RUNS * PER_RUN, "new")
        deadline = asyncio.get_running_loop().time() + BOUND_S
        while len(target.seen) < len(before) + len(after):
            assert asyncio.get_running_loop().time() < deadline, len(target.seen)
            assert not runner.done(), runner
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(runner, BOUND_S)
    assert [m[0] for m in target.seen] == [*before, *after]
    assert [m[2] for m in target.seen][-1] == f"new:{RUNS * PER_RUN - 1}".encode()
    assert {m[1] for m in target.seen} >= {f"old-{i}" for i in range(RUNS)}
