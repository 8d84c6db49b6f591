"""The projector's catch-up read (`projector_read.read_until`, the lean push consumer): the
same (seq, run id, payload) as the ordered consumer's tail, from any start, ending at the
given last sequence; and a Projector that catches up by it, then tails, misses nothing."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import Projector
from dagnats.runtime.projector_read import read_until
from dagnats.runtime.resources import history_subject

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
