"""End to end with a real nats-server: sub-workflows (attached, detached, failing, missing,
cancel cascading through three levels), external events (wait_for_event, cancel_on, an
event published while the engine restarts) and a sleep that comes due while everything is
down. Waits are bounded; nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dagnats import Client, TaskContext, Worker
from dagnats.runtime.serve import Server
from kernel import limits
from kernel.errors import PayloadTooLargeError
from kernel.events import TimerFired
from kernel.workflow.builder import Workflow
from steps.sub_workflow import child_run_id

WAIT_S = 30.0


class Stack:
    def __init__(self, client: Client, release: asyncio.Event) -> None:
        self.client = client
        self.release = release


def make_worker(release: asyncio.Event) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> Any:
        return ctx.input

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> Any:
        await release.wait()
        return ctx.input

    @worker.task("boom")
    async def boom(ctx: TaskContext) -> Any:
        raise RuntimeError("inner step broke")

    return worker


class Running:
    """A server + engine + worker that can be stopped and started again on one data dir."""

    def __init__(self, data_dir: Path, release: asyncio.Event) -> None:
        self.data_dir = data_dir
        self.release = release
        self.server: Server | None = None
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.worker_client: Client | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        self.server = Server(self.data_dir, nats_port=port)
        info = await self.server.start()
        self.url = info.nats_url
        self.stop = asyncio.Event()
        self.worker_client = await Client.connect(info.nats_url, role="worker")
        connection = self.worker_client.connection
        worker = make_worker(self.release)
        self.tasks = [
            asyncio.create_task(self.server.run(self.stop)),
            asyncio.create_task(
                worker.serve(connection.tasks, connection.commands, connection.commands, self.stop)
            ),
        ]
        return info.nats_url

    async def halt(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=10)
        if self.worker_client is not None:
            await self.worker_client.close()
        if self.server is not None:
            await self.server.stop()


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    release = asyncio.Event()
    running = Running(tmp_path / "data", release)
    url = await running.start()
    client = await Client.connect(url)
    try:
        yield Stack(client, release)
    finally:
        release.set()
        await client.close()
        await running.halt()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until true, at most WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_an_attached_child_completes_the_parent_step_with_its_output(stack: Stack) -> None:
    client = stack.client
    await client.register_workflow(Workflow("inner").task("x", task="echo").build())
    outer = (
        Workflow("outer")
        .step("child", type="sub_workflow", config={"workflow": "inner"})
        .task("after", task="echo", depends_on=["child"])
        .build()
    )
    await client.register_workflow(outer)
    run_id = await client.start("outer", {"n": 7}, run_id="outer1")
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed", state.error
    assert bytes(state.output) == b'{"n":7}'
    links = await client.children(run_id)
    assert [(c.child_run_id, c.status) for c in links] == [("outer1-child-1", "completed")]
    child = await client.get_run("outer1-child-1")
    assert (child.parent_run_id, child.parent_step_id, child.depth) == ("outer1", "child", 1)


async def test_a_failing_child_or_a_missing_workflow_fails_the_parent(stack: Stack) -> None:
    client = stack.client
    await client.register_workflow(Workflow("broken").task("x", task="boom").build())
    for name, target in (("fails", "broken"), ("missing", "nowhere")):
        outer = Workflow(name).step("c", type="sub_workflow", config={"workflow": target}).build()
        await client.register_workflow(outer)
        state = await client.wait(await client.start(name), timeout_s=WAIT_S)
        assert state.status == "failed" and state.failed_step_id == "c"
        assert state.error is not None
        expected = "inner step broke" if target == "broken" else "'nowhere' is not registered"
        assert expected in state.error.message, state.error.message


async def test_a_detached_child_outlives_its_parent(stack: Stack) -> None:
    client = stack.client
    await client.register_workflow(Workflow("slow").task("x", task="hold").build())
    outer = (
        Workflow("launcher")
        .step("c", type="sub_workflow", config={"workflow": "slow", "detach": True})
        .build()
    )
    await client.register_workflow(outer)
    run_id = await client.start("launcher", run_id="launch1")
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    assert bytes(state.output) == b'{"child_run_id":"launch1-c-1"}'
    assert (await client.get_run("launch1-c-1")).status == "running"
    stack.release.set()
    assert (await client.wait("launch1-c-1", timeout_s=WAIT_S)).status == "completed"


async def test_cancel_cascades_through_three_levels_of_sub_workflows(stack: Stack) -> None:
    client = stack.client
    await client.register_workflow(Workflow("level3").task("x", task="hold").build())
    for name, child in (("level2", "level3"), ("level1", "level2")):
        definition = (
            Workflow(name).step("c", type="sub_workflow", config={"workflow": child}).build()
        )
        await client.register_workflow(definition)
    await client.start("level1", run_id="top")
    child = child_run_id("top", "c", 1)
    grandchild = child_run_id(child, "c", 1)

    async def grandchild_running() -> bool:
        with contextlib.suppress(Exception):
            return (await client.get_run(grandchild)).status == "running"
        return False

    await until(grandchild_running, "the third level to run")
    assert (await client.get_run(grandchild)).depth == 2  # the root run is depth 0
    await client.cancel("top", reason="stop everything")
    for run_id in ("top", child, grandchild):
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "cancelled", (run_id, state.status)


async def test_an_oversized_event_payload_is_rejected_at_publish(stack: Stack) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        await stack.client.publish_event("big", "x" * limits.event_bytes_max)
    assert str(limits.event_bytes_max) in str(caught.value)


async def test_an_event_completes_the_waiting_run_and_earlier_events_do_not(stack: Stack) -> None:
    client = stack.client
    waiter = (
        Workflow("waiter")
        .step(
            "paid",
            type="wait_for_event",
            config={
                "event": "order.paid",
                "match": {"left": "id", "op": "eq", "right": "input.id"},
            },
        )
        .build()
    )
    await client.register_workflow(waiter)
    await client.publish_event("order.paid", {"id": "A1", "early": True})  # before the run
    # an event stamped in the very millisecond the step starts counts as published since then:
    # start the run a few milliseconds later, so the early event is early by the clock too
    await asyncio.sleep(0.005)
    run_id = await client.start("waiter", {"id": "A1"})

    async def waiting() -> bool:
        state = await client.get_run(run_id)
        return state.steps[0].status == "scheduled"

    await until(waiting, "the step to wait")
    assert (await client.get_run(run_id)).status == "running"
    await client.publish_event("order.paid", {"id": "B2"})  # does not match
    await client.publish_event("order.paid", {"id": "A1", "amount": 5})
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    # the output is the later event: the early one (published before the step waited, and seen
    # by the engine's catch-up read) was not taken, and the non-matching one was not either
    assert bytes(state.output) == b'{"id":"A1","amount":5}'


async def test_an_event_published_while_the_engine_restarts_is_not_lost(tmp_path: Path) -> None:
    release = asyncio.Event()
    running = Running(tmp_path / "data", release)
    url = await running.start()
    client = await Client.connect(url)
    try:
        waiter = Workflow("w").step("e", type="wait_for_event", config={"event": "go"}).build()
        await client.register_workflow(waiter)
        run_id = await client.start("w", run_id="restart1")

        async def waiting() -> bool:
            return (await client.get_run(run_id)).steps[0].status == "scheduled"

        await until(waiting, "the step to wait")
        # stop the engine only (NATS stays up), publish, then start a fresh engine
        running.stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(running.tasks[0], timeout=10)
        await client.publish_event("go", {"during": "restart"})
        assert running.server is not None
        await running.server.stop()
        port = int(running.url.rsplit(":", 1)[1])
        running.server = Server(running.data_dir, nats_port=port)  # clients reconnect to it
        await running.server.start()
        running.stop = asyncio.Event()
        running.tasks[0] = asyncio.create_task(running.server.run(running.stop))
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "completed" and bytes(state.output) == b'{"during":"restart"}'
    finally:
        await client.close()
        await running.halt()


async def test_cancel_on_cancels_on_a_matching_event_only(stack: Stack) -> None:
    client = stack.client
    guarded = Workflow(
        "guarded",
        cancel_on={
            "event": "order.cancelled",
            "match": {"left": "id", "op": "eq", "right": "input.id"},
        },
    ).task("work", task="hold")
    await client.register_workflow(guarded.build())
    run_id = await client.start("guarded", {"id": "A1"}, run_id="guarded1")

    async def working() -> bool:
        return (await client.get_run(run_id)).steps[0].status in ("scheduled", "running")

    await until(working, "the step to be scheduled")
    other = await client.publish_event("order.cancelled", {"id": "B2"})  # another order
    matching = await client.publish_event("order.cancelled", {"id": "A1"})
    assert other < matching
    state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "cancelled", state.status
    # events reach the run in order: had the other order's event cancelled it, its seq would
    # be the one named
    assert state.cancel_reason == f"cancel_on event 'order.cancelled' (event {matching})"
    async for _, decision in client.history(run_id):
        names = [type(event).__name__ for event in decision.events]
        assert names.count("RunCancelRequested") <= 1


async def test_a_sleep_due_while_the_engine_is_down_fires_at_once_once_after_restart(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    running = Running(tmp_path / "data", release)
    client = await Client.connect(await running.start())
    try:
        nap = (
            Workflow("nap")
            .step("nap", type="sleep", config={"duration": "5s"})
            .task("after", task="echo", depends_on=["nap"])
        )
        await client.register_workflow(nap.build())
        run_id = await client.start("nap", {"n": 1}, run_id="nap1")

        async def sleeping() -> bool:
            return (await client.get_run(run_id)).steps[0].wake_at_ms is not None

        await until(sleeping, "the sleep's timer")
        wake_at_ms = (await client.get_run(run_id)).steps[0].wake_at_ms
        assert wake_at_ms is not None
        await client.close()
        await running.halt()  # NATS, the engine and the worker all stop
        # down before the timer came due: it cannot have fired (there was no NATS to fire it)
        assert time.time() * 1000 < wake_at_ms, "halting took longer than the sleep"
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while time.time() * 1000 < wake_at_ms + 1_000:  # the timer comes due while down
            assert asyncio.get_running_loop().time() < deadline, "the clock did not move"
            await asyncio.sleep(0.05)
        restarted = asyncio.get_running_loop().time()
        running = Running(tmp_path / "data", release)
        client = await Client.connect(await running.start())
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "completed", state.status
        assert bytes(state.output) == b'{"n":1}'
        assert asyncio.get_running_loop().time() - restarted < 10, "not at once after restart"
        fired = [
            event
            async for _, decision in client.history(run_id)
            for event in decision.events
            if isinstance(event, TimerFired)
        ]
        assert len(fired) == 1, fired
        after = state.step("after")
        assert after is not None and after.status == "completed"
    finally:
        await client.close()
        await running.halt()


async def test_a_cancel_on_event_published_while_the_engine_restarts_cancels(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    running = Running(tmp_path / "data", release)
    url = await running.start()
    client = await Client.connect(url)
    try:
        guarded = Workflow("guarded2", cancel_on={"event": "stop.all"}).task("work", task="hold")
        await client.register_workflow(guarded.build())
        run_id = await client.start("guarded2", run_id="guarded2")

        async def working() -> bool:
            return (await client.get_run(run_id)).steps[0].status in ("scheduled", "running")

        await until(working, "the step to be scheduled")
        running.stop.set()  # stop the engine only (NATS stays up), publish, start a new one
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(running.tasks[0], timeout=10)
        seq = await client.publish_event("stop.all", {"why": "restart"})
        assert running.server is not None
        await running.server.stop()
        port = int(running.url.rsplit(":", 1)[1])
        running.server = Server(running.data_dir, nats_port=port)  # clients reconnect to it
        await running.server.start()
        running.stop = asyncio.Event()
        running.tasks[0] = asyncio.create_task(running.server.run(running.stop))
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "cancelled", state.status
        assert state.cancel_reason == f"cancel_on event 'stop.all' (event {seq})"
    finally:
        release.set()
        await client.close()
        await running.halt()
