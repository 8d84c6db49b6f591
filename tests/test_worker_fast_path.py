"""The worker's per-task path: which tasks read their run's ended-run marker (a round trip),
the stored time of a task message, and the heartbeat timers (dagnats/worker_heartbeat.py).

Against a real nats-server: a task delivered for the first time and stored less than
`settings.ended_check_min_age_ms` before the worker took it runs without reading the marker;
an older task and a redelivered one read it (and are skipped when their run ended). The
worker's clock is given (`Worker(clock=...)`) to place a task's age on either side of the
bound whatever the machine's load: a worker clock behind the server's sees every task fresh,
one ahead sees every task old; the real-clock case waits well past the bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.ended_runs import EndedRuns, check_due
from dagnats.runtime.queue import reply_fields
from dagnats.worker import TaskContext, Worker
from dagnats.worker_heartbeat import Heartbeat
from kernel.effects import EnqueueTask
from kernel.state import RunState
from tests.nats_fixtures import unique, wait_for

WAIT_MS = 20_000
SKEW_MS = 60_000  # far beyond any delay of a loaded machine
TASK_TYPE = "fast.work"


class SkewedClock:
    def __init__(self, skew_ms: int) -> None:
        self.skew_ms = skew_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.skew_ms


class Reads:
    """Counts the marker reads of every `EndedRuns`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run_ids: list[str] = []
        real = EndedRuns.ended

        async def ended(markers: EndedRuns, run_id: str) -> object:
            self.run_ids.append(run_id)
            return await real(markers, run_id)

        monkeypatch.setattr(EndedRuns, "ended", ended)


def task_of(run_id: str) -> EnqueueTask:
    return EnqueueTask(
        run_id=run_id, step_id="only", attempt=1, task=TASK_TYPE,
        input=msgspec.Raw(b"{}"), metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:only:1",
        history_events=2,
    )  # fmt: skip


async def publish(connection: Connection, run_id: str) -> None:
    task = task_of(run_id)
    await connection.tasks.publish(TASK_TYPE, msgspec.json.encode(task), task.msg_id)


class Served:
    def __init__(self, worker: Worker, called: list[str]) -> None:
        self.worker = worker
        self.called = called


@pytest_asyncio.fixture
async def serving(connection: Connection) -> AsyncIterator[Callable[[int], Served]]:
    """Start a worker (clock skewed by the given ms) serving `TASK_TYPE` on `connection`."""
    stop = asyncio.Event()
    jobs: list[asyncio.Task[None]] = []

    def start(skew_ms: int) -> Served:
        worker = Worker(concurrency=2, clock=SkewedClock(skew_ms))
        called: list[str] = []

        async def work(ctx: TaskContext) -> object:
            called.append(ctx.run_id)
            return {"ok": True}

        worker.add(TASK_TYPE, work)
        commands = connection.commands
        jobs.append(asyncio.create_task(worker.serve(connection.tasks, commands, commands, stop)))
        return Served(worker, called)

    try:
        yield start
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*jobs), 30)


async def handled(served: Served, count: int) -> None:
    await wait_for(lambda: served.worker.handled >= count, timeout_ms=WAIT_MS,
                   what=f"{count} task(s) handled")  # fmt: skip


async def test_a_fresh_task_of_a_live_run_reads_no_marker(
    connection: Connection, serving: Callable[[int], Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    # a bound longer than any wait here: every first delivery is fresh (it is read per call)
    monkeypatch.setattr(settings, "ended_check_min_age_ms", SKEW_MS)
    served = serving(0)
    run_ids = [unique("fresh") for _ in range(3)]
    for run_id in run_ids:
        await publish(connection, run_id)
    await handled(served, 3)
    assert sorted(served.called) == sorted(run_ids)
    assert reads.run_ids == [], "no marker read for a fresh first delivery"


@pytest.mark.parametrize("skew_ms", [SKEW_MS, -SKEW_MS])
async def test_an_old_task_reads_the_marker_and_is_skipped_when_its_run_ended(
    connection: Connection,
    serving: Callable[[int], Served],
    monkeypatch: pytest.MonkeyPatch,
    skew_ms: int,
) -> None:
    """The worker's clock far ahead of the server's, or far behind: every task is outside
    the bound either way (a clock behind must not make waited tasks look fresh)."""
    reads = Reads(monkeypatch)
    ended, live = unique("ended"), unique("live")
    await EndedRuns(connection.js).mark(
        RunState(run_id=ended, status="cancelled", event_count=5), 0
    )
    await publish(connection, ended)
    await publish(connection, live)
    served = serving(skew_ms)
    await handled(served, 1)
    await wait_for(lambda: len(reads.run_ids) >= 2, timeout_ms=WAIT_MS, what="two reads")
    assert sorted(reads.run_ids) == sorted([ended, live])
    assert served.called == [live], "the ended run's task was skipped"


async def test_a_task_that_waited_past_the_bound_reads_the_marker_on_the_real_clock(
    connection: Connection, serving: Callable[[int], Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    ended = unique("waited")
    await EndedRuns(connection.js).mark(RunState(run_id=ended, status="failed", event_count=5), 0)
    await publish(connection, ended)
    stored_by_ms = time.time_ns() // 1_000_000
    await wait_for(
        lambda: time.time_ns() // 1_000_000 - stored_by_ms > 3 * settings.ended_check_min_age_ms,
        timeout_ms=WAIT_MS, what="the task to wait past the bound",
    )  # fmt: skip
    served = serving(0)
    await wait_for(lambda: reads.run_ids == [ended], timeout_ms=WAIT_MS, what="its read")
    await wait_for(lambda: served.worker.in_flight_count() == 0, timeout_ms=WAIT_MS,
                   what="the skip to end")  # fmt: skip
    assert served.called == []


async def test_a_redelivered_task_reads_the_marker(
    connection: Connection, serving: Callable[[int], Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    ended = unique("again")
    await EndedRuns(connection.js).mark(
        RunState(run_id=ended, status="terminated", event_count=5), 0
    )
    await publish(connection, ended)
    first = await connection.tasks.fetch(TASK_TYPE, batch=1, timeout_ms=WAIT_MS)
    assert len(first) == 1 and first[0].num_delivered == 1
    await first[0].nak()  # delivered again at once
    monkeypatch.setattr(settings, "ended_check_min_age_ms", SKEW_MS)  # fresh by its age:
    served = serving(0)  # read only because it was redelivered
    await wait_for(lambda: reads.run_ids == [ended], timeout_ms=WAIT_MS, what="its read")
    await wait_for(lambda: served.worker.in_flight_count() == 0, timeout_ms=WAIT_MS,
                   what="the skip to end")  # fmt: skip
    assert served.called == []


async def test_the_stored_time_of_a_real_task_message(connection: Connection) -> None:
    run_id = unique("stored")
    before_ms = time.time_ns() // 1_000_000
    await publish(connection, run_id)
    fetched = await connection.tasks.fetch(TASK_TYPE, batch=1, timeout_ms=WAIT_MS)
    after_ms = time.time_ns() // 1_000_000
    assert len(fetched) == 1
    message = fetched[0]
    stored_ms = getattr(message, "stored_ms", None)
    assert isinstance(stored_ms, int)
    assert before_ms - 1 <= stored_ms <= after_ms + 1, (before_ms, stored_ms, after_ms)
    raw: Msg = message._message
    metadata = raw.metadata  # nats-py's reading of the same reply subject
    assert message.num_delivered == metadata.num_delivered == 1
    assert getattr(message, "stream_seq", None) == metadata.sequence.stream
    assert getattr(message, "num_pending", None) == metadata.num_pending
    assert abs(stored_ms - metadata.timestamp.timestamp() * 1000) < 1  # (ms floor of the ns)
    await message.ack()


counts = st.integers(min_value=0, max_value=2**53)


@given(delivered=st.integers(1, 10**6), stream_seq=counts, consumer_seq=counts,
       stored_ns=counts, pending=counts, v2=st.booleans(), token=st.booleans())  # fmt: skip
def test_reply_fields_read_what_nats_py_reads(
    delivered: int, stream_seq: int, consumer_seq: int, stored_ns: int, pending: int,
    v2: bool, token: bool,
) -> None:  # fmt: skip
    tail = f"{delivered}.{stream_seq}.{consumer_seq}.{stored_ns}.{pending}"
    reply = f"$JS.ACK.hub.ACCHASH.TASKS.workers.{tail}" if v2 else f"$JS.ACK.TASKS.workers.{tail}"
    if v2 and token:
        reply += ".r4nd0m"
    metadata = Msg.Metadata._from_reply(reply)
    assert reply_fields(reply) == (
        metadata.num_delivered, metadata.sequence.stream, metadata.num_pending,
        stored_ns // 1_000_000,
    )  # fmt: skip


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.abc.def", "$JS.ACK.a.b.1.2.3", "$JS.ACK.a.b.c.d.1.2.3.4",
              "$JS.ACK.TASKS.workers.x.2.3.4.5", "$JS.NAK.TASKS.workers.1.2.3.4.5"],
)  # fmt: skip
def test_a_reply_that_is_not_a_jetstream_delivery_has_no_fields(reply: str) -> None:
    assert reply_fields(reply) is None


@given(delivered=st.integers(1, 100), stored_ms=st.none() | st.integers(0, 10**13),
       now_ms=st.integers(0, 10**13))  # fmt: skip
def test_check_due_reads_unless_a_first_delivery_is_fresh(
    delivered: int, stored_ms: int | None, now_ms: int
) -> None:
    fresh = (
        delivered == 1 and stored_ms is not None
        and -settings.ended_check_min_age_ms < now_ms - stored_ms
        < settings.ended_check_min_age_ms
    )  # fmt: skip
    assert check_due(delivered, stored_ms, now_ms) is not fresh


class Delivery:
    """A task delivery counting its heartbeats; `hold` keeps a beat's send waiting."""

    def __init__(self) -> None:
        self.beats = 0
        self.hold: asyncio.Event | None = None
        self.sending = False

    async def in_progress(self) -> None:
        self.sending = True
        if self.hold is not None:
            await self.hold.wait()
        self.beats += 1
        self.sending = False


async def test_heartbeats_every_interval_for_each_delivery_until_stopped() -> None:
    first, rider = Delivery(), Delivery()
    deliveries: list[object] = [first]
    beat = Heartbeat(deliveries.copy, 20, logging.getLogger("test"))  # type: ignore[arg-type]
    await wait_for(lambda: first.beats >= 2, timeout_ms=WAIT_MS, what="two beats")
    deliveries.append(rider)  # a delivery that came back rides along
    await wait_for(lambda: rider.beats >= 2, timeout_ms=WAIT_MS, what="the rider's beats")
    await beat.stop()
    stopped_at = first.beats
    await asyncio.sleep(0.1)  # five intervals: no beat comes after stop
    assert first.beats == stopped_at


async def test_stop_cancels_a_beat_being_sent_and_waits_for_it() -> None:
    stuck = Delivery()
    stuck.hold = asyncio.Event()  # the send never ends by itself
    beat = Heartbeat([stuck].copy, 10, logging.getLogger("test"))  # type: ignore[arg-type]
    await wait_for(lambda: stuck.sending, timeout_ms=WAIT_MS, what="a beat being sent")
    await asyncio.wait_for(beat.stop(), 10)
    assert stuck.beats == 0
    stuck.hold = None
    await asyncio.sleep(0.05)
    assert stuck.beats == 0 and stuck.sending, "no beat after stop"
