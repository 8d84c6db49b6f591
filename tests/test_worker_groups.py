"""Worker groups and the worker directory, below the processes: lanes and subjects
(runtime/resources), the workflow field, the kernel stamping a step's group on its tasks,
the scoped worker permissions, and the directory on a real nats-server (entries expire)."""

from __future__ import annotations

import msgspec
import pytest
from nats.js import JetStreamContext

from dagnats.runtime.resources import (
    SubjectTokenError,
    split_lane,
    task_consumer_name,
    task_lane,
    task_subject,
)
from dagnats.runtime.roles import permissions
from dagnats.runtime.workers_directory import DirectoryWriter, WorkerEntry, list_workers, serving
from dagnats.worker import Worker
from dagnats.worker_groups import check_groups, lanes
from kernel.effects import EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.workflow import parse_workflow
from tests.kernel_dsl import complete, given, start


def test_a_grouped_lane_has_a_subject_and_consumer_no_task_type_has() -> None:
    assert task_lane("embed") == "embed" and split_lane("embed") == ("embed", "")
    lane = task_lane("ml.embed", "gpu")
    assert lane == "ml.embed@gpu" and split_lane(lane) == ("ml.embed", "gpu")
    assert task_subject(lane) == "dagnats.task.ml.embed.@gpu"
    assert task_subject("ml.embed") == "dagnats.task.ml.embed"
    names = {task_consumer_name(x) for x in ("ml.embed", "ml_embed", lane, "ml.embed.gpu")}
    assert len(names) == 4, names
    with pytest.raises(SubjectTokenError, match="group 'g p u'"):
        task_lane("embed", "g p u")
    with pytest.raises(SubjectTokenError, match="group ''"):
        task_subject("embed@")
    with pytest.raises(SubjectTokenError, match="task_type 'a b'"):
        task_subject("a b@gpu")


def test_the_group_field_is_read_checked_and_left_out_when_absent() -> None:
    definition = parse_workflow(
        b'{"name": "w", "steps": [{"id": "a", "task": "t", "group": "gpu"},'
        b' {"id": "b", "task": "t"}]}'
    )
    assert [s.worker_group for s in definition.steps] == ["gpu", ""]
    encoded = msgspec.json.encode(definition.steps[1])
    assert b"group" not in encoded, "an ungrouped step encodes as before groups existed"
    with pytest.raises(WorkflowInvalidError, match=r"steps\[0\]\.group"):
        parse_workflow(b'{"name": "w", "steps": [{"id": "a", "task": "t", "group": "a.b"}]}')


def test_the_kernel_addresses_each_task_to_its_steps_group() -> None:
    definition = parse_workflow(
        b'{"name": "w", "steps": [{"id": "a", "task": "t", "group": "gpu"},'
        b' {"id": "b", "task": "t", "depends_on": ["a"]}]}'
    )
    first = given().when(start(definition))
    assert [(e.step_id, e.group) for e in first.effects if isinstance(e, EnqueueTask)] == [
        ("a", "gpu")
    ]
    then = given(start(definition)).when(complete("a"))
    assert [(e.step_id, e.group) for e in then.effects if isinstance(e, EnqueueTask)] == [
        ("b", "")
    ]


def test_worker_lanes_and_group_checks() -> None:
    assert lanes(["b", "a"], ()) == ["a", "b"]
    assert lanes(["a"], ("gpu", "cpu")) == ["a@gpu", "a@cpu"]
    assert check_groups(["gpu", "gpu"]) == ("gpu",)
    with pytest.raises(ValueError, match=r"group 'x\.y'"):
        Worker(groups=["x.y"])


def test_a_scoped_worker_credential_may_name_grouped_lanes_and_write_its_own_entry() -> None:
    rules = permissions("worker", "worker-gpu1", task_types=("embed@gpu",)).publish_allow
    consumer = task_consumer_name("embed@gpu")
    assert f"$JS.API.CONSUMER.MSG.NEXT.DAGNATS_TASKS.{consumer}" in rules
    assert f"$JS.API.CONSUMER.CREATE.DAGNATS_TASKS.{consumer}.dagnats.task.embed.@gpu" in rules
    assert "$KV.dagnats_workers.worker-gpu1.*" in rules
    assert not any(r.startswith("$KV.dagnats_workers.worker.") for r in rules)


def _entry(worker_id: str, heartbeat_ms: int, groups: tuple[str, ...] = ()) -> WorkerEntry:
    return WorkerEntry(
        worker_id=worker_id, user="worker", task_types=("embed",), groups=groups,
        concurrency=4, in_flight=1, heartbeat_ms=heartbeat_ms, beat_interval_ms=100,
        started_ms=heartbeat_ms,
    )  # fmt: skip


async def test_the_directory_lists_live_entries_and_forgets_removed_ones(
    private_js: JetStreamContext,
) -> None:
    writer = DirectoryWriter(private_js, "worker")
    now = 1_000_000
    await writer.put(_entry("host.one-1", now, ("gpu",)))
    await writer.put(_entry("host-2", now - 301))  # missed 3 beats of 100 ms: not live
    live = await list_workers(private_js, now)
    assert [e.worker_id for e in live] == ["host.one-1"]
    every = await list_workers(private_js, now, include_stale=True)
    assert sorted(e.worker_id for e in every) == ["host-2", "host.one-1"]
    assert [e.worker_id for e in serving(live, "embed", "gpu")] == ["host.one-1"]
    assert serving(live, "embed", "") == [], "a grouped worker takes no ungrouped tasks"
    await writer.remove("host.one-1")
    assert await list_workers(private_js, now) == []
