"""End to end in one process: a real embedded nats-server, the engine, a worker and a client.

Each test gets its own server on a free port with a temporary store. Waits are bounded
(`Client.wait` with a timeout); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dagnats import (
    Client,
    NonRetryableError,
    RunFinishedError,
    RunNotFoundError,
    TaskContext,
    Worker,
    WorkflowNotFoundError,
)
from dagnats.runtime.serve import local_stack
from kernel.events import StepCompleted, StepTimedOut, TimerFired, TimerStarted
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Retry, Workflow

WAIT_S = 30.0


class Stack:
    """A running server + engine + worker, and a client."""

    def __init__(
        self, client: Client, worker: Worker, calls: Counter[str], worker_client: Client
    ) -> None:
        self.client = client
        self.worker = worker
        self.calls = calls
        self.worker_client = worker_client  # a worker credential's connection, for extra workers

    async def events(self, run_id: str) -> list[Any]:
        return [
            event async for _, decision in self.client.history(run_id) for event in decision.events
        ]


def make_worker(calls: Counter[str], release: asyncio.Event) -> Worker:
    worker = Worker(concurrency=8, heartbeat_interval_ms=200)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> Any:
        calls[f"echo:{ctx.step_id}"] += 1
        return ctx.input

    @worker.task("flaky")
    async def flaky(ctx: TaskContext) -> Any:
        calls[f"flaky:{ctx.step_id}"] += 1
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return {"attempt": ctx.attempt}

    @worker.task("hang_once")
    async def hang_once(ctx: TaskContext) -> Any:
        calls[f"hang_once:{ctx.step_id}"] += 1
        if ctx.attempt == 1:
            await release.wait()  # held until the test ends: the step timeout must act
        return {"attempt": ctx.attempt}

    @worker.task("refuse")
    async def refuse(ctx: TaskContext) -> Any:
        calls[f"refuse:{ctx.step_id}"] += 1
        raise NonRetryableError("refused for good")

    return worker


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    release = asyncio.Event()
    calls: Counter[str] = Counter()
    worker = make_worker(calls, release)
    async with local_stack(tmp_path / "data", worker) as (info, client):
        worker_client = await Client.connect(info.nats_url, role="worker")
        try:
            yield Stack(client, worker, calls, worker_client)
        finally:
            release.set()  # let a held handler finish, so the worker drains
            await worker_client.close()


def chain() -> WorkflowDef:
    return (
        Workflow("chain")
        .task("a", task="echo")
        .task("b", task="flaky", depends_on=["a"], retry=Retry(max_attempts=3, initial_delay=50))
        .task("c", task="echo", depends_on=["b"])
        .build()
    )


async def test_a_run_completes_with_a_retry_and_each_result_recorded_once(stack: Stack) -> None:
    await stack.client.register_workflow(chain())
    run_id = await stack.client.start("chain", {"n": 1})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed", state.error
    assert bytes(state.output) == b'{"attempt":2}'
    completed = Counter(
        e.step_id for e in await stack.events(run_id) if isinstance(e, StepCompleted)
    )
    assert completed == Counter({"a": 1, "b": 1, "c": 1})
    assert stack.calls["flaky:b"] == 2 and stack.calls["echo:a"] == 1 and stack.calls["echo:c"] == 1


async def test_starting_the_same_run_id_twice_is_one_run(stack: Stack) -> None:
    await stack.client.register_workflow(chain())
    first = await stack.client.start("chain", {"n": 2}, run_id="same-run")
    second = await stack.client.start("chain", {"n": 2}, run_id="same-run")
    assert first == second == "same-run"
    state = await stack.client.wait(first, timeout_s=WAIT_S)
    assert state.status == "completed"
    started = [e for e in await stack.events(first) if type(e).__name__ == "RunStarted"]
    assert len(started) == 1


async def test_a_durable_sleep_then_a_signal_complete_the_run(stack: Stack) -> None:
    workflow = (
        Workflow("gate")
        .task("a", task="echo")
        .step("nap", type="sleep", depends_on=["a"], config={"duration": "300ms"})
        .step("go", type="wait_signal", depends_on=["nap"], config={"signal": "approve"})
        .task("b", task="echo", depends_on=["go"])
        .build()
    )
    run_id = await stack.client.start(workflow, {"n": 3})
    waiting = await _wait_for_status(stack.client, run_id, "go", "scheduled")
    nap = waiting.step("nap")
    assert nap is not None and nap.status == "completed"
    events = await stack.events(run_id)
    armed = next(e for e in events if isinstance(e, TimerStarted))
    fired = next(e for e in events if isinstance(e, TimerFired))
    assert fired.at_ms >= armed.fire_at_ms == armed.at_ms + 300
    await stack.client.signal(run_id, "approve", {"by": "ops"})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    assert bytes(state.output) == b'{"by":"ops"}'


async def test_a_hanging_attempt_times_out_and_the_next_attempt_completes(stack: Stack) -> None:
    workflow = (
        Workflow("hang")
        .task("h", task="hang_once", timeout=300, retry=Retry(max_attempts=2, initial_delay=10))
        .build()
    )
    run_id = await stack.client.start(workflow)
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    timed_out = [e for e in await stack.events(run_id) if isinstance(e, StepTimedOut)]
    assert [(e.step_id, e.attempt, e.will_retry) for e in timed_out] == [("h", 1, True)]
    assert stack.calls["hang_once:h"] == 2


async def test_cancel_runs_compensations_and_ends_the_run_cancelled(stack: Stack) -> None:
    workflow = (
        Workflow("saga")
        .task("book", task="echo", compensate="unbook")
        .step("wait", type="wait_signal", depends_on=["book"], config={"signal": "never"})
        .task("unbook", task="echo")
        .build()
    )
    run_id = await stack.client.start(workflow, {"seat": "12A"})
    await _wait_for_status(stack.client, run_id, "wait", "scheduled")
    await stack.client.cancel(run_id, reason="customer left")
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "cancelled"
    unbook = state.step("unbook")
    assert unbook is not None and unbook.status == "completed"
    with pytest.raises(RunFinishedError, match="already ended as cancelled"):
        await stack.client.cancel(run_id)
    with pytest.raises(RunFinishedError):
        await stack.client.signal(run_id, "never")


async def test_a_non_retryable_failure_fails_the_run_once(stack: Stack) -> None:
    workflow = Workflow("refusal").task("r", task="refuse", retry=Retry(max_attempts=5)).build()
    run_id = await stack.client.start(workflow)
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "failed" and state.failed_step_id == "r"
    assert state.error is not None and "refused for good" in state.error.message
    assert stack.calls["refuse:r"] == 1


async def test_unknown_names_get_clear_errors(stack: Stack) -> None:
    with pytest.raises(WorkflowNotFoundError, match="'nope' is not registered"):
        await stack.client.start("nope")
    with pytest.raises(RunNotFoundError, match="'missing' does not exist"):
        await stack.client.get_run("missing")
    with pytest.raises(RunNotFoundError):
        await stack.client.signal("missing", "x")


async def _wait_for_status(client: Client, run_id: str, step_id: str, status: str) -> Any:
    """Follow the run's history until `step_id` reaches `status` (bounded by WAIT_S)."""
    from kernel.reducer import evolve
    from kernel.state import INITIAL_STATE

    state = INITIAL_STATE
    async for _, decision in client.watch(run_id, timeout_s=WAIT_S):
        for event in decision.events:
            state = evolve(state, event)
        step = state.step(step_id)
        if step is not None and step.status == status:
            return state
    raise AssertionError(f"step {step_id!r} of run {run_id} never reached {status!r}")


async def test_retry_after_and_bad_outputs_fail_or_retry_as_the_handler_said(
    stack: Stack,
) -> None:
    from dagnats import RetryAfter
    from kernel import limits
    from kernel.events import StepFailed, StepRetryScheduled

    worker = stack.worker

    @worker.task("later")
    async def later(ctx: TaskContext) -> Any:
        if ctx.attempt == 1:
            raise RetryAfter(0.2, "rate limited")
        return "ok"

    @worker.task("unencodable")
    async def unencodable(ctx: TaskContext) -> Any:
        return {"when": object()}

    @worker.task("huge")
    async def huge(ctx: TaskContext) -> Any:
        return "x" * (limits.payload_bytes_max + 10)

    # The worker serves only the types it had when it started: restart its fetch loops by
    # running a second worker with these handlers on the same connection.
    extra = Worker(concurrency=4)
    extra.add("later", later)
    extra.add("unencodable", unencodable)
    extra.add("huge", huge)
    stop = asyncio.Event()
    connection = stack.worker_client.connection
    serving = asyncio.create_task(
        extra.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    policy = Retry(max_attempts=3, initial_delay="30s")
    outcomes: dict[str, tuple[Any, list[Any]]] = {}
    try:
        for task in ("later", "unencodable", "huge"):
            workflow = Workflow(f"says-{task}").task("s", task=task, retry=policy).build()
            run_id = await stack.client.start(workflow)
            state = await stack.client.wait(run_id, timeout_s=WAIT_S)
            outcomes[task] = (state, await stack.events(run_id))
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)
    later_state, later_events = outcomes["later"]
    retry = next(e for e in later_events if isinstance(e, StepRetryScheduled))
    assert retry.delay_ms == 200  # RetryAfter replaced the 30 s backoff
    assert later_state.status == "completed"
    for task, rule in (
        ("unencodable", "cannot be encoded as JSON"),
        ("huge", f"the limit is {limits.payload_bytes_max} bytes"),
    ):
        state, events = outcomes[task]
        failed = [e for e in events if isinstance(e, StepFailed)]
        assert len(failed) == 1 and not failed[0].will_retry, failed  # no retry: it cannot help
        assert failed[0].error.kind == "invalid_output" and rule in failed[0].error.message
        assert state.status == "failed"


async def test_a_draining_worker_finishes_its_handler_and_takes_nothing_new(
    stack: Stack,
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    drained = Worker(concurrency=2)

    @drained.task("slow_drain")
    async def slow(ctx: TaskContext) -> Any:
        entered.set()
        await gate.wait()
        return {"finished": ctx.step_id}

    stop = asyncio.Event()
    connection = stack.worker_client.connection
    serving = asyncio.create_task(
        drained.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    workflow = (
        Workflow("drain")
        .task("first", task="slow_drain")
        .task("second", task="slow_drain", depends_on=["first"])
        .build()
    )
    run_id = await stack.client.start(workflow)
    await asyncio.wait_for(entered.wait(), timeout=WAIT_S)
    stop.set()  # what SIGTERM does
    gate.set()
    await asyncio.wait_for(serving, timeout=WAIT_S)  # drained: the handler finished
    assert drained.handled == 1
    state = await _wait_for_status(stack.client, run_id, "second", "scheduled")
    first = state.step("first")
    assert first is not None and first.status == "completed"
    second = state.step("second")
    assert second is not None and second.status == "scheduled"  # nobody took it
