"""/v1/tasks/results with a poll, when things go wrong (real HTTP, a real nats-server and
engine; tests/bridge_support.py).

A refused poll is answered with its problem alone, and the docs send the worker back to
sending the results again (each then refused as settled); a result that was not stored must
not come back as "already completed" then: its task comes back. A request abandoned while its
results are sent leaves its poll running: a failure of that poll is retrieved, not left to
asyncio's "Task exception was never retrieved"; so is a lost attempt's report the publisher
refused. A result given up unacknowledged may be stored: its answer says so. A task the poll
leased while the results were sent is not handed over once its lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from dagnats.api.bridge_wire import ResultItem
from dagnats.runtime import credentials, settings
from dagnats.runtime.resources import TASKS_STREAM, task_subject
from kernel.events import StepLost
from kernel.workflow.builder import Retry, Workflow
from tests.bridge_support import BridgeStack, GatedCommands, RefusingCommands, bridge_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
SHORT_ACK_WAIT_MS = 1_500


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[BridgeStack]:
    async with bridge_stack(tmp_path / "data", ack_wait_ms=SHORT_ACK_WAIT_MS) as running:
        yield running


async def test_a_result_not_stored_is_not_settled_when_sent_again_after_a_refused_poll(
    stack: BridgeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll is refused (429: the results' answers are not in the reply); sent again, the
    result that was not stored is not "already completed" (404: its lease is gone, its task
    comes back), and the run completes on the next attempt."""
    task_type = unique("t")
    workflow = Workflow(unique("w")).task("s", task=task_type, retry=Retry(max_attempts=3))
    for n in range(2):
        await stack.client.start(workflow.build(), {"n": n})
    first = await stack.poll_one(task_type)
    await stack.poll_one(task_type)  # held: the next poll passes the bound
    monkeypatch.setattr(settings, "bridge_leases_max", 1)
    real = stack.bridge.commands
    stack.bridge.commands = RefusingCommands()
    results = {"results": [{"id": first["id"], "output": 1}]}
    poll = {"task_types": [task_type]}
    refused = await stack.post("/v1/tasks/results", {**results, "poll": poll})
    stack.bridge.commands = real
    assert refused.status_code == 429, refused.text
    again = await stack.post("/v1/tasks/results", results)
    assert again.status_code == 200, again.text
    [answer] = again.json()["results"]
    assert answer.get("status") != "completed", answer
    assert "already completed" not in answer["problem"]["detail"], answer
    assert answer["problem"]["status"] == 404, answer
    assert stack.bridge.held == 1
    monkeypatch.setattr(settings, "bridge_leases_max", 2)
    back = await stack.poll_one(task_type)  # after the heartbeat timeout, attempt 2
    assert (back["run_id"], back["attempt"]) == (first["run_id"], 2), back
    done = await stack.post("/v1/tasks/results", {"results": [{"id": back["id"], "output": 2}]})
    assert [r["status"] for r in done.json()["results"]] == ["completed"], done.text
    assert (await stack.client.wait(first["run_id"], timeout_s=WAIT_S)).status == "completed"
    events = [e async for _, d in stack.client.history(first["run_id"]) for e in d.events]
    assert sum(isinstance(e, StepLost) for e in events) == 1


class FailingDeadLetters:
    """Dead letters that cannot be written (NATS gone while a poll takes a bad message)."""

    def __init__(self) -> None:
        self.tried = 0

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        self.tried += 1
        raise ConnectionError("dead letters unreachable")


async def publish_garbage_task(stack: BridgeStack, task_type: str) -> None:
    url = stack.info.nats_url
    options = credentials.connect_options(url, role="admin", data_dir=Path(stack.info.data_dir))
    options.pop("credential", None)
    nc = await nats.connect(url, **options)
    try:
        await nc.jetstream().publish(task_subject(task_type), b"\x00not a task",
                                     stream=TASKS_STREAM)  # fmt: skip
    finally:
        await nc.close()


async def test_a_results_and_poll_abandoned_while_sending_leaves_no_poll_error_unretrieved(
    stack: BridgeStack,
) -> None:
    """The request is cancelled while its results are sent; its poll then fails: that failure
    is retrieved (no "Task exception was never retrieved"), as an abandoned /poll's is."""
    task_type = unique("t")
    workflow = Workflow(unique("w")).task("s", task=task_type, retry=Retry(max_attempts=3))
    await stack.client.start(workflow.build(), {"n": 1})
    first = await stack.poll_one(task_type)
    held, dead = GatedCommands(stack.bridge.commands), FailingDeadLetters()
    stack.bridge.commands, stack.bridge.dead = held, dead
    stack.bridge.result_wait_ms = 60_000
    await publish_garbage_task(stack, task_type)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        job = asyncio.ensure_future(stack.bridge.settle_then_poll(
            [ResultItem(first["id"], 1)], [task_type], timeout_ms=5_000))  # fmt: skip
        await wait_for(lambda: held.waiting == 1 and dead.tried >= 1, timeout_ms=10_000,
                       what="the result held back and the poll failed")  # fmt: skip
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        del job
        held.opened.set()
        await wait_for(lambda: stack.bridge.held == 0, timeout_ms=10_000, what="the result sent")
        gc.collect()  # (a task never retrieved calls the handler when it is collected)
    finally:
        loop.set_exception_handler(None)
    never = [c for c in unretrieved if "never retrieved" in str(c.get("message"))]
    assert never == [], never


class LostAckCommands:
    """The bridge's command publisher whose acknowledgements are lost: each publish is stored
    by the server, then times out (as a reply that never comes back)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stored = 0

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        await self.inner.publish_command(run_id, payload, msg_id, token=token)
        self.stored += 1
        raise TimeoutError("the acknowledgement never came")


async def test_a_result_given_up_unacknowledged_is_not_answered_as_surely_not_stored(
    stack: BridgeStack,
) -> None:
    """A result whose acknowledgements were lost may be stored: its answer is an error that
    says so, never "was not stored" (here it was: the run completes with its output)."""
    task_type = unique("t")
    workflow = Workflow(unique("w")).task("s", task=task_type, retry=Retry(max_attempts=3))
    run_id = await stack.client.start(workflow.build(), {"n": 1})
    first = await stack.poll_one(task_type)
    lost = LostAckCommands(stack.bridge.commands)
    stack.bridge.commands, stack.bridge.result_send_ms_max = lost, 300
    reply = await stack.post("/v1/tasks/results", {"results": [{"id": first["id"], "output": 7}]})
    assert reply.status_code == 200, reply.text
    [answer] = reply.json()["results"]
    assert answer["problem"]["status"] == 503, answer
    assert "was not stored" not in answer["problem"]["detail"], answer
    assert "not acknowledged" in answer["problem"]["detail"], answer
    assert lost.stored >= 1
    final = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert final.status == "completed", final


class RefusingLostReports(RefusingCommands):
    """Refuses every command before sending it, counting the lost attempts' reports."""

    def __init__(self) -> None:
        self.lost = 0

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        self.lost += msg_id.startswith("lost:")
        await super().publish_command(run_id, payload, msg_id, token=token)


async def test_a_lost_report_refused_before_it_was_sent_leaves_no_task_exception_unretrieved(
    stack: BridgeStack,
) -> None:
    """A vanished HTTP worker's task comes back; its lost report is refused by the publisher
    (as a result's can be): logged, not "Task exception was never retrieved"."""
    task_type = unique("t")
    workflow = Workflow(unique("w")).task("s", task=task_type, retry=Retry(max_attempts=3))
    await stack.client.start(workflow.build(), {"n": 1})
    await stack.poll_one(task_type)  # held, never completed: it comes back
    refusing = RefusingLostReports()
    stack.bridge.commands = refusing
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:

        async def reported() -> bool:
            await stack.poll(task_type, timeout_ms=500)
            return refusing.lost >= 1

        await wait_for(reported, timeout_ms=15_000, what="the lost attempt's report refused")
        await wait_for(lambda: not stack.bridge._sending, timeout_ms=10_000,
                       what="the report's task done")  # fmt: skip
        gc.collect()  # (a task never retrieved calls the handler when it is collected)
    finally:
        loop.set_exception_handler(None)
    never = [c for c in unretrieved if "never retrieved" in str(c.get("message"))]
    assert never == [], never


async def test_a_task_whose_lease_ran_out_while_the_results_were_sent_is_not_handed_over(
    stack: BridgeStack,
) -> None:
    """The poll leases the next task while the result is held back, past that lease's end:
    the answer does not hand it over (the server delivers it again, maybe to another worker);
    it comes back, its attempt reported lost, and runs again."""
    task_type = unique("t")
    workflow = Workflow(unique("w")).task("s", task=task_type, retry=Retry(max_attempts=3))
    for n in range(2):
        await stack.client.start(workflow.build(), {"n": n})
    first = await stack.poll_one(task_type)
    held = GatedCommands(stack.bridge.commands)
    stack.bridge.commands, stack.bridge.result_wait_ms = held, 60_000
    body = {"results": [{"id": first["id"], "output": 1}],
            "poll": {"task_types": [task_type], "timeout_ms": 10_000}}  # fmt: skip
    answering = asyncio.ensure_future(stack.post("/v1/tasks/results", body))
    try:
        await wait_for(lambda: held.waiting == 1 and stack.bridge.held == 2, timeout_ms=10_000,
                       what="the next task leased while the result is held back")  # fmt: skip
        [second] = [lease for lease in stack.bridge._leases.values() if lease.id != first["id"]]
        loop = asyncio.get_running_loop()
        await wait_for(lambda: loop.time() > second.expires_at, timeout_ms=10_000,
                       what="the next task's lease to run out")  # fmt: skip
    finally:
        held.opened.set()
    answer = await answering
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["completed"], answer.text
    handed = answer.json()["tasks"]
    for task in handed:  # a task handed over is the worker's: it can keep it
        kept = await stack.post(f"/v1/tasks/{task['id']}/heartbeat", {})
        assert kept.status_code == 200, (task["id"] == second.id, kept.text)
    assert [task["id"] for task in handed] == [], handed
    again = await stack.poll_one(task_type)
    assert (again["run_id"], again["attempt"]) == (second.task.run_id, 2), again
    done = await stack.post("/v1/tasks/results", {"results": [{"id": again["id"], "output": 2}]})
    assert [r["status"] for r in done.json()["results"]] == ["completed"], done.text
    final = await stack.client.wait(second.task.run_id, timeout_s=WAIT_S)
    assert final.status == "completed", final
