"""Task and command queues on JetStream, against a real nats-server.

Task tests share the session server (each uses its own task type, hence its own consumer).
Command tests use a server of their own: the engine's consumer on `dagnats.cmd.>` is the
only consumer a work-queue stream allows on those subjects.
"""

from __future__ import annotations

import time

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.queue import (
    JetStreamCommandQueue,
    JetStreamTaskQueue,
    task_consumer_name,
)
from dagnats.runtime.resources import (
    DEAD_REASON_HEADER,
    DEAD_STREAM,
    TASKS_STREAM,
    ResourceConfigError,
    SubjectTokenError,
    command_subject,
    dead_subject,
    partition_of,
)
from kernel.errors import PayloadTooLargeError
from tests.nats_fixtures import unique


def task_type() -> str:
    return unique("tests.work").replace("-", "_")


async def test_a_published_task_is_fetched_once_and_acked(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    await queue.publish(kind, b"input", "run:step:1")
    [message] = await queue.fetch(kind, batch=10, timeout_ms=1_000)
    assert (message.data, message.num_delivered, message.msg_id) == (b"input", 1, "run:step:1")
    assert message.subject == f"dagnats.task.{kind}"
    await message.ack()
    assert await queue.fetch(kind, batch=10, timeout_ms=100) == []
    await queue.close()


async def test_a_duplicate_msg_id_enqueues_one_task(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    for _ in range(3):
        await queue.publish(kind, b"input", f"{kind}:step:1")
    await queue.publish(kind, b"input", f"{kind}:step:2")
    messages = await queue.fetch(kind, batch=10, timeout_ms=500)
    assert [message.msg_id for message in messages] == [f"{kind}:step:1", f"{kind}:step:2"]
    for message in messages:
        await message.ack()
    await queue.close()


async def test_fetch_of_an_empty_queue_returns_nothing_within_its_timeout(
    js: JetStreamContext,
) -> None:
    queue = JetStreamTaskQueue(js)
    started = time.monotonic()
    assert await queue.fetch(task_type(), batch=5, timeout_ms=200) == []
    assert time.monotonic() - started < 2.0
    await queue.close()


async def test_nak_redelivers_and_counts_deliveries(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    await queue.publish(kind, b"x", f"{kind}:1")
    [first] = await queue.fetch(kind, batch=1, timeout_ms=1_000)
    await first.nak()
    [second] = await queue.fetch(kind, batch=1, timeout_ms=1_000)
    assert (second.data, second.num_delivered) == (b"x", 2)
    await second.nak(delay_ms=300)
    assert await queue.fetch(kind, batch=1, timeout_ms=100) == []  # not before the delay
    [third] = await queue.fetch(kind, batch=1, timeout_ms=2_000)
    assert third.num_delivered == 3
    await third.term()
    assert await queue.fetch(kind, batch=1, timeout_ms=100) == []
    await queue.close()


async def test_in_progress_keeps_a_task_past_its_ack_wait(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js, ack_wait_ms=800)
    kind = task_type()
    await queue.publish(kind, b"x", f"{kind}:1")
    [message] = await queue.fetch(kind, batch=1, timeout_ms=1_000)
    for _ in range(5):  # 5 x 250 ms: past the ack wait, with a heartbeat every 250 ms
        assert await queue.fetch(kind, batch=1, timeout_ms=250) == []
        await message.in_progress()
    await message.ack()
    # Without heartbeats the ack wait expires and the task is delivered again.
    await queue.publish(kind, b"y", f"{kind}:2")
    [lost] = await queue.fetch(kind, batch=1, timeout_ms=1_000)
    [again] = await queue.fetch(kind, batch=1, timeout_ms=2_000)
    assert (lost.data, again.data, again.num_delivered) == (b"y", b"y", 2)
    await again.ack()
    await queue.close()


async def test_deliveries_are_bounded_by_deliver_max(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js, deliver_max=2)
    kind = task_type()
    await queue.publish(kind, b"x", f"{kind}:1")
    for expected in (1, 2):
        [message] = await queue.fetch(kind, batch=1, timeout_ms=1_000)
        assert message.num_delivered == expected
        await message.nak()
    assert await queue.fetch(kind, batch=1, timeout_ms=300) == []
    await queue.close()


async def test_an_existing_task_consumer_gets_the_new_ack_wait_but_no_other_change(
    js: JetStreamContext,
) -> None:
    # A data dir from before the 10 s default holds consumers with a 30 s ack wait: a worker
    # with another heartbeat timeout updates it (and a message taken after it sees the new one).
    kind = task_type()
    name = task_consumer_name(kind)
    first = JetStreamTaskQueue(js, ack_wait_ms=30_000)
    assert await first.fetch(kind, batch=1, timeout_ms=50) == []
    assert (await js.consumer_info(TASKS_STREAM, name)).config.ack_wait == 30.0
    other = JetStreamTaskQueue(js, ack_wait_ms=1_000)
    assert await other.fetch(kind, batch=1, timeout_ms=50) == []
    assert (await js.consumer_info(TASKS_STREAM, name)).config.ack_wait == 1.0
    await other.publish(kind, b"x", f"{kind}:1")
    [taken] = await other.fetch(kind, batch=1, timeout_ms=1_000)
    [again] = await other.fetch(kind, batch=1, timeout_ms=3_000)  # 1 s later, not 30
    assert (taken.data, again.data, again.num_delivered) == (b"x", b"x", 2)
    await again.ack()
    # max_deliver cannot be changed that way: still refused, naming the field.
    third = JetStreamTaskQueue(js, ack_wait_ms=1_000, deliver_max=3)
    with pytest.raises(ResourceConfigError, match=f"consumer {TASKS_STREAM}/{name}: max_deliver"):
        await third.fetch(kind, batch=1, timeout_ms=50)
    await first.close()
    await other.close()


def test_task_consumer_names_are_valid_and_distinct() -> None:
    names = {task_consumer_name(kind) for kind in ("a.b", "a_b", "a-b", "ab")}
    assert len(names) == 4
    assert all("." not in name for name in names)
    with pytest.raises(SubjectTokenError, match="task_type 'a b'"):
        task_consumer_name("a b")


async def test_oversized_and_invalid_tasks_are_refused(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    too_big = b"x" * (settings.history_message_bytes_max + 1)
    with pytest.raises(PayloadTooLargeError, match="task message"):
        await queue.publish(task_type(), too_big, "m")
    with pytest.raises(SubjectTokenError, match="task_type"):
        await queue.publish("tasks.*", b"", "m")


async def test_commands_reach_the_engine_consumer_in_order(private_js: JetStreamContext) -> None:
    commands = JetStreamCommandQueue(private_js)
    run_a, run_b = unique("run"), unique("run")
    await commands.publish_command(run_a, b"a1", f"{run_a}:1")
    await commands.publish_command(run_b, b"b1", f"{run_b}:1")
    await commands.publish_command(run_a, b"a2", f"{run_a}:2")
    await commands.publish_command(run_a, b"a2", f"{run_a}:2")  # a duplicate
    messages = await commands.fetch_commands(batch=10, timeout_ms=1_000)
    assert [message.data for message in messages] == [b"a1", b"b1", b"a2"]
    assert messages[0].subject == command_subject(run_a, kind="engine")  # the queue's kind
    assert messages[0].subject == f"dagnats.cmd.{partition_of(run_a, 16)}.{run_a}.engine"
    for message in messages:
        await message.ack()
    assert await commands.fetch_commands(batch=10, timeout_ms=100) == []
    await commands.close()


async def test_an_unacked_command_comes_back(private_js: JetStreamContext) -> None:
    commands = JetStreamCommandQueue(private_js, ack_wait_ms=300)
    run_id = unique("run")
    await commands.publish_command(run_id, b"c", f"{run_id}:1")
    [first] = await commands.fetch_commands(batch=1, timeout_ms=1_000)
    [again] = await commands.fetch_commands(batch=1, timeout_ms=2_000)
    assert (first.data, again.data, again.num_delivered) == (b"c", b"c", 2)
    await again.ack()
    await commands.close()


async def test_dead_letters_keep_payload_and_reason(private_js: JetStreamContext) -> None:
    commands = JetStreamCommandQueue(private_js)
    await commands.publish_dead("unknown_run", b"payload", "run 'x' is unknown\nsecond line")
    dead = await private_js.get_last_msg(DEAD_STREAM, dead_subject("unknown_run"))
    assert dead.data == b"payload"
    assert dead.headers is not None
    assert dead.headers[DEAD_REASON_HEADER] == "run 'x' is unknown second line"
    with pytest.raises(SubjectTokenError, match="kind"):
        await commands.publish_dead("bad kind", b"", "")
