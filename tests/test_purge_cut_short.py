"""A purge cut short, and a `run retry` landing in the middle of one (dagnats/runtime/
retention.py `purge_run`, `finish_purge`; dagnats/runtime/ended_runs.py), against a real
nats-server:

- A purge process SIGKILLed after its history purge, before the run's caches went (its
  ended-run marker, snapshot and armed timers): `run delete` again said the run was not found
  and left them, and so did serve, whose sweep no longer lists a run whose rows it dropped.
  The marker lasts days: a worker skipped every task of a new run under the id whose history
  held no more events than the old run's (the new run stalled); a timer left armed fires into
  the new run. Now `run delete` and serve's reader of the retention log finish such a purge,
  and a marker names the life it is of, so an old life's skips no task of a new one.
- A `run retry` appended after the purge read the run lost the timers it armed (the purge cut
  the schedules up to the commands stream's last sequence read after the run was): the
  cut-off is now read before the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

from dagnats.client.errors import RunNotFoundError
from dagnats.runtime import settings
from dagnats.runtime.ended_runs import (
    ENDED_STREAM,
    EndedMarker,
    EndedRuns,
    marker_subject,
    purge_old_marker,
    skip_reason,
)
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.projector import load_state
from dagnats.runtime.projector_snapshot import KvSnapshotStore
from dagnats.runtime.resources import COMMANDS_STREAM, SCHEDULE_PREFIX
from dagnats.runtime.retention import (
    RETENTION_PREFIX,
    ReopenedWhilePurgingError,
    Retention,
    RunStillOpenError,
    finish_purge,
    purge_run,
)
from dagnats.runtime.timers import JetStreamTimers
from kernel.commands import AnyCommand, CancelRun, CompleteTask, ReopenRun, StartRun
from kernel.effects import EnqueueTask, task_msg_id
from kernel.state import RunState
from projections.snapshot import make_snapshot
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for
from tests.projection_support import run_messages, tables_caught_up, two_step_workflow
from tests.strategies import RUN_ID, replay
from tests.test_lifecycle_e2e import wait_status
from tests.test_query_tables_serve import append

FAR_MS = 4_000_000_000_000  # (a timer that never fires during a test)
KILLED_AFTER_HISTORY = textwrap.dedent(
    """
    import asyncio, pathlib, sys, time
    import nats
    from dagnats.runtime import retention
    from dagnats.runtime.resources import HISTORY_STREAM

    async def main(url, run_id, flag, stage, role=""):
        if role:  # (a serve's server: its admin credential, from $DAGNATS_DATA_DIR)
            from dagnats.client import Client
            js = (await Client.connect(url, role=role)).connection.js
        else:
            js = (await nats.connect(url)).jetstream()
        purge = js.purge_stream

        async def purge_stream(name, **options):
            if name == HISTORY_STREAM and stage == "before":  # recorded: held until killed
                pathlib.Path(flag).write_text("recorded")
                await asyncio.Event().wait()
            done = await purge(name, **options)
            if name == HISTORY_STREAM:  # the history is gone: hold here until killed
                pathlib.Path(flag).write_text("purged")
                await asyncio.Event().wait()
            return done

        js.purge_stream = purge_stream
        await retention.purge_run(js, run_id, reason="run delete",
                                   at_ms=int(time.time() * 1000))

    asyncio.run(main(*sys.argv[1:]))
    """
)


def cancelled(run_id: str, seed: int) -> list[bytes]:
    """The messages of a two-step run cancelled after its first step, its life's seed `seed`,
    and of its reopen (`dagnats run retry`)."""
    workflow = two_step_workflow()
    commands: list[AnyCommand] = [
        StartRun(run_id=RUN_ID, at_ms=1_000, workflow=workflow, seed=seed),
        CompleteTask(run_id=RUN_ID, at_ms=2_000, step_id="a", attempt=1),
        CancelRun(run_id=RUN_ID, at_ms=3_000, reason="changed my mind"),
        ReopenRun(run_id=RUN_ID, at_ms=4_000),
    ]
    return run_messages(replay(workflow, commands), run_id)


async def ended_run(js: JetStreamContext, run_id: str, seed: int) -> RunState:
    """A cancelled run with what a run leaves besides history: its ended marker, snapshot and
    a timer still armed (an engine stopped before cancelling it)."""
    log = JetStreamEventLog(js)
    await append(log, run_id, cancelled(run_id, seed)[:3])
    state, last_seq = await load_state(log, None, run_id)
    assert state.status == "cancelled", state.status
    await EndedRuns(js).mark(state, at_ms=3_000)
    await KvSnapshotStore(js).put_many([make_snapshot(state, last_seq)])
    await JetStreamTimers(js, partitions=1).arm(run_id, "old.1", FAR_MS, b"{}")
    return state


async def leftovers(js: JetStreamContext, run_id: str) -> dict[str, bool]:
    """Which of the run's caches are still there."""
    schedules = await schedules_of(js, run_id)
    return {
        "marker": await EndedRuns(js).ended(run_id) is not None,
        "snapshot": await KvSnapshotStore(js).get(run_id) is not None,
        "timer": bool(schedules),
    }


async def schedules_of(js: JetStreamContext, run_id: str) -> list[str]:
    info = await js.stream_info(COMMANDS_STREAM, subjects_filter=f"{SCHEDULE_PREFIX}.{run_id}.>")
    return sorted(info.state.subjects or {})


def new_life_task(run_id: str, seed: int) -> EnqueueTask:
    """The first task of a new run under the id: one event in its history so far."""
    return EnqueueTask(
        run_id=run_id, step_id="a", attempt=1, task="fetch", input=msgspec.Raw(b"null"),
        metadata=msgspec.Raw(b"null"), msg_id=task_msg_id(run_id, "a", 1, seed),
        history_events=1,
    )  # fmt: skip


async def killed_after_history_purge(
    url: str, run_id: str, tmp_path: Path, env: dict[str, str] | None = None,
    stage: str = "after",
) -> None:  # fmt: skip
    """`purge_run` in a process of its own, SIGKILLed once it purged the run's history (or,
    `stage` "before", once it recorded the purge, before the history purge; `env`: a serve's,
    the purge connecting as its admin)."""
    flag = tmp_path / f"{run_id}.purged"
    role = [] if env is None else ["admin"]
    env = env or {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_HISTORY, url, run_id, str(flag), stage, *role], env=env
    )
    try:
        await wait_for(flag.exists, timeout_ms=20_000, what=f"the purge {stage} its history purge")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def test_an_old_lives_marker_skips_no_task_of_a_new_life(
    private_js: JetStreamContext,
) -> None:
    old = await ended_run(private_js, "stale", seed=1)
    markers = EndedRuns(private_js)
    assert old.event_count > 1, "the new life's first task is older than the old life's end"
    assert await skip_reason(markers, new_life_task("stale", seed=2)) == "", (
        "a new life's task is not skipped by the old life's marker"
    )
    assert "skipped" in await skip_reason(markers, new_life_task("stale", seed=1)), (
        "a task of the life that ended is"
    )


async def test_run_delete_finishes_a_purge_killed_after_its_history_purge(
    private_server: EmbeddedNats, private_js: JetStreamContext, tmp_path: Path
) -> None:
    js = private_js
    await ended_run(js, "cut", seed=1)
    await killed_after_history_purge(private_server.url, "cut", tmp_path)
    assert await JetStreamEventLog(js).last_seq("cut") == 0, "the history purge was done"
    assert await leftovers(js, "cut") == {"marker": True, "snapshot": True, "timer": True}

    with pytest.raises(RunNotFoundError):
        await purge_run(js, "cut", reason="run delete", at_ms=6_000)
    assert await leftovers(js, "cut") == {"marker": False, "snapshot": False, "timer": False}


async def test_serve_finishes_a_purge_killed_after_its_history_purge(
    private_server: EmbeddedNats, private_js: JetStreamContext, tmp_path: Path
) -> None:
    js = private_js
    await ended_run(js, "cut", seed=1)
    path = tmp_path / "serve.sqlite"
    await tables_caught_up(js, path)
    await killed_after_history_purge(private_server.url, "cut", tmp_path)

    await Retention(js, path).drop_rows()  # (serve's reader of the log, without an age)
    assert await leftovers(js, "cut") == {"marker": False, "snapshot": False, "timer": False}


async def test_serve_with_an_age_redoes_a_purge_killed_before_its_history_purge(
    private_server: EmbeddedNats, private_js: JetStreamContext, tmp_path: Path
) -> None:
    """The record was written, the history not purged: serve dropped the run's rows, so its
    sweep never listed the run again and the history stayed; now its reader of the log (with
    the admin connection of `--retention`) purges it again."""
    js = private_js
    await ended_run(js, "held", seed=1)
    path = tmp_path / "serve.sqlite"
    await tables_caught_up(js, path)
    await killed_after_history_purge(private_server.url, "held", tmp_path, stage="before")
    assert await JetStreamEventLog(js).last_seq("held") > 0, "the history was not purged"

    await Retention(js, path, retention_ms=3_600_000, admin=js).drop_rows()
    assert await JetStreamEventLog(js).last_seq("held") == 0, "the purge was done again"
    assert await leftovers(js, "held") == {"marker": False, "snapshot": False, "timer": False}


@pytest.mark.parametrize("when", ["before the cut-off", "after the record"])
async def test_a_retry_landing_mid_purge_keeps_its_timers(
    private_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """`run retry` appends its reopen, then arms its timers, while a purge of the run is at
    `when`: the purge refuses the reopened run or keeps what the reopen appended; either way
    the reopen's timer stays armed."""
    js, log = private_js, JetStreamEventLog(private_js)
    await ended_run(js, "retried", seed=1)
    reopen = cancelled("retried", seed=1)[3]
    landed: list[str] = []

    async def retry() -> None:
        if not landed:
            landed.append(when)
            await append(log, "retried", [reopen])
            await JetStreamTimers(js, partitions=1).arm("retried", "retry.1", FAR_MS, b"{}")

    stream_info, publish = js.stream_info, js.publish

    async def stream_info_then(name: str, *args: Any, **options: Any) -> Any:
        if when == "before the cut-off" and name == COMMANDS_STREAM and not options:
            await retry()
        return await stream_info(name, *args, **options)

    async def publish_then(subject: str, *args: Any, **options: Any) -> Any:
        if when == "after the record" and subject.startswith(RETENTION_PREFIX):
            done = await publish(subject, *args, **options)
            await retry()
            return done
        return await publish(subject, *args, **options)

    monkeypatch.setattr(js, "stream_info", stream_info_then)
    monkeypatch.setattr(js, "publish", publish_then)
    with pytest.raises((RunStillOpenError, ReopenedWhilePurgingError)):
        await purge_run(js, "retried", reason="run delete", at_ms=6_000)
    assert landed == [when], "the retry landed in the purge"
    assert "dagnats.sched.retried.retry.1" in await schedules_of(js, "retried"), (
        "the reopen's timer is kept"
    )
    assert await log.last_seq("retried") > 0, "the reopen's history is kept"


async def test_a_new_run_under_the_id_of_a_purge_killed_midway_completes(
    procs: Processes, tmp_path: Path
) -> None:
    """Through a real serve and worker: a run completes, its purge is SIGKILLed after the
    history purge (the ended marker left), the id is started again while no worker serves
    (its tasks wait, so the worker reads the marker): the new run completes (its worker
    skipped its first task as of the old run's end, and it stalled)."""
    serve = await procs.serve(tmp_path / "data", http=None)
    worker = procs.cli_worker(serve.url)
    steps: list[dict[str, Any]] = [{"id": "only", "task": "fault.work"}]
    async with connected(serve.url) as client, connected(serve.url, "admin") as admin:
        await client.register_workflow(workflow("again", steps))
        run_id = await client.start("again", {"n": 1}, run_id="order-9")
        await wait_status(client, run_id, "completed")
        markers = EndedRuns(admin.connection.js)

        async def marked() -> bool:
            return await markers.ended(run_id) is not None

        await wait_for(marked, timeout_ms=15_000, what="the ended-run marker")
        await worker.terminate()
        await killed_after_history_purge(serve.url, run_id, tmp_path, procs.env())
        started = time.monotonic()
        assert await client.start("again", {"n": 2}, run_id=run_id) == run_id
        waited_s = 2 * settings.ended_check_min_age_ms / 1000
        await wait_for(lambda: time.monotonic() - started >= waited_s, timeout_ms=5_000,
                       what="the new run's task to be one that waited")  # fmt: skip
        procs.cli_worker(serve.url)
        await wait_status(client, run_id, "completed")
    assert [call["attempt"] for call in procs.calls_of(run_id, "only")] == [1, 1], (
        "each run's task ran once"
    )


async def old_format_marker(js: JetStreamContext, run_id: str, events: int, at_ms: int) -> None:
    """An ended marker as a version before life tags wrote it (no `life`)."""
    data = msgspec.json.encode({"status": "cancelled", "events": events, "at_ms": at_ms})
    await js.publish(marker_subject(run_id), data, stream=ENDED_STREAM)


async def test_serve_purges_an_old_versions_marker_of_a_run_cut_short_started_again(
    private_server: EmbeddedNats, private_js: JetStreamContext, tmp_path: Path
) -> None:
    """An older version's purge, cut short after its history purge, left a marker naming no
    life; the id has a new run by the time serve reads the record: serve kept the marker (the
    id has history), and the new run's tasks were skipped (it stalled)."""
    js = private_js
    old = await ended_run(js, "again", seed=1)
    await old_format_marker(js, "again", old.event_count, at_ms=3_000)
    path = tmp_path / "serve.sqlite"
    await tables_caught_up(js, path)
    await killed_after_history_purge(private_server.url, "again", tmp_path)
    await append(JetStreamEventLog(js), "again", cancelled("again", seed=2)[:1])  # (new run)
    markers = EndedRuns(js)
    assert "skipped" in await skip_reason(markers, new_life_task("again", seed=2)), (
        "the old marker skips the new run's task"
    )

    await Retention(js, path).drop_rows()  # (serve's reader of the log)
    assert await markers.ended("again") is None, "the old version's marker is purged"
    assert await skip_reason(markers, new_life_task("again", seed=2)) == ""
    assert await JetStreamEventLog(js).last_seq("again") > 0, "the new run is kept"


@pytest.mark.parametrize(
    ("life", "after_purge_ms", "purged"),
    [("", 0, True), ("", 1, False), ("x", 0, False)],
    ids=["old-format-before", "old-format-after", "new-format-before"],
)
async def test_finish_purge_with_history_purges_only_an_old_marker_of_the_purged_run(
    private_js: JetStreamContext, life: str, after_purge_ms: int, purged: bool
) -> None:
    """The id has history again: a marker naming no life written at or before the purge
    goes; one written after it (an older engine's, of the new run) or naming a life stays."""
    js, purged_at_ms = private_js, 5_000
    await append(JetStreamEventLog(js), "again", cancelled("again", seed=2)[:1])
    marker = EndedMarker(status="cancelled", events=3, at_ms=purged_at_ms + after_purge_ms,
                         life=life)  # fmt: skip
    await js.publish(marker_subject("again"), msgspec.json.encode(marker), stream=ENDED_STREAM)
    assert await finish_purge(js, "again", purged_at_ms=purged_at_ms) > 0
    found = await EndedRuns(js).ended("again")
    assert (found is None) == purged, (found, purged)


async def test_a_marker_written_while_the_old_one_is_purged_stays(
    private_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new run under the id ends between the read of the old marker and its purge: the
    purge (conditional on the marker read) keeps the new run's marker."""
    js = private_js
    await old_format_marker(js, "again", events=3, at_ms=1_000)
    get_last_msg = js.get_last_msg

    async def read_then_new_marker(*args: Any, **options: Any) -> Any:
        found = await get_last_msg(*args, **options)
        await old_format_marker(js, "again", events=2, at_ms=9_000)  # (the new run ended)
        return found

    monkeypatch.setattr(js, "get_last_msg", read_then_new_marker)
    assert not await purge_old_marker(js, "again", purged_at_ms=5_000)
    monkeypatch.undo()
    found = await EndedRuns(js).ended("again")
    assert found is not None and found.at_ms == 9_000, found
