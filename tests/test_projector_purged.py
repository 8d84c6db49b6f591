"""The projections' reads of the history against a real nats-server: what the lean
reads (`projector_read.read_until`, `tail`) and the shared tail do when the history they are
asked for was purged, when their server restarts, and under a burst while a batch lingers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

from nats.js import JetStreamContext

from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import (
    Projector,
    SnapshotTarget,
    SqliteTarget,
    read_status,
    status_key,
    stream_last_seq,
)
from dagnats.runtime.projector_read import read_until
from dagnats.runtime.projector_shared import SharedTail
from dagnats.runtime.resources import HISTORY_STREAM, ensure_resources, history_subject
from projections.base import Message
from projections.sqlite import QueryTables
from tests.nats_fixtures import RestartableServer, wait_for
from tests.projection_support import completed_run
from tests.test_projector_read import Recorder
from tests.test_projector_shared import alone, append, dump, snapshots

BOUND_S = 30.0


async def publish(js: JetStreamContext, count: int, tag: str) -> list[int]:
    seqs = []
    for index in range(count):
        ack = await js.publish(history_subject(f"{tag}-{index % 3}"), f"{tag}:{index}".encode())
        seqs.append(ack.seq)
    return seqs


async def test_read_until_a_purged_range_ends_with_nothing(private_js: JetStreamContext) -> None:
    """read_until's contract: fewer messages when the rest was deleted. With every message
    after `after_seq` purged (and none appended since), the read must end, not stall."""
    seqs = await publish(private_js, 20, "gone")
    await private_js.purge_stream(HISTORY_STREAM)
    read = [m async for m in read_until(private_js, 0, seqs[-1])]
    assert read == []


async def test_read_until_a_range_purged_behind_kept_messages_ends(
    private_js: JetStreamContext,
) -> None:
    """Only the messages after the reader's start are purged (a run's subject): the read of
    them ends with nothing."""
    kept = await publish(private_js, 10, "kept")
    gone = [(await private_js.publish(history_subject("gone-run"), b"x")).seq for _ in range(10)]
    await private_js.purge_stream(HISTORY_STREAM, subject=history_subject("gone-run"))
    read = await asyncio.wait_for(_collect(read_until(private_js, kept[-1], gone[-1])), BOUND_S)
    assert read == []


async def _collect(messages: AsyncGenerator[Message, None]) -> list[Message]:
    return [m async for m in messages]


class Keeper(Recorder):
    """A projector target that keeps what it applied (its position is its last message), and
    fails the batches `fail_at` names once each (after recording nothing of them)."""

    def __init__(self, name: str, fail_at: frozenset[int] = frozenset(), pause_s: float = 0.0):
        super().__init__()
        self.name = name
        self.fail_at = set(fail_at)
        self.pause_s = pause_s
        self.batches = 0

    async def open(self) -> int:
        return self.seen[-1][0] if self.seen else 0

    async def apply(self, messages: list[Message], after_seq: int) -> tuple[int, int]:
        assert after_seq == (self.seen[-1][0] if self.seen else 0), (after_seq, self.name)
        self.batches += 1
        if self.batches in self.fail_at:
            self.fail_at.discard(self.batches)
            raise RuntimeError(f"{self.name}: batch {self.batches} fails once")
        if self.pause_s:
            await asyncio.sleep(self.pause_s)  # (a slow target: the reader runs ahead)
        return await super().apply(messages, after_seq)


async def seen_all(targets: list[Keeper], count: int, runner: asyncio.Task[None]) -> None:
    def done() -> bool:
        assert not runner.done(), runner
        return all(len(t.seen) >= count for t in targets)

    await wait_for(done, timeout_ms=int(BOUND_S * 1000), what=f"{count} messages applied")


async def test_shared_tail_across_a_restart_and_a_failed_batch(tmp_path: Path) -> None:
    """Two lanes, one of which fails a batch once while the other applies it; the server
    restarts while the tail is live: each lane has every message once, in order."""
    restartable = RestartableServer(tmp_path / "nats")
    try:
        js = (await restartable.start()).jetstream()
        first = await publish(js, 50, "a")
        lanes = [Keeper("left"), Keeper("right", fail_at=frozenset({2}))]
        stop = asyncio.Event()
        shared = SharedTail(js, lanes, batch_max=7)
        runner = asyncio.create_task(shared.run(stop))
        try:
            await seen_all(lanes, len(first), runner)
            second = await publish(js, 30, "b")
            await seen_all(lanes, len(first) + len(second), runner)
            await restartable.restart()
            third = await publish(js, 40, "c")
            await seen_all(lanes, len(first) + len(second) + len(third), runner)
        finally:
            stop.set()
            await asyncio.wait_for(runner, BOUND_S)
        wanted = [*first, *second, *third]
        for lane in lanes:
            assert [m[0] for m in lane.seen] == wanted, lane.name
    finally:
        await restartable.close()


async def test_a_burst_while_a_slow_lane_lingers(private_js: JetStreamContext) -> None:
    """Thousands of messages while batches linger and a slow target holds the queue full:
    every one applied once, in order, in batches of at most batch_max."""
    lane = Keeper("slow", pause_s=0.02)
    stop = asyncio.Event()
    runner = asyncio.create_task(Projector(private_js, lane, batch_max=50).run(stop))
    try:
        await publish(private_js, 1, "warm")
        await seen_all([lane], 1, runner)
        burst = await publish(private_js, 5_000, "burst")
        await seen_all([lane], 1 + len(burst), runner)
    finally:
        stop.set()
        await asyncio.wait_for(runner, BOUND_S)
    assert [m[0] for m in lane.seen][1:] == burst


async def test_stop_during_a_linger_applies_the_batch_and_ends(
    private_js: JetStreamContext,
) -> None:
    lane = Keeper("stopped")
    stop = asyncio.Event()
    projector = Projector(private_js, lane, idle_ms=5_000, linger_ms=4_000)
    runner = asyncio.create_task(projector.run(stop))
    seqs = await publish(private_js, 3, "late")
    await wait_for(
        lambda: projector.position == 0 and not runner.done(),
        timeout_ms=1000,
        what="the projector running",
    )
    stop.set()
    await asyncio.wait_for(runner, BOUND_S)
    assert [m[0] for m in lane.seen] in ([], seqs), lane.seen


async def test_catch_up_ends_when_the_last_messages_were_purged(
    private_js: JetStreamContext,
) -> None:
    """`projection run --once` (Projector.catch_up): the stream's last messages were deleted
    (retention purged the last run's subject). The catch-up applies what is left and ends;
    it must not wait for a message that will never come."""
    kept = await publish(private_js, 10, "kept")
    for _ in range(5):
        await private_js.publish(history_subject("purged-run"), b"x")
    await private_js.purge_stream(HISTORY_STREAM, subject=history_subject("purged-run"))
    lane = Keeper("once")
    position = await asyncio.wait_for(Projector(private_js, lane).catch_up(), BOUND_S)
    assert [m[0] for m in lane.seen] == kept
    assert position == kept[-1]


async def test_catch_up_of_a_history_purged_whole_ends(private_js: JetStreamContext) -> None:
    await publish(private_js, 10, "gone")
    await private_js.purge_stream(HISTORY_STREAM)
    lane = Keeper("empty")
    position = await asyncio.wait_for(Projector(private_js, lane).catch_up(), BOUND_S)
    assert (lane.seen, position) == ([], 0)


async def test_shared_snapshots_and_tables_across_a_restart_equal_a_rebuild(
    tmp_path: Path,
) -> None:
    """Serve's shared tail (snapshots + inline query tables) live while nats-server restarts
    between two bursts of runs: the tables and the snapshots equal each built from zero."""
    restartable = RestartableServer(tmp_path / "nats")
    try:
        js = (await restartable.start()).jetstream()
        log = JetStreamEventLog(js)
        for index in range(8):
            await append(log, f"early-{index}", completed_run(f"early-{index}", at_ms=1_000))
        path = tmp_path / "shared.sqlite"
        sqlite = SqliteTarget(path, QueryTables(), inline=True)
        tail = SharedTail(js, (SnapshotTarget(js), sqlite), batch_max=9)
        stop = asyncio.Event()
        task = asyncio.create_task(tail.run(stop))
        try:
            first = await stream_last_seq(js)
            await wait_for(
                lambda: len(tail.active) == 2 and all(x.position == first for x in tail.active),
                timeout_ms=int(BOUND_S * 1000), what="both lanes at the first burst's end",
            )  # fmt: skip
            await restartable.restart()
            for index in range(8):
                await append(log, f"late-{index}", completed_run(f"late-{index}", at_ms=9_000))
            last = await stream_last_seq(js)
            await wait_for(
                lambda: all(x.position == last for x in tail.active) and not task.done(),
                timeout_ms=int(BOUND_S * 1000), what="both lanes at the stream's end",
            )  # fmt: skip
        finally:
            stop.set()
            await asyncio.wait_for(task, BOUND_S)
            await sqlite.close()
        got = dump(path), await snapshots(js)
        want = await alone(js, tmp_path / "alone.sqlite")
        assert got[0] == want[0], "query tables"
        assert got[1] == want[1], "snapshots"
        assert len(got[1]) == 16, sorted(got[1])
    finally:
        await restartable.close()


async def test_inline_tables_while_another_writer_holds_the_file(
    private_js: JetStreamContext, tmp_path: Path
) -> None:
    """The shared tail's inline query tables meet a file another connection holds for
    writing: the batch goes to a thread and waits; nothing is applied twice or skipped (the
    tables equal a rebuild)."""
    log = JetStreamEventLog(private_js)
    path = tmp_path / "shared.sqlite"
    sqlite = SqliteTarget(path, QueryTables(), inline=True)
    tail = SharedTail(private_js, (sqlite,), batch_max=5)
    stop = asyncio.Event()
    task = asyncio.create_task(tail.run(stop))
    try:
        await append(log, "first", completed_run("first"))
        first = await stream_last_seq(private_js)
        await wait_for(
            lambda: bool(tail.active) and tail.active[0].position == first,
            timeout_ms=int(BOUND_S * 1000), what="the first run applied",
        )  # fmt: skip
        assert sqlite._busy_ms == 0, "the first batch was applied inline"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the file
        try:
            for index in range(6):
                await append(log, f"held-{index}", completed_run(f"held-{index}"))
            await wait_for(  # the inline try met the lock: the batch waits in a thread
                lambda: sqlite._busy_ms > 0, timeout_ms=int(BOUND_S * 1000), what="a thread"
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        last = await stream_last_seq(private_js)
        await wait_for(
            lambda: tail.active[0].position == last and not task.done(),
            timeout_ms=int(BOUND_S * 1000), what="every run applied",
        )  # fmt: skip
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        await sqlite.close()
    rebuilt = tmp_path / "rebuilt.sqlite"
    again = SqliteTarget(rebuilt, QueryTables())
    await Projector(private_js, again).catch_up()
    await again.close()
    assert dump(path) == dump(rebuilt)


async def test_a_history_stream_made_again_rebuilds_the_tables_and_the_snapshots(
    private_js: JetStreamContext, tmp_path: Path
) -> None:
    """The history stream is made again (its NATS store lost; the SQLite file and the KV
    buckets kept): the checkpoints are ahead of the new stream. Each projection starts over
    from sequence 0 and holds the new stream's runs only, as a rebuild from zero does."""
    log = JetStreamEventLog(private_js)
    path = tmp_path / "tables.sqlite"

    async def project() -> tuple[dict[str, list[tuple[object, ...]]], list[str]]:
        sqlite = SqliteTarget(path, QueryTables())
        await Projector(private_js, sqlite, batch_max=4).catch_up()
        await sqlite.close()
        await Projector(private_js, SnapshotTarget(private_js), batch_max=4).catch_up()
        return dump(path), sorted(await snapshots(private_js))

    for index in range(6):
        await append(log, f"old-{index}", completed_run(f"old-{index}", at_ms=1_000))
    _, runs = await project()
    assert runs == [f"old-{index}" for index in range(6)]
    await private_js.delete_stream(HISTORY_STREAM)
    await ensure_resources(private_js)
    await append(log, "new-0", completed_run("new-0", at_ms=2_000))
    tables, runs = await project()
    assert runs == ["new-0"]
    fresh = SqliteTarget(tmp_path / "fresh.sqlite", QueryTables())
    await Projector(private_js, fresh).catch_up()
    await fresh.close()
    assert tables == dump(tmp_path / "fresh.sqlite")
    assert [row[0] for row in tables["runs"]] == ["new-0"]


async def test_the_lag_goes_to_zero_when_the_streams_last_messages_are_purged(
    private_js: JetStreamContext,
) -> None:
    """Retention purged the run appended last before the projector applied it: nothing is
    left to apply, so the status a running projector mirrors into KV must come to lag 0 (it
    used to show the purged messages as lag until something else was appended)."""
    kept = await publish(private_js, 4, "kept")
    lane = Keeper("lagging")
    projector = Projector(private_js, lane)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await wait_for(
            lambda: projector.position == kept[-1],
            timeout_ms=int(BOUND_S * 1000), what="the kept messages",
        )  # fmt: skip
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        for _ in range(5):
            await private_js.publish(history_subject("purged-run"), b"x")
        await private_js.purge_stream(HISTORY_STREAM, subject=history_subject("purged-run"))
        purged_at_ms = now_ms()
        stop = asyncio.Event()
        task = asyncio.create_task(projector.run(stop))

        async def lag_zero() -> bool:
            status = await read_status(private_js, status_key(lane.name))
            if status is None or status.updated_at_ms < purged_at_ms:
                return False  # (the status the first run wrote when it stopped)
            return status.seq == kept[-1] and status.lag == 0

        await wait_for(lag_zero, timeout_ms=int(BOUND_S * 1000), what="lag 0")
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
