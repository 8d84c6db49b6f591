"""Serve's projections paced on the engine's loop (`runtime/projector_pace`): an inline
query-tables batch is applied in slices, one transaction, each slice when the engine has no
command in flight (or its deferral budget is spent); the rows are those of a batch applied at
once, a command in flight goes first, a constantly busy engine does not starve the
projection, and a batch cancelled between two slices leaves nothing of itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from dagnats.runtime.projector_pace import Pacer, slice_messages_max, slices
from dagnats.runtime.projector_sqlite import SqliteTarget
from kernel.events import AnyEvent
from projections.base import Message, Position
from projections.sqlite import QueryTables
from tests.projection_support import History, completed_run, histories
from tests.test_projector_sqlite_inline import dump, project

WAIT_BOUND_S = 30.0  # any wait of these tests ends by then (a failure otherwise)
RUNS = 20  # completed runs in `many_runs`: more than two slices of messages


def many_runs() -> list[Message]:
    messages: list[Message] = []
    for index in range(RUNS):
        run_id = f"run-{index}"
        for data in completed_run(run_id):
            messages.append((len(messages) + 1, run_id, data))
    assert len(messages) > 2 * slice_messages_max, len(messages)
    return messages


class CountingTables(QueryTables):
    """QueryTables that counts the events it applied (to see where a batch is)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        self.seen += 1
        super().apply(db, event, at)


def test_slices_cut_a_batch_in_order() -> None:
    messages = many_runs()
    parts = slices(messages)
    assert [m for part in parts for m in part] == messages
    assert all(1 <= len(part) <= slice_messages_max for part in parts)
    assert len(parts) > 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(runs_max=3, commands_max=20), batch=st.integers(1, 80), busy=st.data())
def test_paced_batches_write_what_batches_at_once_write(
    tmp_path_factory: object, history: History, batch: int, busy: st.DataObject
) -> None:
    directory = Path(str(tmp_path_factory.mktemp("paced")))  # type: ignore[attr-defined]
    answers = busy.draw(st.lists(st.integers(0, 1), min_size=1, max_size=8), label="busy")
    calls = iter(range(10**9))

    async def both() -> None:
        await project(directory / "once.sqlite", history.messages, batch, inline=True)
        pacer = Pacer(lambda: answers[next(calls) % len(answers)], defer_ms_max=5)
        target = SqliteTarget(directory / "paced.sqlite", QueryTables(), inline=True, pacer=pacer)
        position = await target.open()
        try:
            for start in range(0, len(history.messages), batch):
                position, _ = await target.apply(history.messages[start : start + batch], position)
        finally:
            await target.close()

    asyncio.run(both())
    assert dump(directory / "paced.sqlite") == dump(directory / "once.sqlite")


async def test_a_command_in_flight_goes_before_the_batch(tmp_path: Path) -> None:
    messages = many_runs()
    in_flight = 0
    tables = CountingTables()
    target = SqliteTarget(
        tmp_path / "q.sqlite", tables, inline=True, pacer=Pacer(lambda: in_flight)
    )
    position = await target.open()
    seen_by_command: list[int] = []

    async def command() -> None:
        """An engine command: in flight across several turns of the loop (its append, its
        task's publish), then settled."""
        nonlocal in_flight
        in_flight += 1
        for _ in range(20):
            await asyncio.sleep(0)
            seen_by_command.append(tables.seen)
        in_flight -= 1

    try:
        handling = asyncio.create_task(command())
        await asyncio.sleep(0)  # (the command is in flight first)
        seq, applied = await asyncio.wait_for(target.apply(messages, position), WAIT_BOUND_S)
        await handling
    finally:
        await target.close()
    assert seen_by_command == [0] * 20, "the batch ran while the command was in flight"
    assert seq == messages[-1][0] and applied == tables.seen > 0


async def test_slices_let_the_loop_run_between_them(tmp_path: Path) -> None:
    messages = many_runs()
    tables = CountingTables()
    target = SqliteTarget(tmp_path / "q.sqlite", tables, inline=True, pacer=Pacer(lambda: 0))
    position = await target.open()
    seen: list[int] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            seen.append(tables.seen)
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        _, applied = await asyncio.wait_for(target.apply(messages, position), WAIT_BOUND_S)
    finally:
        done.set()
        await ticking
        await target.close()
    between = {count for count in seen if 0 < count < applied}
    assert len(between) >= 2, f"the loop ran only before or after the batch: {sorted(set(seen))}"


async def test_a_constantly_busy_engine_does_not_starve_the_batch(tmp_path: Path) -> None:
    messages = many_runs()
    asked = 0

    def busy() -> int:
        nonlocal asked
        asked += 1
        return 1  # (always a command in flight)

    pacer = Pacer(busy, defer_ms_max=20, poll_ms=1)
    target = SqliteTarget(tmp_path / "q.sqlite", QueryTables(), inline=True, pacer=pacer)
    position = await target.open()
    try:
        seq, _ = await asyncio.wait_for(target.apply(messages, position), WAIT_BOUND_S)
    finally:
        await target.close()
    assert seq == messages[-1][0]
    assert pacer.deferred_s > 0 and pacer.turns > 2
    # Once the budget is spent, a turn asks once and goes on (no polling per slice).
    assert asked <= pacer.turns + int(20 / 1) * 4 + 4, asked
    once = tmp_path / "once.sqlite"
    await project(once, messages, len(messages), inline=True)
    assert dump(tmp_path / "q.sqlite") == dump(once)


async def test_a_batch_cancelled_between_slices_leaves_nothing(tmp_path: Path) -> None:
    messages = many_runs()
    tables = CountingTables()
    target = SqliteTarget(tmp_path / "q.sqlite", tables, inline=True, pacer=Pacer(lambda: 0))
    position = await target.open()
    try:
        applying = asyncio.create_task(target.apply(messages, position))
        for _ in range(1_000):  # until the batch is between two slices
            await asyncio.sleep(0)
            if tables.seen > 0:
                break
        assert tables.seen > 0 and not applying.done()
        applying.cancel()
        await asyncio.gather(applying, return_exceptions=True)
        assert applying.cancelled()
        assert await target.stored_seq() == position, "the cancelled batch left its checkpoint"
        seq, _ = await asyncio.wait_for(target.apply(messages, position), WAIT_BOUND_S)
        assert seq == messages[-1][0]
    finally:
        await target.close()
    once = tmp_path / "once.sqlite"
    await project(once, messages, len(messages), inline=True)
    assert dump(tmp_path / "q.sqlite") == dump(once)
