"""Where a handler runs (dagnats/worker_invoke.py): an attempt without a deadline runs its
handler in the job's own task (no task per handler), one with a deadline in a task of its
own (so it can be left running past its grace). Either way nothing the handler raises leaves
it, its own CancelledError included, while a cancellation of the job (the drain's bound)
goes on up; and on SIGTERM's drain a handler that ignores its cancellation is counted hung
(the CLI then exits without waiting for it), against a real nats-server.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from dagnats.runtime.connection import Connection
from dagnats.worker import TaskContext, Worker
from dagnats.worker_invoke import Raised, Returned, invoke_here
from kernel.effects import EnqueueTask
from tests.nats_fixtures import unique, wait_for

WAIT_MS = 20_000


def task_of(task_type: str, deadline_ms: int | None = None) -> EnqueueTask:
    run_id = unique("run")
    return EnqueueTask(
        run_id=run_id, step_id="only", attempt=1, task=task_type, input=msgspec.Raw(b"{}"),
        metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:only:1", deadline_ms=deadline_ms,
    )  # fmt: skip


async def test_a_handler_without_a_deadline_runs_in_the_jobs_task_one_with_in_its_own() -> None:
    worker = Worker()
    seen: list[asyncio.Task[object] | None] = []

    async def where(_context: TaskContext) -> str:
        seen.append(asyncio.current_task())
        return "here"

    for deadline_ms in (None, worker.now_ms() + WAIT_MS):
        task = task_of("tests.where", deadline_ms)
        outcome = await worker._run_handler(where, TaskContext(task, "w"), task)
        assert isinstance(outcome, Returned) and outcome.value == "here"
    assert seen[0] is asyncio.current_task(), "no deadline: the job's task"
    assert seen[1] is not asyncio.current_task(), "a deadline: a task of its own"


async def test_what_a_handler_raises_itself_is_its_outcome_cancelled_error_included() -> None:
    task = task_of("tests.raises")

    async def own_cancel(_context: TaskContext) -> None:
        raise asyncio.CancelledError

    async def interrupt(_context: TaskContext) -> None:
        raise KeyboardInterrupt

    for handler, kind in ((own_cancel, asyncio.CancelledError), (interrupt, KeyboardInterrupt)):
        outcome = await invoke_here(handler, TaskContext(task, "w"))
        assert isinstance(outcome, Raised) and isinstance(outcome.error, kind), outcome
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_a_cancellation_of_the_job_goes_on_up_and_is_no_outcome() -> None:
    task = task_of("tests.waits")
    entered = asyncio.Event()

    async def waits(_context: TaskContext) -> None:
        entered.set()
        await asyncio.Event().wait()

    job = asyncio.create_task(invoke_here(waits, TaskContext(task, "w")))
    await asyncio.wait_for(entered.wait(), WAIT_MS / 1000)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(job, WAIT_MS / 1000)


async def test_a_drained_handler_that_ignores_its_cancellation_is_counted_hung(
    connection: Connection,
) -> None:
    task_type = unique("tests.stubborn").replace("-", "_")
    entered, release = asyncio.Event(), asyncio.Event()
    cancels: list[int] = []

    async def stubborn(_context: TaskContext) -> None:
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels.append(1)  # and goes on waiting
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    worker = Worker(concurrency=1)
    worker.add(task_type, stubborn)
    worker.drain_timeout_ms, worker.handler_cancel_grace_ms = 1_000, 100
    task = task_of(task_type)
    await connection.tasks.publish(task_type, msgspec.json.encode(task), task.msg_id)
    stop = asyncio.Event()
    commands = connection.commands
    serving = asyncio.create_task(worker.serve(connection.tasks, commands, commands, stop))
    try:
        await asyncio.wait_for(entered.wait(), WAIT_MS / 1000)
        stop.set()
        await asyncio.wait_for(serving, WAIT_MS / 1000)  # the drain's bounds, not the handler
        assert cancels == [1], "the drain cancelled it once"
        assert len(worker.hung) == 1, "left running: counted hung, so the CLI does not wait"
        assert worker.handled == 0
    finally:
        release.set()
        await wait_for(lambda: not worker.hung, timeout_ms=WAIT_MS, what="the handler ended")
