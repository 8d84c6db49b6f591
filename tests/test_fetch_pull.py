"""The engine's and workers' pulls (runtime/queue.py `fetch_batch`, `fetch_ready`), read
from the inbox without nats-py's per-message tasks, against a real nats-server: a long poll
gets a message published while it waits; what is waiting comes in one fetch, bounded by the
batch; a message of an earlier request answered late is taken first, never lost; a no-wait
pull takes only what is there; a server error status raises from a fetch and ends a
no-wait pull; a waiting fetch ends soon after its connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.queue import (
    JetStreamCommandQueue,
    JetStreamMessage,
    JetStreamTaskQueue,
    fetch_batch,
)
from tests.nats_fixtures import unique, wait_for

WAIT_MS = 20_000


def task_type() -> str:
    return unique("tests.pull").replace("-", "_")


async def test_a_long_poll_gets_a_message_published_while_it_waits(
    private_js: JetStreamContext,
) -> None:
    commands = JetStreamCommandQueue(private_js)
    await commands.fetch_commands(batch=1, timeout_ms=50)  # (binds the consumer)
    run_id = unique("run")
    polling = asyncio.create_task(commands.fetch_commands(batch=10, timeout_ms=WAIT_MS))
    await asyncio.sleep(0.05)  # (the poll may or may not be out yet: both must work)
    await commands.publish_command(run_id, b"late", f"{run_id}:1")
    messages = await asyncio.wait_for(polling, WAIT_MS / 1000 + 5)
    assert [message.data for message in messages] == [b"late"]
    await messages[0].ack()
    await commands.close()


async def test_waiting_commands_come_in_one_fetch_bounded_by_the_batch(
    private_js: JetStreamContext,
) -> None:
    commands = JetStreamCommandQueue(private_js)
    run_id = unique("run")
    for n in range(7):
        await commands.publish_command(run_id, f"c{n}".encode(), f"{run_id}:{n}")
    first = await commands.fetch_commands(batch=5, timeout_ms=WAIT_MS)
    rest = await commands.fetch_commands(batch=5, timeout_ms=WAIT_MS)
    assert [message.data for message in first] == [f"c{n}".encode() for n in range(5)]
    assert [message.data for message in rest] == [b"c5", b"c6"]
    for message in [*first, *rest]:
        await message.ack()
    assert await commands.fetch_commands(batch=5, timeout_ms=100) == []
    await commands.close()


async def test_a_message_of_an_earlier_request_is_taken_first(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    await queue.publish(kind, b"one", f"{kind}:s:1")
    subscription = await queue._subscription(kind)
    inbox = subscription._sub
    assert inbox is not None
    request = json.dumps({"batch": 1, "no_wait": True}).encode()  # answered, nobody reading
    await subscription._nc.publish(subscription._nms, request, subscription._deliver)
    await wait_for(
        lambda: inbox._pending_queue.qsize() >= 1, timeout_ms=WAIT_MS, what="the late answer"
    )
    [message] = await fetch_batch(subscription, batch=3, timeout_ms=WAIT_MS)
    assert message.data == b"one"
    await message.ack()
    await queue.close()


async def test_a_no_wait_pull_takes_only_what_is_there(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    for n in range(3):
        await queue.publish(kind, f"t{n}".encode(), f"{kind}:s{n}:1")
    taken: list[JetStreamMessage] = []
    await wait_for(lambda: _take(queue, kind, taken), timeout_ms=WAIT_MS, what="the three tasks")
    assert sorted(message.data for message in taken) == [b"t0", b"t1", b"t2"]
    for message in taken:
        await message.ack()
    assert await queue.fetch_ready(kind, batch=2) == []
    await queue.close()


async def _take(queue: JetStreamTaskQueue, kind: str, taken: list[JetStreamMessage]) -> bool:
    batch = await queue.fetch_ready(kind, batch=2)
    assert len(batch) <= 2
    taken.extend(batch)
    return len(taken) >= 3


async def test_an_error_status_raises_from_a_fetch_and_ends_a_no_wait_pull(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    subscription = await queue._subscription(kind)
    await js.delete_consumer("DAGNATS_TASKS", subscription._consumer)
    with pytest.raises(nats.js.errors.APIError):
        await fetch_batch(subscription, batch=2, timeout_ms=WAIT_MS)
    # the status ends the answer: a pull that ignored it would wait out this bound
    monkeypatch.setattr(settings, "fetch_no_wait_answer_ms_max", 60_000)
    assert await asyncio.wait_for(queue.fetch_ready(kind, batch=2), WAIT_MS / 1000) == []


@pytest.mark.parametrize("timeout_ms", [1, 250, 3_000, 60_000])
async def test_a_long_polls_request_expires_a_margin_before_its_reader_leaves(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, timeout_ms: int
) -> None:
    """The server counts a request's expiry from when it got it: one sent late must still end
    before the fetch returns, or a message delivered to it would wait in an inbox nobody
    reads (found in review: nats-py's 100 us margin stranded 1 task in ~40 idle polls)."""
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    subscription = await queue._subscription(kind)
    requests: list[dict[str, object]] = []
    publish = subscription._nc.publish

    async def recording(subject: str, payload: bytes = b"", reply: str = "", **kw: object) -> None:
        if subject == subscription._nms:
            requests.append(json.loads(payload))
        await publish(subject, payload, reply, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(subscription._nc, "publish", recording)
    polling = asyncio.create_task(fetch_batch(subscription, batch=1, timeout_ms=timeout_ms))
    await wait_for(lambda: bool(requests), timeout_ms=WAIT_MS, what="the pull request")
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await polling
    expires_ms = int(str(requests[0]["expires"])) / 1_000_000
    margin_ms = min(timeout_ms / 2, max(
        timeout_ms * settings.fetch_expiry_margin_share, settings.fetch_expiry_margin_ms_min
    ))  # fmt: skip
    assert expires_ms == pytest.approx(timeout_ms - margin_ms, abs=0.001)
    assert timeout_ms - expires_ms >= min(timeout_ms / 2, settings.fetch_expiry_margin_ms_min)
    await queue.close()


async def test_a_waiting_fetch_ends_when_its_connection_closes(js: JetStreamContext) -> None:
    queue = JetStreamTaskQueue(js)
    kind = task_type()
    await queue._subscription(kind)
    polling = asyncio.create_task(queue.fetch(kind, batch=1, timeout_ms=60_000))
    await asyncio.sleep(0.05)  # (the poll may or may not be waiting yet: both must end)
    await js._nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await asyncio.wait_for(polling, WAIT_MS / 1000)  # (well before the fetch's 60 s)
