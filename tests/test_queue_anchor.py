"""The work-queue streams' anchors (dagnats/runtime/queue_anchor.py), against real
nats-servers: `ensure_anchors` places one message per stream, once (also when two starts
race); no task consumer of any lane and no engine consumer (single or per partition) ever
sees one; a real `dagnats serve` places them at its start, runs a workflow end to end beside
them, and `dagnats status` counts none in its queue depths; no task type or group can name
an anchor's subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dagnats.runtime import queue_anchor, settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamCommandQueue
from dagnats.runtime.queue_anchor import (
    ANCHOR_PAYLOAD,
    ANCHORS,
    ensure_anchors,
    only_anchor_stored,
    queued,
)
from dagnats.runtime.resources import (
    COMMAND_SUBJECTS,
    COMMANDS_ANCHOR_SUBJECT,
    COMMANDS_STREAM,
    ENGINE_CONSUMER,
    TASKS_ANCHOR_SUBJECT,
    TASKS_STREAM,
    SubjectTokenError,
    command_partition_filter,
    ensure_resources,
    schedule_subject,
    task_consumer_name,
    task_lane,
    task_subject,
)
from tests.fault_support import Processes, connected, read_dead, role_options, workflow
from tests.nats_fixtures import connect, wait_for

run_timeout_s = 30.0
drain_timeout_ms = 20_000


def matches(filter_subject: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more trailing tokens."""
    wanted, tokens = filter_subject.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


def test_the_matcher_itself() -> None:
    assert matches("dagnats.task.>", TASKS_ANCHOR_SUBJECT)
    assert matches("dagnats.sched.>", COMMANDS_ANCHOR_SUBJECT)
    assert not matches("dagnats.task.a", "dagnats.task.a.@g")
    assert matches("dagnats.*.x", "dagnats.task.x") and not matches("dagnats.*", "dagnats.a.b")


# -- no subject of a consumer, a task or a timer is an anchor ---------------------------------


def test_a_task_type_or_group_naming_the_anchor_is_refused_with_the_rule() -> None:
    with pytest.raises(SubjectTokenError) as refused:
        task_subject("@anchor")
    assert refused.value.field == "task_type" and refused.value.value == ""
    with pytest.raises(SubjectTokenError) as refused:
        task_subject("@anchor.x")
    assert refused.value.field == "task_type"
    with pytest.raises(SubjectTokenError) as refused:
        task_lane("work", "@anchor")
    assert refused.value.field == "group" and refused.value.value == "@anchor"
    assert "A-Z a-z 0-9" in refused.value.rule
    # The nearest a grouped lane comes: one token more, so no filter of it matches the anchor.
    grouped = task_subject(task_lane("anchor", "g"))
    assert grouped == "dagnats.task.anchor.@g" and not matches(grouped, TASKS_ANCHOR_SUBJECT)


_ids = st.text(alphabet="ab_-.@*>9", min_size=1, max_size=12)


@given(lane=_ids, group=st.one_of(st.just(""), _ids))
def test_no_task_subject_of_any_lane_matches_an_anchor(lane: str, group: str) -> None:
    try:
        subject = task_subject(task_lane(lane, group) if group else lane)
    except SubjectTokenError:
        return
    for anchor in (TASKS_ANCHOR_SUBJECT, COMMANDS_ANCHOR_SUBJECT):
        assert subject != anchor and not matches(subject, anchor), (lane, group, subject)


@given(partition=st.integers(0, settings.partitions_max - 1), run=_ids, timer=_ids)
def test_no_command_filter_or_schedule_subject_matches_an_anchor(
    partition: int, run: str, timer: str
) -> None:
    filters = [COMMAND_SUBJECTS, command_partition_filter(partition)]
    with contextlib.suppress(SubjectTokenError):  # (timers purge by exact subject)
        filters.append(schedule_subject(run, timer))
    for anchor in (TASKS_ANCHOR_SUBJECT, COMMANDS_ANCHOR_SUBJECT):
        assert not any(matches(f, anchor) for f in filters), (filters, anchor)


# -- ensure_anchors on a server of the test's own ----------------------------------------------


async def anchor_counts(js: JetStreamContext) -> dict[str, int]:
    """Messages on each work-queue stream's anchor subject (0 or 1; more only by hand)."""
    counts: dict[str, int] = {}
    for stream, subject in ANCHORS:
        info = await js.stream_info(stream, subjects_filter=subject)
        counts[stream] = int((info.state.subjects or {}).get(subject, 0))
    return counts


async def test_ensure_anchors_places_one_per_stream_once(private_js: JetStreamContext) -> None:
    assert await anchor_counts(private_js) == {TASKS_STREAM: 0, COMMANDS_STREAM: 0}
    assert await ensure_anchors(private_js) == 2
    assert await ensure_anchors(private_js) == 0  # idempotent
    assert await anchor_counts(private_js) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}
    for stream, subject in ANCHORS:
        message = await private_js.get_last_msg(stream, subject)
        assert message.data == ANCHOR_PAYLOAD
        assert await queued(private_js, stream) == 0  # an anchor waits for nobody
        assert await only_anchor_stored(private_js, stream)  # a deployment that ran nothing


async def test_concurrent_starts_store_one_anchor_each(private_server: EmbeddedNats) -> None:
    clients = [await connect(private_server.url) for _ in range(3)]
    try:
        contexts = [client.jetstream() for client in clients]
        await ensure_resources(contexts[0])
        placed = await asyncio.gather(*(ensure_anchors(js) for js in contexts))
        assert sum(placed) == 2, placed  # each stream's anchor stored by exactly one of them
        assert await anchor_counts(contexts[0]) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}
    finally:
        for client in clients:
            await client.close()


async def test_an_anchor_purged_by_hand_is_placed_again(private_js: JetStreamContext) -> None:
    await ensure_anchors(private_js)
    await private_js.purge_stream(TASKS_STREAM)  # within the duplicate window of its id
    assert await anchor_counts(private_js) == {TASKS_STREAM: 0, COMMANDS_STREAM: 1}
    assert await ensure_anchors(private_js) == 1
    assert await anchor_counts(private_js) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}


async def test_a_refusal_is_logged_and_never_raised(
    private_js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    queue_anchor._warned.discard(TASKS_STREAM)  # (said once per process)
    await private_js.delete_stream(TASKS_STREAM)
    assert await ensure_anchors(private_js) == 1  # the commands stream's, and no exception
    assert "could not place the queue anchor of DAGNATS_TASKS" in caplog.text


async def test_no_consumer_of_any_lane_or_partition_takes_an_anchor(
    connection: Connection,
) -> None:
    js = connection.js
    assert await ensure_anchors(js) == 2
    for lane in ("work", "email.send", task_lane("work", "gpu")):
        assert await connection.tasks.fetch_ready(lane, batch=10) == []
        info = await js.consumer_info(TASKS_STREAM, task_consumer_name(lane))
        assert info.num_pending == 0 and info.num_ack_pending == 0, lane
    single = JetStreamCommandQueue(js, partitions=4)
    assert await single.fetch_commands(batch=10, timeout_ms=200) == []
    info = await js.consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
    assert info.num_pending == 0
    await js.delete_consumer(COMMANDS_STREAM, ENGINE_CONSUMER)  # (filters may not overlap)
    every_partition = [command_partition_filter(p) for p in range(4)]
    partitioned = JetStreamCommandQueue(js, partitions=4, filter_subjects=every_partition)
    assert await partitioned.fetch_commands(batch=10, timeout_ms=200) == []
    info = await js.consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
    assert info.num_pending == 0
    assert await anchor_counts(js) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}  # untouched


# -- a real `dagnats serve` ----------------------------------------------------------------


async def admin_js(url: str, data_dir: Path) -> NatsClient:
    return await nats.connect(url, **role_options(data_dir))


async def test_serve_places_the_anchors_and_a_workflow_runs_beside_them(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None)
    procs.worker(serve.url)
    steps: list[dict[str, Any]] = [
        {"id": "one", "task": "fault.work"},
        {"id": "two", "task": "fault.work", "depends_on": ["one"]},
        {"id": "nap", "type": "sleep", "config": {"duration": "50ms"}, "depends_on": ["two"]},
    ]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("anchored", steps))
        run_ids = [await client.start("anchored", {"n": n}) for n in range(3)]
        for run_id in run_ids:
            state = await client.wait(run_id, timeout_s=run_timeout_s)
            assert state.status == "completed", (run_id, state.status)
    assert sorted(c["step"] for c in procs.calls()) == ["one"] * 3 + ["two"] * 3

    admin = await admin_js(serve.url, data_dir)
    try:
        js = admin.jetstream()

        async def drained() -> bool:
            return all([await queued(js, stream) == 0 for stream, _ in ANCHORS])

        await wait_for(drained, timeout_ms=drain_timeout_ms, what="both work queues drained")
        assert await anchor_counts(js) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}
        assert [letter for letter in await read_dead(js) if b"anchor" in letter.data] == []
        status = procs.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["queues"] == {"commands": 0}
    finally:
        await admin.close()
    assert await serve.process.terminate() == 0, serve.process.tail()

    again = await procs.serve(data_dir, http=None)
    admin = await admin_js(again.url, data_dir)
    try:
        assert await anchor_counts(admin.jetstream()) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}
    finally:
        await admin.close()
    assert await again.process.terminate() == 0, again.process.tail()


async def test_an_unused_deployment_with_its_anchors_may_still_choose_partitions(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None)  # unpartitioned, runs nothing
    assert await serve.process.terminate() == 0, serve.process.tail()
    partitioned = await procs.serve(data_dir, http=None, extra_args=["--partitions", "8"])
    assert partitioned.process.alive()
    admin = await admin_js(partitioned.url, data_dir)
    try:
        assert await anchor_counts(admin.jetstream()) == {TASKS_STREAM: 1, COMMANDS_STREAM: 1}
    finally:
        await admin.close()
    assert await partitioned.process.terminate() == 0, partitioned.process.tail()
