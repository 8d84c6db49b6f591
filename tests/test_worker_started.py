"""Who ran an attempt and since when: a worker that does not report `TaskStarted` says it in
its result (`worker_id`, `started_at_ms`), one that does sends `TaskStarted` first and leaves
them out of the result; a failure says it the same way as a completion.

The task messages and the publisher are in-memory stand-ins of the protocols (what is checked
is what the worker publishes)."""

from __future__ import annotations

import asyncio

import msgspec

from dagnats.worker import TaskContext, Worker
from dagnats.worker_slots import HandlerSlots
from kernel import codec
from kernel.commands import CompleteTask, FailTask, TaskStarted
from kernel.effects import EnqueueTask


class Message:
    def __init__(self, task: EnqueueTask) -> None:
        self.subject = f"dagnats.task.{task.task}"
        self.data = msgspec.json.encode(task)
        self.num_delivered = 1
        self.stored_ms = None
        self.headers: dict[str, str] | None = None
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay_ms: int = 0) -> None:
        raise AssertionError("not given back")

    async def term(self) -> None:
        raise AssertionError("not terminated")

    async def in_progress(self) -> None:
        pass


class Commands:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        self.sent.append((msg_id, codec.decode_command(payload)))

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        raise AssertionError("no dead letter")


def task_of(task_type: str) -> EnqueueTask:
    return EnqueueTask(
        run_id="r1", step_id="s1", attempt=1, task=task_type, input=msgspec.Raw(b"{}"),
        metadata=msgspec.Raw(b"{}"), msg_id="r1:s1:1",
    )  # fmt: skip


async def ran(report_started: bool, task_type: str) -> list[tuple[str, object]]:
    worker = Worker(concurrency=2, worker_id="w-started", report_started=report_started)

    async def works(_context: TaskContext) -> str:
        return "done"

    async def fails(_context: TaskContext) -> str:
        raise ValueError("no")

    worker.add("works", works)
    worker.add("fails", fails)
    worker._slots = HandlerSlots(worker.concurrency)  # (as `serve` sets them)
    commands, message = Commands(), Message(task_of(task_type))
    await asyncio.wait_for(worker._run_message(message, commands, commands), 5)
    assert message.acked == 1 and worker._slots.free == 2
    return commands.sent


async def test_without_task_started_the_result_says_who_ran_it_since_when() -> None:
    for task_type, kind in (("works", CompleteTask), ("fails", FailTask)):
        [(msg_id, result)] = await ran(False, task_type)
        assert msg_id == "result:r1:s1:1" and isinstance(result, kind), (msg_id, result)
        assert result.worker_id == "w-started"
        assert result.started_at_ms is not None and result.started_at_ms <= result.at_ms


async def test_with_task_started_it_comes_first_and_the_result_leaves_it_out() -> None:
    for task_type, kind in (("works", CompleteTask), ("fails", FailTask)):
        [(first_id, started), (msg_id, result)] = await ran(True, task_type)
        assert first_id == "started:r1:s1:1" and isinstance(started, TaskStarted)
        assert started.worker_id == "w-started"
        assert msg_id == "result:r1:s1:1" and isinstance(result, kind), (msg_id, result)
        assert result.worker_id == "" and result.started_at_ms is None
