"""Resource names, subject builders and idempotent creation, against a real nats-server."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js import JetStreamContext, api

from dagnats.runtime import settings
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    DEAD_STREAM,
    HISTORY_STREAM,
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    TASKS_STREAM,
    WORKFLOWS_BUCKET,
    ResourceConfigError,
    SubjectTokenError,
    command_partition_filter,
    command_subject,
    dead_subject,
    ensure_resources,
    history_subject,
    partition_of,
    schedule_subject,
    task_subject,
)


def test_subjects_follow_the_architecture() -> None:
    assert history_subject("r1") == "dagnats.history.r1"
    assert command_subject("r1") == f"dagnats.cmd.{zlib.crc32(b'r1') % 16}.r1"
    assert command_subject("r1", 4) == f"dagnats.cmd.{zlib.crc32(b'r1') % 4}.r1"
    assert task_subject("email.send") == "dagnats.task.email.send"
    assert schedule_subject("r1", "retry.step-1.2") == "dagnats.sched.r1.retry.step-1.2"
    assert dead_subject("unknown_run") == "dagnats.dead.unknown_run"
    assert command_partition_filter(3) == "dagnats.cmd.3.>"
    partition = zlib.crc32(b"r1") % 16
    assert command_subject("r1", kind="result") == f"dagnats.cmd.{partition}.r1.result"
    assert command_subject("r1", kind="decision.ann") == f"dagnats.cmd.{partition}.r1.decision.ann"


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_partitions_are_stable_and_in_range(run_id: str, partitions: int) -> None:
    partition = partition_of(run_id, partitions)
    assert 0 <= partition < partitions
    assert partition == partition_of(run_id, partitions)
    assert partition == zlib.crc32(run_id.encode()) % partitions


@pytest.mark.parametrize(
    ("build", "value", "field"),
    [
        (history_subject, "a.b", "run_id"),
        (history_subject, "a*", "run_id"),
        (history_subject, "", "run_id"),
        (history_subject, "x" * (settings.run_id_length_max + 1), "run_id"),
        (task_subject, "a..b", "task_type"),
        (task_subject, ".a", "task_type"),
        (task_subject, "a.", "task_type"),
        (task_subject, "a.>", "task_type"),
        (task_subject, "a b", "task_type"),
        (dead_subject, "a.b", "kind"),
    ],
)
def test_unsafe_tokens_are_refused_with_field_value_and_rule(
    build: object, value: str, field: str
) -> None:
    assert callable(build)
    with pytest.raises(SubjectTokenError) as caught:
        build(value)
    assert caught.value.field == field
    assert caught.value.value == value
    assert f"{field} {value!r} must be 1.." in str(caught.value)


def test_schedule_subjects_check_both_ids() -> None:
    with pytest.raises(SubjectTokenError, match="timer_id"):
        schedule_subject("r1", "t 1")
    with pytest.raises(SubjectTokenError, match="run_id"):
        schedule_subject("r.1", "t1")


async def test_ensure_resources_creates_everything_and_is_idempotent(
    private_js: JetStreamContext,
) -> None:
    await ensure_resources(private_js)  # the fixture already ran it once
    await ensure_resources(private_js._nc)  # a client works too
    history = await private_js.stream_info(HISTORY_STREAM)
    assert history.config.subjects == ["dagnats.history.>"]
    assert history.config.retention == api.RetentionPolicy.LIMITS
    assert history.config.duplicate_window == 120
    assert history.config.max_msg_size == settings.stream_message_bytes_max
    commands = await private_js.stream_info(COMMANDS_STREAM)
    assert sorted(commands.config.subjects or []) == ["dagnats.cmd.>", "dagnats.sched.>"]
    assert commands.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert commands.config.allow_msg_schedules is True
    tasks = await private_js.stream_info(TASKS_STREAM)
    assert tasks.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert tasks.config.duplicate_window == 600
    dead = await private_js.stream_info(DEAD_STREAM)
    assert dead.config.retention == api.RetentionPolicy.LIMITS
    workflows = await private_js.key_value(WORKFLOWS_BUCKET)
    assert (await workflows.status()).history == 16
    for bucket in (RUNS_BUCKET, PROJECTIONS_BUCKET):
        assert (await (await private_js.key_value(bucket)).status()).history == 1


async def test_a_differing_existing_stream_is_reported_not_changed(
    private_js: JetStreamContext,
) -> None:
    info = await private_js.stream_info(TASKS_STREAM)
    changed = info.config
    changed.duplicate_window = 30
    await private_js.update_stream(changed)
    with pytest.raises(ResourceConfigError) as caught:
        await ensure_resources(private_js)
    assert caught.value.resource == TASKS_STREAM
    assert caught.value.field == "duplicate_window"
    assert (caught.value.found, caught.value.wanted) == (30, 600)
    assert "DAGNATS_TASKS: duplicate_window is 30" in str(caught.value)
    assert (await private_js.stream_info(TASKS_STREAM)).config.duplicate_window == 30


async def test_a_differing_bucket_is_reported(private_js: JetStreamContext) -> None:
    await private_js.delete_key_value(WORKFLOWS_BUCKET)
    await private_js.create_key_value(api.KeyValueConfig(bucket=WORKFLOWS_BUCKET, history=2))
    with pytest.raises(ResourceConfigError, match="max_msgs_per_subject is 2, DagNats needs 16"):
        await ensure_resources(private_js)
