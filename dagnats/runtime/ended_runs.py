"""Ended-run markers: a worker skips the task of a run that already ended.

When a run ends (completed, failed, cancelled, terminated, ...), the engine writes a small
marker in the KV bucket `dagnats_ended` (key: the run id): its status and how many events its
history held then. A worker reads the marker of a task's run before calling the handler (one
direct get, not a JetStream API request; nats-server lets the worker role read this bucket and
no other) and skips the task, acked and logged, when the run had ended by the time the task
was decided: a task carries the history size it was decided at
(`EnqueueTask.history_events`), so the task of a run reopened after its end (`dagnats run
retry`) is newer than the marker and runs. A marker also names the life of the run that ended
(its life tag, kernel/effects `life_tag`): the task of another life of the id (started again
after a purge, whose marker a purge cut short left behind) is never skipped by it, however
few events its history holds; a marker written before markers named their life, which a purge
cut short by an older version left behind, is purged by the purge's finish however long its
id has a new run (`purge_old_marker`). Markers are a cache: one that was not written (the
engine stopped in between) only means the handler runs and the engine sets its stale result
aside, as before; they expire after `ended_marker_ttl_ms`.

Only a task that waited reads the marker (`check_due`): one delivered for the first time and
stored less than `settings.ended_check_min_age_ms` before the worker took it runs without the
round trip (its run could as well end while its handler runs, which no check catches); older
tasks, redelivered ones and those without a stored time read it.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from dagnats.runtime import settings
from dagnats.runtime.js_publish import JetStreamPublisher
from dagnats.runtime.log import EXPECTED_LAST_SUBJECT_SEQ_HEADER, WRONG_LAST_SEQUENCE
from dagnats.runtime.resources import ENDED_BUCKET, check_run_id
from kernel.effects import EnqueueTask, life_of, life_tag
from kernel.state import RunState, is_terminal

log = logging.getLogger("dagnats.ended")
ENDED_STREAM: Final = f"KV_{ENDED_BUCKET}"
request_timeout_s: Final = 2.0


class EndedMarker(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    events: int  # the run's history size when it ended
    at_ms: int
    life: str = ""  # the life tag of the run that ended ("": a marker written before it was)


def marker_subject(run_id: str) -> str:
    return f"$KV.{ENDED_BUCKET}.{check_run_id(run_id)}"


class EndedRuns:
    """Writes (engine) and reads (worker) ended-run markers."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._failing = False
        self._direct = True  # until the bucket or the server refuses direct gets (`_last`)
        self._publisher: JetStreamPublisher | None = None  # (made at the first mark)

    async def _last(self, subject: str) -> RawStreamMsg:
        """The marker's message: a direct get (no JetStream API request: a worker reads a
        marker before every task), else, from a bucket or server that does not answer
        those (`NoRespondersError`: made by an older version), a message get from then on; a
        direct get that timed out is followed by a message get for this read only."""
        if self._direct:
            try:
                return await self.js.get_last_msg(ENDED_STREAM, subject, direct=True)
            except nats.errors.NoRespondersError:
                log.info("ended-run markers: no direct gets here; message gets from now on")
                self._direct = False
            except nats.errors.TimeoutError:
                log.debug("ended-run marker: a direct get timed out; a message get this once")
        return await self.js.get_last_msg(ENDED_STREAM, subject)

    async def mark(self, state: RunState, at_ms: int) -> None:
        """Record that the run of `state` ended (never raises: markers are a cache)."""
        assert is_terminal(state), state.status
        marker = EndedMarker(
            status=state.status, events=state.event_count, at_ms=at_ms, life=life_tag(state.seed)
        )
        if self._publisher is None:  # (acknowledged through one reply subscription in all)
            self._publisher = JetStreamPublisher(self.js._nc.jetstream(timeout=request_timeout_s))
        try:
            await self._publisher.publish(
                marker_subject(state.run_id), msgspec.json.encode(marker), stream=ENDED_STREAM,
                headers={},
            )  # fmt: skip
        except Exception as error:
            if not self._failing:
                log.warning("ended-run markers cannot be written (%s: %s); workers may call "
                            "handlers of ended runs", type(error).__name__, error)  # fmt: skip
            self._failing = True
        else:
            self._failing = False

    async def ended(self, run_id: str) -> EndedMarker | None:
        """The run's marker, None when it has none (or it cannot be read: the task runs)."""
        try:
            found = await self._last(marker_subject(run_id))
        except nats.js.errors.NotFoundError:
            return None
        except Exception as error:
            if not self._failing:
                log.warning("ended-run markers cannot be read (%s: %s); tasks run without the "
                            "check", type(error).__name__, error)  # fmt: skip
            self._failing = True
            return None
        self._failing = False
        try:
            return msgspec.json.decode(found.data or b"", type=EndedMarker)
        except msgspec.DecodeError:
            return None  # a delete marker, or not ours


async def purge_old_marker(js: JetStreamContext, run_id: str, purged_at_ms: int) -> bool:
    """Purge the run's ended marker if it names no life (written by a version before life
    tags: it would skip the tasks of any run under the id) and was written at or before a
    purge of the id at `purged_at_ms` (it is of the life purged, not of a run since). The
    purge is conditional on the marker read: one written meanwhile stays. Returns whether it
    purged one.

    Raises:
        nats.errors.Error: the server did not answer.
    """
    subject = marker_subject(run_id)
    try:
        found = await js.get_last_msg(ENDED_STREAM, subject)
    except nats.js.errors.NotFoundError:
        return False
    try:
        marker = msgspec.json.decode(found.data or b"", type=EndedMarker)
    except msgspec.DecodeError:
        return False  # (purged or deleted already)
    if marker.life or marker.at_ms > purged_at_ms or found.seq is None:
        return False
    headers = {
        "KV-Operation": "PURGE",
        "Nats-Rollup": "sub",
        EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(found.seq),
    }
    try:
        await js.publish(subject, b"", stream=ENDED_STREAM, headers=headers)
    except nats.js.errors.APIError as error:
        if error.err_code != WRONG_LAST_SEQUENCE:
            raise
        return False  # (a marker written since the read: a run of the id ended again)
    log.info("run %s: the ended marker of its purged run (at %d) purged", run_id, marker.at_ms)
    return True


def check_due(num_delivered: int, stored_ms: int | None, now_ms: int) -> bool:
    """Whether a worker reads the marker of a task's run before calling its handler: unless
    the task is delivered for the first time and was stored (`stored_ms`, the server's clock)
    within `settings.ended_check_min_age_ms` of `now_ms` (the worker's clock), either way. A
    worker clock off the server's by S reads every marker but those of tasks that waited
    within that bound of S: a clock far behind does not turn the check off."""
    assert num_delivered >= 1, num_delivered
    if num_delivered > 1 or stored_ms is None:
        return True
    return abs(now_ms - stored_ms) >= settings.ended_check_min_age_ms


async def skip_reason(markers: EndedRuns | None, task: EnqueueTask) -> str:
    """Why the worker must not call the handler of `task` ("" when it may)."""
    if markers is None:
        return ""
    marker = await markers.ended(task.run_id)
    if marker is None or task.history_events > marker.events:
        return ""  # not ended, or the task is newer than its end (reopened)
    if marker.life and life_of(task.msg_id) not in (marker.life, msgspec.UNSET):
        return ""  # the task is of another life of the id: the marker is an old life's
    return (
        f"run {task.run_id} is {marker.status}: its task {task.step_id} attempt {task.attempt} "
        "is skipped without calling the handler"
    )


def ended_runs_of(tasks: object) -> EndedRuns | None:
    """The markers a worker fetching from `tasks` reads (a JetStream queue), else None."""
    js = getattr(tasks, "js", None)
    return EndedRuns(js) if isinstance(js, JetStreamContext) else None
