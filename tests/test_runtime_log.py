"""JetStreamEventLog against a real nats-server: conditional appends, bounded reads, tail."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import protocols, settings
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from dagnats.runtime.timers import JetStreamTimers
from kernel.errors import AppendConflictError, PayloadTooLargeError
from tests.nats_fixtures import unique


async def collect(
    log: JetStreamEventLog, run_id: str, after_seq: int = 0
) -> list[tuple[int, bytes]]:
    return [item async for item in log.read(run_id, after_seq=after_seq)]


async def append_many(log: JetStreamEventLog, run_id: str, count: int) -> list[int]:
    seqs: list[int] = []
    last = 0
    for index in range(count):
        msg_id = f"{run_id}:{index}"
        last = await log.append(run_id, b"m%d" % index, msg_id=msg_id, expected_last_seq=last)
        seqs.append(last)
    return seqs


async def test_the_first_append_expects_zero_and_returns_the_stream_sequence(
    js: JetStreamContext,
) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    assert await log.last_seq(run_id) == 0
    seq = await log.append(run_id, b"first", msg_id=f"{run_id}:a", expected_last_seq=0)
    assert seq > 0
    assert await log.last_seq(run_id) == seq
    with pytest.raises(AppendConflictError) as caught:
        await log.append(run_id, b"second", msg_id=f"{run_id}:b", expected_last_seq=0)
    assert caught.value.run_id == run_id
    assert caught.value.expected_last_seq == 0
    assert await collect(log, run_id) == [(seq, b"first")]


async def test_a_stale_expected_sequence_is_a_conflict_and_appends_nothing(
    js: JetStreamContext,
) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    first, second = await append_many(log, run_id, 2)
    with pytest.raises(AppendConflictError, match=f"moved past sequence {first}"):
        await log.append(run_id, b"late", msg_id=f"{run_id}:late", expected_last_seq=first)
    assert await log.last_seq(run_id) == second
    assert [data for _, data in await collect(log, run_id)] == [b"m0", b"m1"]


async def test_other_runs_do_not_move_a_runs_expected_sequence(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_a, run_b = unique("run"), unique("run")
    seq_a = await log.append(run_a, b"a", msg_id=f"{run_a}:a", expected_last_seq=0)
    seq_b = await log.append(run_b, b"b", msg_id=f"{run_b}:b", expected_last_seq=0)
    assert seq_b > seq_a
    seq_a2 = await log.append(run_a, b"a2", msg_id=f"{run_a}:a2", expected_last_seq=seq_a)
    assert seq_a2 > seq_b
    assert await collect(log, run_a) == [(seq_a, b"a"), (seq_a2, b"a2")]


async def test_a_duplicate_msg_id_returns_the_original_sequence(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    seq = await log.append(run_id, b"x", msg_id=f"{run_id}:same", expected_last_seq=0)
    # Same expected sequence as the first try (its ack was "lost"): the server says 10071,
    # the log sees its own msg id on the last message and returns its sequence.
    assert await log.append(run_id, b"x", msg_id=f"{run_id}:same", expected_last_seq=0) == seq
    # Expected sequence already at the duplicate: the server answers PubAck.duplicate.
    assert await log.append(run_id, b"x", msg_id=f"{run_id}:same", expected_last_seq=seq) == seq
    assert await collect(log, run_id) == [(seq, b"x")]


async def test_msg_ids_are_deduplicated_across_the_whole_stream(js: JetStreamContext) -> None:
    """Why msg ids must name their run: the duplicate window is per stream, not per subject."""
    log = JetStreamEventLog(js)
    run_a, run_b = unique("run"), unique("run")
    shared = unique("msg")
    seq_a = await log.append(run_a, b"a", msg_id=shared, expected_last_seq=0)
    assert await log.append(run_b, b"b", msg_id=shared, expected_last_seq=0) == seq_a
    assert await log.last_seq(run_b) == 0


async def test_a_duplicate_that_is_no_longer_last_is_a_conflict(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    await append_many(log, run_id, 2)
    with pytest.raises(AppendConflictError):
        await log.append(run_id, b"m0", msg_id=f"{run_id}:0", expected_last_seq=0)


async def test_an_oversized_payload_is_refused_before_publishing(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    limit = settings.history_message_bytes_max
    with pytest.raises(PayloadTooLargeError, match=f"is {limit + 1} bytes; the limit is {limit}"):
        await log.append(run_id, b"x" * (limit + 1), msg_id=f"{run_id}:big", expected_last_seq=0)
    assert await log.last_seq(run_id) == 0
    seq = await log.append(run_id, b"y" * limit, msg_id=f"{run_id}:max", expected_last_seq=0)
    [(read_seq, data)] = await collect(log, run_id)
    assert (read_seq, len(data)) == (seq, limit)


async def test_read_of_an_unknown_run_yields_nothing_at_once(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js, read_idle_timeout_ms=60_000)
    assert await asyncio.wait_for(collect(log, unique("run")), timeout=2) == []


async def test_read_after_a_sequence_and_at_the_end(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    seqs = await append_many(log, run_id, 5)
    assert [seq for seq, _ in await collect(log, run_id, after_seq=seqs[1])] == seqs[2:]
    assert await asyncio.wait_for(collect(log, run_id, after_seq=seqs[-1]), timeout=2) == []


async def test_read_stops_at_the_last_sequence_when_it_began(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    seqs = await append_many(log, run_id, 3)
    read: list[int] = []
    async for seq, _ in log.read(run_id):
        read.append(seq)
        if len(read) == 1:  # appended during the read: not part of it
            await log.append(run_id, b"later", msg_id=f"{run_id}:later", expected_last_seq=seqs[-1])
    assert read == seqs


async def test_a_long_history_reads_in_order(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    count = 3_000
    subject = history_subject(run_id)
    acks = [await js.publish_async(subject, b"%d" % index) for index in range(count)]
    await js.publish_async_completed()
    seqs = [(await ack).seq for ack in acks]
    read = await collect(log, run_id)
    assert [seq for seq, _ in read] == seqs
    assert [data for _, data in read] == [b"%d" % index for index in range(count)]


async def test_reads_leave_no_consumer_behind(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    await append_many(log, run_id, 2)
    before = (await js.stream_info(HISTORY_STREAM)).state.consumer_count
    for _ in range(5):
        assert len(await collect(log, run_id)) == 2

    async def consumers() -> int:
        return (await js.stream_info(HISTORY_STREAM)).state.consumer_count

    deadline = asyncio.get_running_loop().time() + 2
    while await consumers() > before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert await consumers() <= before


async def test_tail_follows_all_runs_live(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_a, run_b = unique("run"), unique("run")
    start = await log.append(run_a, b"before", msg_id=f"{run_a}:0", expected_last_seq=0)
    seen: list[tuple[int, str, bytes]] = []
    tail = log.tail(after_seq=start)

    async def follow() -> None:
        async for item in tail:
            if item[1] in (run_a, run_b):
                seen.append(item)
            if len(seen) == 2:
                return

    follower = asyncio.create_task(follow())
    seq_b = await log.append(run_b, b"b", msg_id=f"{run_b}:b", expected_last_seq=0)
    seq_a = await log.append(run_a, b"a", msg_id=f"{run_a}:a", expected_last_seq=start)
    await asyncio.wait_for(follower, timeout=5)
    await tail.aclose()
    assert seen == [(seq_b, run_b, b"b"), (seq_a, run_a, b"a")]


async def test_list_runs_names_runs_with_history(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    runs = sorted(unique("listed") for _ in range(3))
    for run_id in runs:
        await log.append(run_id, b"x", msg_id=f"{run_id}:x", expected_last_seq=0)
    listed = await log.list_runs(settings.runs_listed_max)
    assert set(runs) <= set(listed)
    assert listed == sorted(listed)
    assert len(await log.list_runs(2)) == 2


def test_the_nats_implementations_satisfy_the_protocols(js: JetStreamContext) -> None:
    """Checked by mypy (structural typing); the asserts keep the test honest at run time."""
    history: protocols.EventLog = JetStreamEventLog(js)
    tasks: protocols.TaskQueue = JetStreamTaskQueue(js)
    publisher: protocols.TaskPublisher = tasks
    commands: protocols.CommandQueue = JetStreamCommandQueue(js)
    dead: protocols.DeadLetters = JetStreamCommandQueue(js)
    timers: protocols.Timers = JetStreamTimers(js)
    assert all(
        item is not None for item in (history, tasks, publisher, commands, dead, timers)
    )
