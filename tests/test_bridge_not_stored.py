"""A result the bridge did not store, sent again: never answered as settled (real HTTP, a real
nats-server and engine; tests/bridge_support.py).

/v1/tasks/results with a poll answers a refused poll's problem alone, and its docs send the
worker back to sending the results again (each then refused as settled); a result that was
not stored must not come back as "already completed" then: its task comes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dagnats.runtime import settings
from kernel.errors import DagnatsError
from kernel.events import StepLost
from kernel.workflow.builder import Retry, Workflow
from tests.bridge_support import BridgeStack, bridge_stack
from tests.nats_fixtures import unique

WAIT_S = 30.0
SHORT_ACK_WAIT_MS = 1_500


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[BridgeStack]:
    async with bridge_stack(tmp_path / "data", ack_wait_ms=SHORT_ACK_WAIT_MS) as running:
        yield running


class RefusingCommands:
    """A command publisher that refuses every command before sending it: nothing is stored."""

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        raise DagnatsError(f"command {msg_id} refused before sending")


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
