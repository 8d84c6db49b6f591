"""The round trips the step path no longer makes, and what it still guarantees (issue 14).

- The engine decides a root run's first start without reading the run's history (its append,
  conditional on an empty history, checks it); a start of a run that has history is still
  decided on that history.
- A worker's tasks that come one at a time (a chain's) are brought by a standing pull: fewer
  pull requests than tasks, and no no-wait pull (dagnats/worker_fetch.py).
- A worker reads a run's ended marker with a direct get, not a JetStream API request (a
  bucket made before falls back to a message get until `ensure_resources` allows them).
- `Client.start` opens its watch beside its other requests and closes it when the start
  fails; `Client.wait` closes its watch after answering, and `close` waits for that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.client import Client, RunNotFoundError, WorkflowNotFoundError
from dagnats.client.live_watch import LiveWatch
from dagnats.client.watches import ClosingWatches
from dagnats.json_input import JsonInputError
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.ended_runs import EndedMarker, EndedRuns
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.resources import BUCKETS, ENDED_BUCKET, HISTORY_STREAM, ensure_resources
from dagnats.worker_fetch import FetchLoop
from kernel import codec, limits
from kernel.commands import StartRun
from kernel.errors import PayloadTooLargeError
from kernel.state import RunState
from kernel.workflow import StepDef, WorkflowDef
from tests.nats_fixtures import connect, unique, wait_for

wait_ms = 20_000
tasks_in_turn = 8


def start_of(run_id: str, task_type: str) -> bytes:
    workflow = WorkflowDef(name="one", steps=(StepDef(id="a", task=task_type),))
    command = StartRun(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), workflow=workflow,
        input=msgspec.Raw(b"null"),
    )  # fmt: skip
    return codec.encode(command)


def engine_on(connection: Connection) -> Engine:
    return Engine(connection.history, connection.tasks, connection.timers, connection.commands)


async def test_a_fresh_start_is_appended_without_reading_the_run_first(
    connection: Connection,
) -> None:
    run_id = unique("fresh")
    reads: list[str] = []  # JetStream API requests that read this run's history

    async def seen(message: Msg) -> None:
        about_run = run_id in message.subject or run_id.encode() in message.data
        if about_run and HISTORY_STREAM in message.subject and ".GET" in message.subject:
            reads.append(message.subject)

    assert connection.nc is not None
    spy = await connection.nc.subscribe("$JS.API.>", cb=seen)
    try:
        outcome = await engine_on(connection).handle(start_of(run_id, unique("t")), 1)
        await connection.nc.flush()  # every request above reached the spy before the PONG
    finally:
        await spy.unsubscribe()
    assert outcome == "applied", outcome
    assert await connection.history.last_seq(run_id) > 0, "the start is in history"
    assert reads == [], f"the engine read the new run's history first: {reads}"


async def test_a_start_of_a_run_with_history_is_decided_on_that_history(
    connection: Connection,
) -> None:
    run_id, task_type = unique("again"), unique("t")
    first = engine_on(connection)
    assert await first.handle(start_of(run_id, task_type), 1) == "applied"
    seq = await connection.history.last_seq(run_id)
    # Another engine (nothing cached) gets a second start of the same run, first delivery.
    second = engine_on(connection)
    assert await second.handle(start_of(run_id, task_type), 1) == "ignored"
    assert await connection.history.last_seq(run_id) == seq, "nothing appended twice"
    loaded = await second.load(run_id)
    assert loaded.last_seq == seq and loaded.state.status == "running", loaded


async def test_tasks_that_come_one_at_a_time_take_fewer_pull_requests_than_tasks(
    connection: Connection,
) -> None:
    task_type = unique("serial")
    pulls: list[bytes] = []

    async def seen(message: Msg) -> None:
        pulls.append(message.data)

    assert connection.nc is not None
    spy = await connection.nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=seen)
    got: list[TaskMessage] = []
    acked: list[int] = []

    def dispatch(messages: Sequence[TaskMessage]) -> None:
        got.extend(messages)

    stop, wake = asyncio.Event(), asyncio.Event()
    loop = FetchLoop(
        [task_type], connection.tasks, stop, dispatch=dispatch, free_slots=lambda: 8,
        wake=wake, outage=OutageLog(logging.getLogger("test"), "fetching"), batch_max=8,
    )  # fmt: skip
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: len(pulls) >= 1, timeout_ms=wait_ms, what="the first request")
        for index in range(tasks_in_turn):  # one task at a time, as a chain's steps come
            await connection.tasks.publish(task_type, b"{}", f"{task_type}:{index}")
            await wait_for(lambda: len(got) > len(acked), timeout_ms=wait_ms, what="the task")
            await got[index].ack()
            acked.append(index)
        await connection.nc.flush()
    finally:
        stop.set()
        await asyncio.wait_for(running, wait_ms / 1000)
        await loop.end()
        await spy.unsubscribe()
    assert len(got) == tasks_in_turn
    assert not [pull for pull in pulls if b"no_wait" in pull], pulls
    assert len(pulls) < tasks_in_turn, f"{len(pulls)} pull requests for {tasks_in_turn} tasks"


async def history_consumers(client: Client) -> int:
    info = await client.connection.js.stream_info(HISTORY_STREAM)
    assert info.state.consumer_count is not None
    return info.state.consumer_count


def record_watches(monkeypatch: pytest.MonkeyPatch) -> list[LiveWatch]:
    """Every `LiveWatch` opened from now on, in order (to see which are closed)."""
    opened: list[LiveWatch] = []
    real_open = LiveWatch.open

    async def recorded(
        js: JetStreamContext, run_id: str, after_seq: int = 0, *, stored: bool = True
    ) -> LiveWatch:
        watch = await real_open(js, run_id, after_seq, stored=stored)
        opened.append(watch)
        return watch

    monkeypatch.setattr(LiveWatch, "open", recorded)
    return opened


async def test_a_failed_start_and_an_answered_wait_leave_no_watch_behind(
    private_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = record_watches(monkeypatch)
    client = await Client.connect(private_server.url)
    observer = await Client.connect(private_server.url)
    try:
        await ensure_resources(client.connection.js)
        with pytest.raises(WorkflowNotFoundError):
            await client.start(unique("nowhere"), run_id=unique("nope"))
        await wait_for(  # closed in the background (`ClosingWatches`)
            lambda: len(opened) == 1 and opened[0].closed, timeout_ms=wait_ms,
            what="the start's watch closed",
        )  # fmt: skip
        parked = await client.start(NAP, run_id=unique("parked"), wait_started_s=0)  # no engine
        assert [watch.closed for watch in opened] == [True, False], "the watch parked for wait"
        with pytest.raises(RunNotFoundError):  # (no engine) takes the parked watch, closes it later
            await client.wait(parked, timeout_s=0.2)
        await client.close()
        assert [watch.closed for watch in opened] == [True, True], "close closed every watch"
        assert await history_consumers(observer) == 0, "a live watch is no consumer"
    finally:
        await client.close()
        await observer.close()


async def test_a_start_of_an_existing_run_cancelled_while_its_watch_opens_is_cancelled(
    private_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await Client.connect(private_server.url)
    observer = await Client.connect(private_server.url)
    run_id, task_type = unique("there"), unique("t")
    real_open, gate, decided = LiveWatch.open, asyncio.Event(), asyncio.Event()
    opened: list[LiveWatch] = []

    async def slow_open(
        js: JetStreamContext, run_id: str, after_seq: int = 0, *, stored: bool = True
    ) -> LiveWatch:
        await gate.wait()  # the opening is slow: the cancel lands meanwhile
        opened.append(await real_open(js, run_id, after_seq, stored=stored))
        return opened[-1]

    real_first = client._first_decision

    async def first_decision(run_id: str) -> object:
        try:
            return await real_first(run_id)
        finally:
            decided.set()

    try:
        await ensure_resources(client.connection.js)
        assert await engine_on(client.connection).handle(start_of(run_id, task_type), 1)
        monkeypatch.setattr(LiveWatch, "open", slow_open)
        monkeypatch.setattr(client, "_first_decision", first_decision)
        workflow = WorkflowDef(name="one", steps=(StepDef(id="a", task=task_type),))
        starting = asyncio.create_task(client.start(workflow, None, run_id=run_id))
        await asyncio.wait_for(decided.wait(), wait_ms / 1000)
        for _ in range(20):  # to the existing run's branch: it waits for the watch to open
            await asyncio.sleep(0)
        assert not starting.done()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(starting, wait_ms / 1000)
        gate.set()
        await asyncio.wait_for(client.close(), wait_ms / 1000)
        assert len(opened) == 1 and opened[0].closed, "the late watch was closed"
    finally:
        gate.set()
        await client.close()
        await observer.close()


@pytest.mark.parametrize(
    ("given", "error"),
    [("x" * (limits.payload_bytes_max + 1), PayloadTooLargeError),
     (float("nan"), JsonInputError)],
)  # fmt: skip
async def test_a_start_with_a_refused_input_makes_no_round_trip_for_its_watch(
    private_server: EmbeddedNats, given: object, error: type[Exception]
) -> None:
    client = await Client.connect(private_server.url)
    creates: list[str] = []

    async def seen(message: Msg) -> None:
        creates.append(message.subject)

    assert client.connection.nc is not None
    spy = await client.connection.nc.subscribe("$JS.API.CONSUMER.CREATE.>", cb=seen)
    try:
        await ensure_resources(client.connection.js)
        with pytest.raises(error):
            await client.start(NAP, given, run_id=unique("refused"))
        await client.connection.nc.flush()  # any request above reached the spy first
        assert creates == [], f"a refused start made a consumer: {creates}"
    finally:
        await spy.unsubscribe()
        await client.close()


class SlowWatch:
    """A watch whose close takes until `release` (the consumer delete's round trip)."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.closed = False

    async def close(self) -> None:
        await self.release.wait()
        self.closed = True


async def test_closing_watches_returns_at_once_is_bounded_and_waits_at_the_end() -> None:
    release = asyncio.Event()
    closing = ClosingWatches(size_max=2)
    watches = [SlowWatch(release) for _ in range(3)]
    await asyncio.wait_for(closing.close_later(watches[0]), 5)  # type: ignore[arg-type]
    await asyncio.wait_for(closing.close_later(watches[1]), 5)  # type: ignore[arg-type]
    assert closing.going() == 2 and not any(watch.closed for watch in watches)
    third = asyncio.create_task(closing.close_later(watches[2]))  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done(), "a third close waits while two are going (the bound)"
    release.set()
    await asyncio.wait_for(third, 5)
    await asyncio.wait_for(closing.wait(), 5)
    assert closing.going() == 0 and all(watch.closed for watch in watches)


NAP = WorkflowDef(
    name="nap",
    steps=(StepDef(id="nap", type="sleep", config=msgspec.Raw(b'{"duration": "50ms"}')),),
)


async def test_a_marker_is_read_with_a_direct_get_not_an_api_request(
    connection: Connection,
) -> None:
    run_id = unique("ended")
    markers = EndedRuns(connection.js)
    ended = RunState(run_id=run_id, status="completed", event_count=3)
    await markers.mark(ended, now_ms())
    marker = await read_by_direct_get(connection, markers, run_id)
    assert marker is not None and marker.status == "completed" and marker.events == 3


async def test_a_direct_get_that_times_out_falls_back_for_that_read_only(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = unique("slow")
    markers = EndedRuns(connection.js)
    await markers.mark(RunState(run_id=run_id, status="completed", event_count=4), now_ms())
    real_get = connection.js.get_last_msg
    timed_out: list[str] = []

    async def get_last_msg(stream: str, subject: str, direct: bool = False) -> object:
        if direct and not timed_out:  # the first direct get gets no answer in time
            timed_out.append(subject)
            raise nats.errors.TimeoutError
        return await real_get(stream, subject, direct=direct)

    monkeypatch.setattr(connection.js, "get_last_msg", get_last_msg)
    first = await markers.ended(run_id)  # a message get, this once
    assert timed_out and first is not None and first.events == 4
    again = await read_by_direct_get(connection, markers, run_id)
    assert again is not None and again.events == 4


async def test_a_bucket_made_without_direct_gets_is_given_them_and_read_meanwhile(
    private_server: EmbeddedNats,
) -> None:
    client = await connect(private_server.url)
    try:
        js = client.jetstream()
        spec = next(spec for spec in BUCKETS if spec.bucket == ENDED_BUCKET)
        old = api.KeyValueConfig(bucket=ENDED_BUCKET, history=1, ttl=spec.ttl_ms / 1000)
        await js.create_key_value(old)  # as an older version made it: no direct gets
        markers = EndedRuns(js)
        run_id = unique("old")
        await markers.mark(RunState(run_id=run_id, status="failed", event_count=2), now_ms())
        marker = await markers.ended(run_id)  # no direct gets here: a message get
        assert marker is not None and marker.status == "failed"
        assert spec.direct
        await ensure_resources(js)
        info = await js.stream_info(f"KV_{ENDED_BUCKET}")
        assert info.config.allow_direct, "ensure_resources allowed direct gets"
        fresh = await EndedRuns(js).ended(run_id)
        assert fresh is not None and fresh.events == 2
    finally:
        await client.close()


async def read_by_direct_get(
    connection: Connection, markers: EndedRuns, run_id: str
) -> EndedMarker | None:
    """The run's ended marker, checking that the read was a direct get (no message get)."""
    requests: list[str] = []

    async def seen(message: Msg) -> None:
        if ENDED_BUCKET in message.subject:
            requests.append(message.subject)

    assert connection.nc is not None
    spy = await connection.nc.subscribe("$JS.API.>", cb=seen)
    try:
        marker = await markers.ended(run_id)
        await connection.nc.flush()
    finally:
        await spy.unsubscribe()
    assert [subject for subject in requests if ".DIRECT.GET." in subject], requests
    assert not [subject for subject in requests if ".STREAM.MSG.GET." in subject], requests
    return marker


async def test_a_marker_that_cannot_be_stored_is_one_warning_and_the_next_one_is_stored(
    private_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Markers are a cache: one the server refuses (no bucket) is logged once, never raised;
    once the bucket is there again, marks are stored (through the shared publisher)."""
    nc = await nats.connect(private_server.url)
    try:
        js = nc.jetstream()
        await ensure_resources(js)
        await js.delete_stream(f"KV_{ENDED_BUCKET}")
        markers = EndedRuns(js)
        run_ids = [unique("lost"), unique("lost"), unique("kept")]
        with caplog.at_level(logging.WARNING, logger="dagnats.ended"):
            for run_id in run_ids[:2]:
                await markers.mark(RunState(run_id=run_id, status="failed", event_count=2), 1)
        warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        await ensure_resources(js)
        await markers.mark(RunState(run_id=run_ids[2], status="completed", event_count=5), 1)
        assert await markers.ended(run_ids[0]) is None
        kept = await markers.ended(run_ids[2])
        assert kept is not None and kept.status == "completed" and kept.events == 5
    finally:
        await nc.close()
