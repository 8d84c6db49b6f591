"""A worker's job starts at once where Python can (3.12+, dagnats/worker_invoke.start_job).

The handler of a task runs, and its result is handed to the publisher, within the call that
hands the task message over (`Worker._dispatch`, called in the read-loop callback that
brought it), not one loop iteration later; on Python 3.11 the job is scheduled as before.
Either way the job is counted in flight until its done callback has run, also when it ended
during its first step (a duplicate of an attempt already finished is acked at once), and the
task is acked only after its result was acknowledged.

The task messages and the command publisher here are small in-memory stand-ins of the
protocols (`TaskMessage`, `CommandPublisher`): what is observed is the worker's own order of
work, which a server would only blur.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
import pytest

from dagnats.worker import TaskContext, Worker
from dagnats.worker_invoke import start_job
from dagnats.worker_slots import HandlerSlots
from kernel.effects import EnqueueTask

TASK_TYPE = "eager.work"
EAGER = sys.version_info >= (3, 12)


class Message:
    """A delivered task message (protocols.TaskMessage), its settlement recorded."""

    def __init__(self, task: EnqueueTask, log: list[str]) -> None:
        self.subject = f"dagnats.task.{task.task}"
        self.data = msgspec.json.encode(task)
        self.num_delivered = 1
        self.stored_ms = None  # (a stand-in without the server's clock: check_due reads it)
        self.headers: dict[str, str] | None = None
        self.log = log

    async def ack(self) -> None:
        self.log.append("task acked")

    async def nak(self, delay_ms: int = 0) -> None:
        self.log.append("task given back")

    async def term(self) -> None:
        self.log.append("task terminated")

    async def in_progress(self) -> None:
        self.log.append("heartbeat")


class Commands:
    """A command publisher whose acknowledgement comes when the test says so."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.acknowledged = asyncio.Event()

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        self.log.append(f"published {msg_id}")
        await self.acknowledged.wait()
        self.log.append(f"acknowledged {msg_id}")

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        self.log.append(f"dead {kind}")


def task_of(run_id: str) -> EnqueueTask:
    return EnqueueTask(
        run_id=run_id, step_id="s1", attempt=1, task=TASK_TYPE, input=msgspec.Raw(b"{}"),
        metadata=msgspec.Raw(b"{}"), msg_id=f"{run_id}:s1:1",
    )  # fmt: skip


def worker_logging(log: list[str]) -> Worker:
    worker = Worker(concurrency=4, worker_id="eager-test")

    async def handler(context: TaskContext) -> str:
        log.append(f"handler {context.run_id}")
        return "done"

    worker.add(TASK_TYPE, handler)
    worker._slots = HandlerSlots(worker.concurrency)  # (as `serve` sets them)
    return worker


async def settled(worker: Worker) -> None:
    for _ in range(100):  # a bounded number of loop iterations
        if not worker.in_flight_count():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{worker.in_flight_count()} job(s) still in flight after 100 turns")


@pytest.mark.skipif(not EAGER, reason="a task starts at once only on Python 3.12+")
async def test_a_handler_runs_and_its_result_is_published_within_the_hand_over() -> None:
    log: list[str] = []
    worker, commands = worker_logging(log), Commands(log)
    worker._dispatch([Message(task_of("r1"), log)], commands, commands)
    # Nothing awaited yet: the job ran up to the wait for its result's acknowledgement.
    assert log == ["handler r1", "published result:r1:s1:1"], log
    assert worker.in_flight_count() == 1
    commands.acknowledged.set()
    await settled(worker)
    assert log[2:] == ["acknowledged result:r1:s1:1", "task acked"], log


async def test_a_task_is_acked_only_after_its_result_is_acknowledged() -> None:
    log: list[str] = []
    worker, commands = worker_logging(log), Commands(log)
    worker._dispatch([Message(task_of("r2"), log)], commands, commands)
    for _ in range(20):  # the job waits for the acknowledgement, however long it runs
        await asyncio.sleep(0)
    assert log == ["handler r2", "published result:r2:s1:1"], log
    assert worker.in_flight_count() == 1
    commands.acknowledged.set()
    await settled(worker)
    assert log[-2:] == ["acknowledged result:r2:s1:1", "task acked"], log
    assert worker.handled == 1


async def test_a_job_done_in_its_first_step_leaves_the_in_flight_set_by_its_callback() -> None:
    log: list[str] = []
    worker, commands = worker_logging(log), Commands(log)
    worker._finished["r3:s1:1"] = None  # its result was sent: a repeat delivery is acked
    ended: list[None] = []

    class Fetching:
        def job_ended(self) -> None:
            ended.append(None)

    worker._fetching = Fetching()  # type: ignore[assignment]
    worker._dispatch([Message(task_of("r3"), log)], commands, commands)
    assert worker.in_flight_count() == 1  # (done or not, counted until its callback ran)
    await settled(worker)
    assert log == ["task acked"], log
    assert ended == [None]
    assert "handler r3" not in log


async def test_start_job_runs_the_job_to_its_end() -> None:
    steps: list[str] = []

    async def job() -> None:
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")

    task = start_job(job())
    assert steps == (["first"] if EAGER else []), steps
    await task
    assert steps == ["first", "second"]
