"""The engine's batch path (dagnats/runtime/batched.py) on a real nats-server.

A fan-out run's results, fetched together from the real commands consumer, are appended as
ONE history message (a DecideAll) and every one of them is acked; a duplicate among them is
acked and left out; the join is scheduled. When those commands come back (naked, as after a
crash between the append and the acks), another engine recognises each as decided (it is in
the DecideAll), appends nothing and issues the batch's effects again, once. A run with admission
rules is never batched (admission wraps each of its commands).
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from dagnats.runtime.clock import now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.resources import COMMANDS_STREAM, ENGINE_CONSUMER
from kernel import codec
from kernel.commands import AnyCommand, CompleteTask, DecideAll, StartRun
from kernel.events import Decision, StepCompleted, StepScheduled
from kernel.workflow import WorkflowDef, parse_workflow
from tests.nats_fixtures import unique, wait_for

wait_ms = 20_000
branches = 12


def fan_out(name: str, **fields: object) -> WorkflowDef:
    steps: list[dict[str, object]] = [{"id": f"p{i}", "task": name} for i in range(branches)]
    steps.append({"id": "join", "task": name, "depends_on": [f"p{i}" for i in range(branches)]})
    return parse_workflow(msgspec.json.encode({"name": name, "steps": steps, **fields}))


def engine_on(connection: Connection) -> Engine:
    return Engine(connection.history, connection.tasks, connection.timers, connection.commands)


async def started(connection: Connection, engine: Engine, workflow: WorkflowDef) -> str:
    run_id = unique("fan")
    start = StartRun(run_id=run_id, at_ms=now_ms(), workflow=workflow)
    assert await engine.handle(codec.encode(start), 1) == "applied"
    return run_id


def result(run_id: str, step_id: str) -> CompleteTask:
    output = msgspec.Raw(msgspec.json.encode({"step": step_id}))
    return CompleteTask(run_id=run_id, at_ms=now_ms(), step_id=step_id, attempt=1, output=output)


async def publish(connection: Connection, commands: list[AnyCommand]) -> None:
    for index, command in enumerate(commands):
        msg_id = f"{command.run_id}:{index}"  # (a duplicate result is another message)
        await connection.commands.publish_command(command.run_id, codec.encode(command), msg_id)


async def fetch_all(connection: Connection, count: int) -> list[CommandMessage]:
    """Exactly `count` commands from the engine's consumer (bounded)."""
    got: list[CommandMessage] = []

    async def more() -> bool:
        got.extend(await connection.commands.fetch_commands(batch=256, timeout_ms=500))
        return len(got) >= count

    await wait_for(more, timeout_ms=wait_ms, what=f"{count} commands fetched")
    assert len(got) == count, [m.subject for m in got]
    return got


async def decisions(connection: Connection, run_id: str) -> list[Decision]:
    return [codec.decode_decision(data) async for _, data in connection.history.read(run_id)]


async def unacked(connection: Connection) -> int:
    assert connection.nc is not None
    info = await connection.nc.jetstream().consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
    return int(info.num_ack_pending) + int(info.num_pending)


class Naked:
    """A fetched command whose ack becomes a nak: the engine stopped before its acks."""

    def __init__(self, message: CommandMessage) -> None:
        self.message = message

    @property
    def subject(self) -> str:
        return self.message.subject

    @property
    def data(self) -> bytes:
        return self.message.data

    @property
    def num_delivered(self) -> int:
        return self.message.num_delivered

    async def ack(self) -> None:
        await self.message.nak(0)

    async def nak(self, delay_ms: int = 0) -> None:
        await self.message.nak(0)

    async def in_progress(self) -> None:
        await self.message.in_progress()

    async def term(self) -> None:
        await self.message.term()


async def test_a_fan_outs_results_of_one_fetch_are_one_append_and_all_acked(
    connection: Connection,
) -> None:
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(unique("t")))
    commands: list[AnyCommand] = [result(run_id, f"p{i}") for i in range(branches)]
    commands.insert(3, result(run_id, "p1"))  # a duplicate: decides nothing, acked
    await publish(connection, commands)
    await engine.handle_batch(await fetch_all(connection, len(commands)))

    history = await decisions(connection, run_id)
    assert len(history) == 2, [type(d.command).__name__ for d in history]
    batch = history[1].command
    assert isinstance(batch, DecideAll), batch
    assert [c.step_id for c in batch.commands if isinstance(c, CompleteTask)] == [
        f"p{i}" for i in range(branches)
    ], "each result once, in order, the duplicate left out"
    completed = [e.step_id for e in history[1].events if isinstance(e, StepCompleted)]
    assert sorted(completed) == sorted(f"p{i}" for i in range(branches))
    assert any(isinstance(e, StepScheduled) and e.step_id == "join" for e in history[1].events)
    assert engine.counters.get("batched") == 1, engine.counters
    assert engine.counters.get("ignored") == 1, engine.counters
    await wait_for(
        lambda: _zero(connection), timeout_ms=wait_ms, what="every command of the batch acked"
    )
    assert (await engine.load(run_id)).state.steps[-1].status == "scheduled"


async def _zero(connection: Connection) -> bool:
    return await unacked(connection) == 0


async def test_redelivered_commands_of_a_batch_are_recognised_and_nothing_is_appended_twice(
    connection: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    first = engine_on(connection)
    run_id = await started(connection, first, fan_out(unique("t")))
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    fetched = await fetch_all(connection, branches)
    await first.handle_batch([Naked(message) for message in fetched])  # appended, not acked
    history = await decisions(connection, run_id)
    assert len(history) == 2 and isinstance(history[1].command, DecideAll)

    second = engine_on(connection)  # another engine, nothing cached: the commands come back
    again = await fetch_all(connection, branches)
    assert all(message.num_delivered == 2 for message in again)
    with caplog.at_level(logging.INFO, logger="dagnats.engine"):
        await second.handle_batch(again)
    # the batch is the run's last message: its effects come again, once (one history read
    # for the message, not one per command of it: runtime/redelivered.py)
    redone = [r for r in caplog.records if "redelivered command's effects again" in r.message]
    assert len(redone) == 1, caplog.text
    assert len(await decisions(connection, run_id)) == 2, "nothing decided twice"
    assert second.counters.get("ignored") == branches, second.counters
    assert "batched" not in second.counters and "applied" not in second.counters
    await wait_for(
        lambda: _zero(connection), timeout_ms=wait_ms, what="every redelivered command acked"
    )


async def test_a_run_with_admission_rules_is_decided_one_command_at_a_time(
    connection: Connection,
) -> None:
    name = unique("t")
    rules = {"max_task_concurrency": {name: 50}}
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(name, **rules))
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    await engine.handle_batch(await fetch_all(connection, branches))
    history = await decisions(connection, run_id)
    assert not any(isinstance(d.command, DecideAll) for d in history)
    completed = [e for d in history for e in d.events if isinstance(e, StepCompleted)]
    assert len(completed) == branches
    assert "batched" not in engine.counters
