"""End to end with a real nats-server: approvals (approve through the Client with a notice on
NATS, a second decision refused, reject into on_failure, a deadline resolving by on_timeout)
and a chain of five continue-as-new runs followed by `wait(follow=True)`, with its lineage.
Waits are bounded; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from dagnats import Client, TaskContext, Worker
from dagnats.client import ApprovalResolvedError
from dagnats.runtime.credentials import default_approver_identity
from dagnats.runtime.serve import Server
from kernel.state import RunState
from kernel.workflow.builder import Skip, Workflow
from steps import continuation

WAIT_S = 30.0


def make_worker() -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> Any:
        return ctx.input

    @worker.task("inc")
    async def inc(ctx: TaskContext) -> Any:
        return {"n": ctx.input["n"] + 1, "history_events": ctx.history_events}

    return worker


class Served(msgspec.Struct):
    url: str
    client: Client


@pytest_asyncio.fixture
async def client(served: Served) -> Client:
    return served.client


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    server = Server(tmp_path / "data")
    info = await server.start()
    stop = asyncio.Event()
    worker_client = await Client.connect(info.nats_url, role="worker")
    connection = worker_client.connection
    tasks = [
        asyncio.create_task(server.run(stop)),
        asyncio.create_task(
            make_worker().serve(connection.tasks, connection.commands, connection.commands, stop)
        ),
    ]
    # admin: it decides as "ana" and "bo" (an approver credential records its own identity)
    user = await Client.connect(info.nats_url, role="admin")
    try:
        yield Served(url=info.nats_url, client=user)
    finally:
        await user.close()
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=10)
        await worker_client.close()
        await server.stop()


async def pending_step(client: Client, run_id: str) -> str:
    """Wait (bounded) until the run's approval is pending; its step id."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        for approval in await client.pending_approvals():
            if approval.run_id == run_id:
                return approval.step_id
        assert asyncio.get_running_loop().time() < deadline, "no approval became pending"
        await asyncio.sleep(0.05)


def gated(on_failure: str | None = None, **gate: Any) -> Workflow:
    config = {"question": "Ship release 1.2?", "description": "after the build"}
    timeout = gate.pop("timeout", None)
    config.update(gate)
    flow = (
        Workflow("release" + ("_guarded" if on_failure else ""))
        .task("build", task="echo")
        .step(
            "gate", type="approval", depends_on=["build"], config=config, timeout=timeout,
            metadata={"team": "ops"}, on_failure=on_failure,
        )
        .task("ship", task="echo", depends_on=["gate"])
    )  # fmt: skip
    return flow.task("notify", task="echo") if on_failure else flow


async def test_approve_through_the_client_completes_the_step_with_the_data(
    client: Client,
) -> None:
    nc = client.connection.nc
    notices: asyncio.Queue[Any] = asyncio.Queue()

    async def collect(message: Any) -> None:
        await notices.put((message.subject, msgspec.json.decode(message.data)))

    subscription = await nc.subscribe("dagnats.approval.>", cb=collect)
    await client.register_workflow(gated().build())
    run_id = await client.start("release", {"token": "s3cr3t"})
    assert await pending_step(client, run_id) == "gate"
    subject, notice = await asyncio.wait_for(notices.get(), WAIT_S)
    await subscription.unsubscribe()
    assert subject == f"dagnats.approval.{run_id}.gate"
    assert notice["question"] == "Ship release 1.2?" and notice["metadata"] == {"team": "ops"}
    assert "s3cr3t" not in msgspec.json.encode(notice).decode(), "no input in the notice"

    resolved = await client.approve(run_id, "gate", data={"ticket": 7}, comment="ok", by="ana")
    assert (resolved.by, resolved.decision) == ("ana", "approve")
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    assert msgspec.json.decode(bytes(state.output)) == {"ticket": 7}
    with pytest.raises(ApprovalResolvedError, match="already resolved by ana at"):
        await client.reject(run_id, "gate", by="bo")
    assert [p for p in await client.pending_approvals() if p.run_id == run_id] == []


async def test_reject_fails_the_step_and_on_failure_applies(client: Client) -> None:
    await client.register_workflow(gated(on_failure="notify").build())
    run_id = await client.start("release_guarded", {"v": 1})
    await pending_step(client, run_id)
    await client.reject(run_id, "gate", comment="not today", by="bo")
    state = await client.wait(run_id, timeout_s=WAIT_S)
    gate, notify = state.step("gate"), state.step("notify")
    assert gate is not None and notify is not None
    assert gate.status == "recovered" and gate.attempt == 1, "no retry of a rejection"
    handler_input = msgspec.json.decode(bytes(notify.input))
    assert "rejected by bo: not today" in handler_input["error"]["message"]
    assert state.status == "completed"


async def test_a_deadline_resolves_by_on_timeout(client: Client) -> None:
    await client.register_workflow(gated(timeout="1s", on_timeout="approve").build())
    run_id = await client.start("release", {"v": 1})
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    approval = state.approvals[0]
    assert (approval.by, approval.decision, approval.timed_out) == ("timeout", "approve", True)
    with pytest.raises(ApprovalResolvedError, match="already resolved by timeout"):
        await client.approve(run_id, "gate", by="ana")


async def test_a_chain_of_five_runs_is_followed_to_its_end_with_lineage(client: Client) -> None:
    counter = (
        Workflow("counter")
        .task("inc", task="inc")
        .step(
            "again", type="continue_as_new", depends_on=["inc"],
            skip_if=Skip(step_id="inc", field="n", op=">=", value=5),
        )
    )  # fmt: skip
    await client.register_workflow(counter.build())
    root = await client.start("counter", {"n": 0})
    seen: list[str] = []

    def update(state: RunState, _decision: object) -> None:
        if not seen or seen[-1] != state.run_id:
            seen.append(state.run_id)

    final = await client.wait(root, timeout_s=WAIT_S, follow=True, on_update=update)
    assert final.status == "completed"
    inc = final.step("inc")
    assert inc is not None and msgspec.json.decode(bytes(inc.output))["n"] == 5
    expected = [root] + [continuation.next_run_id(root, i) for i in range(1, 5)]
    assert final.run_id == expected[-1] and seen == expected
    assert (final.chain_root, final.chain_index, final.continued_from) == (root, 4, expected[3])
    chain = await client.lineage(expected[2])
    assert [link.run_id for link in chain] == expected
    assert [link.status for link in chain] == ["continued_as_new"] * 4 + ["completed"]
    first = await client.get_run(root)
    assert first.continued_as == expected[1] and first.continued_from is None
    plain = await client.wait(root, timeout_s=WAIT_S)
    assert plain.status == "continued_as_new", "without follow, wait stops at the run"


def cli(url: str, *args: str) -> Any:
    """Run `dagnats ARGS --nats-url URL` (in a thread: the CLI runs its own event loop)."""
    from typer.testing import CliRunner

    from dagnats.cli import app

    return CliRunner().invoke(app, [*args, "--nats-url", url])


async def test_the_cli_lists_shows_approves_and_refuses_a_second_decision(served: Served) -> None:
    client = served.client
    await client.register_workflow(gated().build())
    run_id = await client.start("release", {"v": 1})
    await pending_step(client, run_id)
    listed = await asyncio.to_thread(cli, served.url, "approval", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(p["run_id"], p["step_id"]) for p in msgspec.json.decode(listed.stdout)] == [
        (run_id, "gate")
    ]
    shown_run = await asyncio.to_thread(cli, served.url, "run", "show", run_id)
    assert "approval gate: Ship release 1.2?" in shown_run.output, shown_run.output
    # The CLI decides with the approver credential: recorded under its identity, and a
    # `--by` naming somebody else is refused.
    cy = default_approver_identity()
    approve = ("approval", "approve", run_id, "gate", "--data", '{"ok": 1}')
    forged = await asyncio.to_thread(cli, served.url, *approve, "--by", cy + "-not")
    assert forged.exit_code == 1 and "differs from the credential's identity" in forged.output
    done = await asyncio.to_thread(cli, served.url, *approve, "--comment", "fine")
    assert done.exit_code == 0, done.output
    again = await asyncio.to_thread(cli, served.url, "approval", "reject", run_id, "gate")
    assert again.exit_code == 1 and f"already resolved by {cy} at" in again.output, again.output
    shown = await asyncio.to_thread(cli, served.url, "approval", "show", run_id, "gate", "--json")
    assert shown.exit_code == 0, shown.output
    document = msgspec.json.decode(shown.stdout)
    assert (document["status"], document["by"], document["comment"]) == ("approved", cy, "fine")
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert msgspec.json.decode(bytes(state.output)) == {"ok": 1}


async def test_the_cli_follows_a_chain_and_shows_its_lineage(served: Served) -> None:
    client = served.client
    counter = (
        Workflow("counter2")
        .task("inc", task="inc")
        .step(
            "again", type="continue_as_new", depends_on=["inc"],
            skip_if=Skip(step_id="inc", field="n", op=">=", value=2),
        )
    )  # fmt: skip
    await client.register_workflow(counter.build())
    root = await client.start("counter2", {"n": 0})
    waited = await asyncio.to_thread(cli, served.url, "run", "wait", root, "--follow", "--json")
    assert waited.exit_code == 0, waited.output
    last = continuation.next_run_id(root, 1)
    assert msgspec.json.decode(waited.stdout)["run_id"] == last
    shown = await asyncio.to_thread(cli, served.url, "run", "show", root)
    assert shown.exit_code == 0, shown.output
    assert "lineage" in shown.output and last in shown.output
