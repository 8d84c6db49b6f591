"""A worker's live view of ended runs (runtime/ended_watch.py), against a real nats-server: a
task published after the view began is checked with no request, an older or redelivered one
reads its run's marker, a reconnect moves the view's horizon, the view stays within its bound,
a reopened run's newer task is not skipped; and the worker role may watch the markers but not
write them nor watch another bucket (the server refuses)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from dagnats.runtime import settings as runtime_settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.ended_runs import EndedMarker, EndedRuns, marker_subject
from dagnats.runtime.ended_watch import EndedView, EndedWatch, skip_reason
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamMessage
from dagnats.runtime.resources import ENDED_BUCKET, RUNS_BUCKET
from dagnats.runtime.serve import Server
from kernel.effects import EnqueueTask
from tests.nats_fixtures import wait_for
from tests.test_roles_nats import connected_as, serving

WAIT_MS = 20_000


# -- the view alone ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    runs_max=st.integers(min_value=1, max_value=5),
    margin_ms=st.integers(min_value=0, max_value=3),
    seen=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3)), max_size=40),
    published_ms=st.integers(min_value=0, max_value=200),
)
def test_the_view_is_bounded_and_covers_only_tasks_whose_markers_it_still_holds(
    runs_max: int, margin_ms: int, seen: list[tuple[int, int]], published_ms: int
) -> None:
    view = EndedView(runs_max, margin_ms)
    view.begin(0)
    at_ms, arrivals = 0, dict[str, int]()
    for number, step_ms in seen:  # markers of runs 0..8, arriving as time goes on
        at_ms += step_ms
        marker = EndedMarker(status="cancelled", events=at_ms, at_ms=at_ms)
        view.record(f"r{number}", marker, at_ms)
        arrivals[f"r{number}"] = at_ms
        assert len(view.markers) <= runs_max
    if view.covers(published_ms):
        # A run that ended after the task was published (its marker arrived later) is known.
        for run, arrived_ms in arrivals.items():
            if arrived_ms >= published_ms:
                assert view.marker(run) is not None, (run, arrived_ms, view.horizon_ms)
    view.end()
    assert not view.covers(published_ms)


# -- against a real nats-server ----------------------------------------------------------


class CountedRuns(EndedRuns):
    """The marker reads (one JetStream request each) a check made."""

    def __init__(self, js: JetStreamContext) -> None:
        super().__init__(js)
        self.reads = 0

    async def ended(self, run_id: str) -> EndedMarker | None:
        self.reads += 1
        return await super().ended(run_id)


class Tasks:
    """Task messages on a stream of this test's own (a JetStream message like a task's)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.name = f"EWT_{uuid.uuid4().hex[:10]}"
        self.subject = f"ewt.{self.name}"

    async def create(self) -> None:
        await self.js.add_stream(api.StreamConfig(name=self.name, subjects=[self.subject]))
        self.subscription = await self.js.pull_subscribe(self.subject, durable="w")

    async def publish(self, run_id: str, history_events: int = 3) -> None:
        task = EnqueueTask(
            run_id=run_id, step_id="only", attempt=1, task="work", input=msgspec.Raw(b"{}"),
            metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:only:1",
            history_events=history_events,
        )  # fmt: skip
        await self.js.publish(self.subject, msgspec.json.encode(task))

    async def take(self) -> tuple[EnqueueTask, JetStreamMessage]:
        [message] = await self.subscription.fetch(1, timeout=5)
        await message.ack()
        return msgspec.json.decode(message.data, type=EnqueueTask), JetStreamMessage(message)

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_stream(self.name)


@pytest_asyncio.fixture
async def watcher(nats_server: EmbeddedNats, js: JetStreamContext) -> AsyncIterator[NatsClient]:
    """The worker's own connection (it reconnects, unlike the test's)."""
    client = await nats.connect(nats_server.url, connect_timeout=2, reconnect_time_wait=0.05)
    try:
        yield client
    finally:
        await client.close()


async def mark(js: JetStreamContext, run_id: str, events: int) -> None:
    """What the engine writes when a run ends (EndedRuns.mark)."""
    marker = EndedMarker(status="cancelled", events=events, at_ms=now_ms())
    await js.publish(marker_subject(run_id), msgspec.json.encode(marker))


async def started(watcher: NatsClient, js: JetStreamContext) -> EndedWatch:
    watch = EndedWatch(watcher, CountedRuns(watcher.jetstream()), margin_ms=0)
    await watch.start()
    horizon = watch.view.horizon_ms
    assert horizon is not None, "the view began"
    await wait_for(lambda: now_ms() > horizon, timeout_ms=WAIT_MS, what="the clock to pass")
    return watch


def reads(watch: EndedWatch) -> int:
    assert isinstance(watch.lookups, CountedRuns)
    return watch.lookups.reads


def run_id() -> str:
    return f"ewt-{uuid.uuid4().hex[:12]}"


async def seen(watch: EndedWatch, run: str) -> None:
    await wait_for(lambda: watch.view.marker(run) is not None, timeout_ms=WAIT_MS,
                   what=f"the marker of {run} to reach the view")  # fmt: skip


async def test_a_task_of_a_run_that_ended_after_the_watch_began_is_skipped_without_a_read(
    watcher: NatsClient, js: JetStreamContext
) -> None:
    tasks = Tasks(js)
    await tasks.create()
    try:
        watch = await started(watcher, js)
        ended, running = run_id(), run_id()
        await tasks.publish(ended)
        await tasks.publish(running)
        await mark(js, ended, events=3)
        await seen(watch, ended)
        task, message = await tasks.take()
        assert "is cancelled" in await skip_reason(watch, task, message)
        task, message = await tasks.take()
        assert await skip_reason(watch, task, message) == ""
        assert (reads(watch), watch.answered) == (0, 2), "both answered by the view"
    finally:
        await tasks.delete()


async def test_an_older_or_redelivered_task_still_reads_its_runs_marker(
    watcher: NatsClient, js: JetStreamContext
) -> None:
    tasks = Tasks(js)
    await tasks.create()
    try:
        old = run_id()
        await tasks.publish(old)
        await mark(js, old, events=3)  # ended before the worker started: not in the view
        watch = await started(watcher, js)
        task, message = await tasks.take()
        assert "is cancelled" in await skip_reason(watch, task, message)
        assert (reads(watch), watch.answered) == (1, 0)

        again = run_id()
        await tasks.publish(again)
        task, message = await tasks.take()
        message.num_delivered = 2  # as the server says of a redelivery
        assert await skip_reason(watch, task, message) == ""
        assert reads(watch) == 2, "a redelivered task reads its marker"
    finally:
        await tasks.delete()


async def test_a_reopened_runs_newer_task_is_not_skipped(
    watcher: NatsClient, js: JetStreamContext
) -> None:
    tasks = Tasks(js)
    await tasks.create()
    try:
        watch = await started(watcher, js)
        reopened = run_id()
        await mark(js, reopened, events=5)  # it ended with 5 events, then `run retry`
        await seen(watch, reopened)
        await tasks.publish(reopened, history_events=7)  # decided after the retry
        task, message = await tasks.take()
        assert await skip_reason(watch, task, message) == ""
        assert (reads(watch), watch.answered) == (0, 1)
    finally:
        await tasks.delete()


async def test_a_reconnect_moves_the_horizon(watcher: NatsClient, js: JetStreamContext) -> None:
    tasks = Tasks(js)
    await tasks.create()
    try:
        watch = await started(watcher, js)
        before = run_id()
        await tasks.publish(before)  # published while the view was whole ...
        reconnects = watcher.stats["reconnects"]
        await watcher.force_reconnect()  # ... but markers may be missed while reconnecting
        await wait_for(lambda: watcher.stats["reconnects"] > reconnects and watcher.is_connected,
                       timeout_ms=WAIT_MS, what="the watcher to reconnect")  # fmt: skip
        await mark(js, before, events=3)
        task, message = await tasks.take()
        assert "is cancelled" in await skip_reason(watch, task, message)
        assert reads(watch) == 1, "a task older than the reconnect reads its marker"
        horizon = watch.view.horizon_ms
        assert horizon is not None and horizon >= message.published_ms

        await wait_for(lambda: now_ms() > horizon, timeout_ms=WAIT_MS, what="the clock to pass")
        after = run_id()  # the subscription came back with the connection
        await tasks.publish(after)
        await mark(js, after, events=3)
        await seen(watch, after)
        task, message = await tasks.take()
        assert "is cancelled" in await skip_reason(watch, task, message)
        assert (reads(watch), watch.answered) == (1, 1)
    finally:
        await tasks.delete()


async def test_the_view_keeps_its_bound_and_moves_its_horizon_past_what_it_dropped(
    watcher: NatsClient, js: JetStreamContext
) -> None:
    ticks = iter(range(1_000, 2_000))  # the watch's clock: one tick per reading
    watch = EndedWatch(watcher, CountedRuns(watcher.jetstream()), runs_max=3,
                       clock=lambda: next(ticks))  # fmt: skip
    await watch.start()
    assert watch.view.horizon_ms == 1_000
    runs = [run_id() for _ in range(10)]
    for run in runs:
        await mark(js, run, events=1)
    await seen(watch, runs[-1])
    assert list(watch.view.markers) == runs[-3:], "the newest 3, oldest dropped first"
    # runs[6], the newest dropped, arrived at tick 1_007: the view is whole only after it.
    assert watch.view.horizon_ms == 1_007
    assert not watch.view.covers(1_007 + watch.view.margin_ms)
    await watch.stop()
    assert watch.view.horizon_ms is None


# -- the worker role -----------------------------------------------------------------------


async def test_the_worker_role_may_watch_markers_but_not_write_them_nor_watch_other_buckets(
    tmp_path: Path,
) -> None:
    server: Server
    async with serving(tmp_path / "data") as server, connected_as(server, "worker") as worker:
        assert worker.nc is not None
        watch = EndedWatch(worker.nc, EndedRuns(worker.nc.jetstream()))
        await watch.start()
        assert watch.view.horizon_ms is not None, "the server let the worker watch markers"
        assert not worker.errors, worker.errors
        await worker.refused(f"$KV.{ENDED_BUCKET}.some-run")  # no marker forged by a worker
        await worker.nc.subscribe(f"$KV.{RUNS_BUCKET}.>")
        await worker.nc.flush()
        await wait_for(
            lambda: any("permissions violation for subscription" in e for e in worker.errors),
            timeout_ms=WAIT_MS, what="the server to refuse the worker another bucket",
        )  # fmt: skip
        await watch.stop()


def test_the_watch_limits_are_named_in_settings() -> None:
    assert runtime_settings.ended_watch_runs_max >= 1_000
    assert 0 < runtime_settings.ended_watch_clock_margin_ms <= 60_000
    assert runtime_settings.ended_watch_waiting_max >= 1_000
