"""The batch path's settling (dagnats/runtime/batched.py) on a real nats-server.

One command whose ack fails does not stop the others' acks, is never nakked after the
others were acked, and nothing stays held in progress (`Engine._unsettled`). A broken
invariant raised after the batch's append parks the run and naks the batch's commands (as
the per-command path does), never acks them as "ignored" with their effects unissued. A
result that falls back to the per-command path is authorized once, not twice. Each batched
command's decision span opens before it is decided and closes with its outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NoReturn

import pytest

from dagnats.observe.hooks import Decision as Seen
from dagnats.runtime import batched
from dagnats.runtime import engine as engine_module
from dagnats.runtime.connection import Connection
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.roles import authorize_command
from kernel import batch as kernel_batch
from kernel.batch import Decided
from kernel.commands import AnyCommand, DecideAll
from kernel.events import AnyEvent
from kernel.state import RunState
from tests.nats_fixtures import unique, wait_for
from tests.test_batched_engine import (
    Naked,
    branches,
    decisions,
    engine_on,
    fan_out,
    fetch_all,
    publish,
    result,
    started,
    unacked,
    wait_ms,
)


class AckFails(Naked):
    """A fetched command whose ack raises (the transport failed for this one message)."""

    def __init__(self, message: CommandMessage) -> None:
        super().__init__(message)
        self.nakked = False

    async def ack(self) -> None:
        raise ConnectionError("ack lost")

    async def nak(self, delay_ms: int = 0) -> None:
        self.nakked = True
        await self.message.nak(delay_ms)


async def test_one_failing_ack_leaves_the_others_acked_and_nothing_held(
    connection: Connection,
) -> None:
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(unique("t")))
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    fetched = await fetch_all(connection, branches)
    failing = AckFails(fetched[2])
    batch: list[CommandMessage] = [*fetched[:2], failing, *fetched[3:]]
    await engine.handle_batch(batch)  # (never raises)

    history = await decisions(connection, run_id)
    assert len(history) == 2 and isinstance(history[1].command, DecideAll)
    assert not engine._unsettled, "a command stays held in progress forever"
    assert not failing.nakked
    assert engine.counters.get("batched") == 1, engine.counters

    async def only_the_failing_one() -> bool:
        return await unacked(connection) == 1

    await wait_for(only_the_failing_one, timeout_ms=wait_ms, what="every other command acked")


async def test_a_broken_invariant_after_the_batchs_append_parks_the_run(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(unique("t")))

    def broken(before: RunState, after: RunState, events: tuple[AnyEvent, ...]) -> NoReturn:
        raise AssertionError("an invariant broke")

    monkeypatch.setattr(engine.observer, "appended", broken)  # (inside `_append`, after it)
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    await engine.handle_batch(await fetch_all(connection, branches))

    assert "evolve broke an invariant" in engine.parked.get(run_id, ""), engine.parked
    assert "ignored" not in engine.counters, engine.counters
    assert not engine._unsettled
    assert await unacked(connection) == branches, "every command of the batch nakked"


async def test_a_result_that_falls_back_is_authorized_once(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("t")
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(name, max_task_concurrency={name: 50}))
    calls: list[str] = []

    def counted(subject: str, command: AnyCommand, scheduler: str | None) -> AnyCommand | str:
        calls.append(subject)
        return authorize_command(subject, command, scheduler)

    for module in (engine_module, batched):  # (wherever a command is authorized)
        monkeypatch.setattr(module, "authorize_command", counted, raising=False)
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    await engine.handle_batch(await fetch_all(connection, branches))
    assert "batched" not in engine.counters, "admission rules: the per-command path"
    assert engine.counters.get("applied") == branches + 1, engine.counters  # (and the start)
    assert len(calls) == branches, "each command authorized once"


async def test_each_batched_commands_decision_span_wraps_its_decide_and_names_its_outcome(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_on(connection)
    run_id = await started(connection, engine, fan_out(unique("t")))
    log: list[str] = []
    opened = engine.observer.decision

    @contextlib.contextmanager
    def decision(command: AnyCommand) -> Iterator[Seen]:
        with opened(command) as seen:
            log.append("open")
            yield seen
            log.append(f"close {seen.outcome}")

    deciding = kernel_batch.decide_in_turn

    def decide_in_turn(state: RunState, commands: Sequence[AnyCommand]) -> list[Decided]:
        log.append("decide")
        return deciding(state, commands)

    monkeypatch.setattr(engine.observer, "decision", decision)
    monkeypatch.setattr(batched, "decide_in_turn", decide_in_turn)
    await publish(connection, [result(run_id, f"p{i}") for i in range(branches)])
    await engine.handle_batch(await fetch_all(connection, branches))
    assert engine.counters.get("batched") == 1, engine.counters
    assert log == ["open"] * branches + ["decide"] + ["close applied"] * branches, log
