"""A worker's live view of recently ended runs: the ended-run check without a request per task.

A worker skips the task of a run that already ended (runtime/ended_runs.py: the engine writes
a marker in KV bucket `dagnats_ended` when a run ends). Reading that marker for each task costs
one JetStream request per task on the hottest path, so the worker watches the markers instead:
a KV put is a publish on `$KV.dagnats_ended.<run_id>`, and a core NATS subscription (no
consumer) to `$KV.dagnats_ended.>` sees each one as it is written. The markers it sees go into
a bounded view (`settings.ended_watch_runs_max` runs, oldest dropped first).

The view is whole (it holds every marker written) only from its horizon on: the moment the
subscription began, moved later by a reconnect or a disconnection (markers written meanwhile
were missed), by markers the client dropped (more than `settings.ended_watch_waiting_max`
waiting), and by the arrival of the newest marker the bound dropped. A run ends after its
task was published, so a task the server stored after the horizon plus
`settings.ended_watch_clock_margin_ms` (the server's clock stamps the task, the worker's the
horizon) is checked against the view alone: no request. An older task (a backlog waiting
before the worker started, tasks around a reconnect) or a redelivered one reads its run's
marker as before. A server that refuses the subscription (a deployment whose roles predate
it) leaves the view off: every task reads its marker.

Like the markers, the view is a cache: a task published after its run ended whose marker the
view missed (another engine publishing an old decision's task late) runs, and the engine sets
its stale result aside. This module subscribes and reads; it publishes nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.ended_runs import EndedMarker, EndedRuns, request_timeout_s
from dagnats.runtime.resources import ENDED_BUCKET
from kernel.effects import EnqueueTask

log = logging.getLogger("dagnats.ended")
MARKERS_PREFIX: Final = f"$KV.{ENDED_BUCKET}."
MARKERS_SUBJECT: Final = f"{MARKERS_PREFIX}>"
_marker_decoder = msgspec.json.Decoder(EndedMarker)


class EndedView:
    """The markers seen, at most `runs_max` runs, and from when the view is whole."""

    def __init__(self, runs_max: int, margin_ms: int) -> None:
        assert runs_max >= 1, runs_max
        assert margin_ms >= 0, margin_ms
        self.runs_max = runs_max
        self.margin_ms = margin_ms
        self.markers: OrderedDict[str, tuple[EndedMarker, int]] = OrderedDict()  # (, seen at)
        self.horizon_ms: int | None = None  # None: not watching

    def begin(self, at_ms: int) -> None:
        """The view is whole from `at_ms` on (markers seen before stay: they are still true)."""
        self.horizon_ms = at_ms if self.horizon_ms is None else max(self.horizon_ms, at_ms)

    def end(self) -> None:
        """Not watching (disconnected): no task is checked against the view alone."""
        self.horizon_ms = None

    def record(self, run_id: str, marker: EndedMarker, at_ms: int) -> None:
        """`run_id`'s marker, seen at `at_ms`; the oldest seen go beyond the bound, and the
        view is whole only from the newest of them on."""
        self.markers.pop(run_id, None)
        self.markers[run_id] = (marker, at_ms)
        while len(self.markers) > self.runs_max:
            _, (_, seen_ms) = self.markers.popitem(last=False)
            if self.horizon_ms is not None:
                self.horizon_ms = max(self.horizon_ms, seen_ms)
        assert len(self.markers) <= self.runs_max

    def covers(self, published_ms: int) -> bool:
        """Whether the marker of a task the server stored at `published_ms` would be here."""
        horizon = self.horizon_ms
        return horizon is not None and published_ms > horizon + self.margin_ms

    def marker(self, run_id: str) -> EndedMarker | None:
        seen = self.markers.get(run_id)
        return None if seen is None else seen[0]


class EndedWatch:
    """A worker's check of tasks against ended runs: the live view when it covers the task,
    else one marker read (`EndedRuns.ended`). `answered` and `looked_up` count them."""

    def __init__(
        self, nc: NatsClient, lookups: EndedRuns, *,
        runs_max: int = settings.ended_watch_runs_max,
        margin_ms: int = settings.ended_watch_clock_margin_ms,
        waiting_max: int = settings.ended_watch_waiting_max,
        clock: Callable[[], int] = now_ms,
    ) -> None:  # fmt: skip
        assert waiting_max >= 1, waiting_max
        self.nc = nc
        self.lookups = lookups
        self.view = EndedView(runs_max, margin_ms)
        self.waiting_max = waiting_max
        self.clock = clock
        self.answered = 0  # checks answered by the view (no request)
        self.looked_up = 0  # checks that read the run's marker (one request)
        self._subscription: Subscription | None = None
        self._reconnects = 0
        self._taken = 0  # markers taken in (from the client's queue)
        self._dropped_logged = False

    async def start(self) -> None:
        """Subscribe to the markers' writes and begin the view; without the subscription
        (refused, or failed) every check reads its marker."""
        nc = self.nc
        try:
            subscription = await nc.subscribe(
                MARKERS_SUBJECT, cb=self._on_marker, pending_msgs_limit=self.waiting_max
            )
            await nc.flush(timeout=int(request_timeout_s))  # the server has the subscription now
        except Exception as error:
            log.warning("ended-run markers cannot be watched (%s: %s); each task reads its "
                        "run's marker", type(error).__name__, error)  # fmt: skip
            return
        refused = str(nc.last_error or "").lower()
        if "permissions violation" in refused and MARKERS_SUBJECT.lower() in refused:
            log.warning("the server does not let this worker watch ended-run markers (%s); "
                        "each task reads its run's marker", refused)  # fmt: skip
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            return
        self._subscription = subscription
        self._reconnects = nc.stats["reconnects"]
        self.view.begin(self.clock())

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        self.view.end()
        if subscription is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def marker_of(
        self, run_id: str, published_ms: int | None, redelivered: bool
    ) -> EndedMarker | None:
        """The run's marker (None: not ended), from the view when it covers a first delivery
        stored at `published_ms`, else read from the bucket (one request)."""
        self._catch_up()
        if not redelivered and published_ms is not None and self.view.covers(published_ms):
            self.answered += 1
            return self.view.marker(run_id)
        self.looked_up += 1
        return await self.lookups.ended(run_id)

    async def _on_marker(self, message: Msg) -> None:
        # (no await: nats-py runs it as soon as it takes the message from its queue)
        self._taken += 1
        self._record(message)

    def _record(self, message: Msg) -> None:
        run_id = message.subject[len(MARKERS_PREFIX) :]
        try:
            marker = _marker_decoder.decode(message.data or b"")
        except msgspec.DecodeError:
            return  # a delete marker (no payload), or not ours
        self.view.record(run_id, marker, self.clock())

    def _catch_up(self) -> None:
        """Take in the markers waiting in the client (they arrived before the task being
        checked); begin the view again after a reconnect or dropped markers, end it while
        disconnected."""
        subscription = self._subscription
        if subscription is None:
            return
        if not self.nc.is_connected:
            self.view.end()
            return
        reconnects = self.nc.stats["reconnects"]
        if reconnects != self._reconnects or self.view.horizon_ms is None:
            self._reconnects = reconnects
            self.view.begin(self.clock())
        # nats-py hands messages to the callback from this queue in its own task, which may
        # not have run yet; taking them here keeps the view ahead of the tasks fetched after.
        waiting = subscription._pending_queue
        for _ in range(waiting.qsize()):
            message = waiting.get_nowait()
            subscription._pending_size -= len(message.data)
            waiting.task_done()
            self._taken += 1
            self._record(message)
        if subscription.delivered > self._taken:  # the client's queue was full: some dropped
            self._taken = subscription.delivered
            self.view.begin(self.clock())
            if not self._dropped_logged:
                log.warning("ended-run markers arrived faster than this worker took them in "
                            "(over %d waiting); its view of ended runs begins again",
                            self.waiting_max)  # fmt: skip
            self._dropped_logged = True


async def watch_ended_runs(tasks: object) -> EndedWatch | None:
    """The started check of a worker fetching from `tasks` (a JetStream queue), else None."""
    js = getattr(tasks, "js", None)
    if not isinstance(js, JetStreamContext):
        return None
    watch = EndedWatch(js._nc, EndedRuns(js))
    await watch.start()
    return watch


async def skip_reason(watch: EndedWatch | None, task: EnqueueTask, message: object) -> str:
    """Why the worker must not call the handler of `task`, delivered in `message` ("" when
    it may)."""
    if watch is None:
        return ""
    published_ms = getattr(message, "published_ms", None)
    redelivered = getattr(message, "num_delivered", 1) > 1
    marker = await watch.marker_of(task.run_id, published_ms, redelivered)
    if marker is None or task.history_events > marker.events:
        return ""  # not ended, or the task is of a later life of the run (reopened)
    return (
        f"run {task.run_id} is {marker.status}: its task {task.step_id} attempt {task.attempt} "
        "is skipped without calling the handler"
    )


async def stop_watch(watch: EndedWatch | None) -> None:
    if watch is not None:
        await watch.stop()
