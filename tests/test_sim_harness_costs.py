"""What the simulator's in-memory world keeps to spend less per step and per seed, and a multi-run
seed that broke the scheduler: a stored snapshot is decoded once, the timers keep their earliest
fire time, a work queue counts the entries it holds, the projection's database is emptied by rows
(not by restoring its pages, which makes SQLite prepare every statement again), and a handler its
worker cut at its deadline is settled without the scheduler raising."""

from __future__ import annotations

import sqlite3
from importlib import resources

import msgspec
import pytest
from sqlite_utils import Database

from dagnats.examples.order.worker import worker as order_worker
from dagnats.sim import FaultPlan, SimCase, run_seed
from dagnats.sim import memory as sim_memory
from dagnats.sim.memory import MemorySnapshots, SnapshotPort, VirtualTime
from dagnats.sim.memory_queue import ArmedTimer, MemoryTimers, new_command_queue, new_task_queue
from dagnats.sim.stores import ProjectionStores
from kernel.state import RunState
from kernel.workflow import parse_workflow
from projections.base import SqliteProjectionBase, read_checkpoint
from projections.snapshot import Snapshot, decode_snapshot


def _get(port: SnapshotPort, run_id: str) -> Snapshot | None:
    coroutine = port.get(run_id)
    try:
        coroutine.send(None)
    except StopIteration as done:  # (the port never suspends: memory.py)
        value: Snapshot | None = done.value
        return value
    raise AssertionError("SnapshotPort.get suspended")


def test_a_stored_snapshot_is_decoded_once_until_another_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []

    def counting(data: bytes | None, run_id: str) -> Snapshot | None:
        decoded.append(run_id)
        return decode_snapshot(data, run_id)

    monkeypatch.setattr(sim_memory, "decode_snapshot", counting)
    snapshots = MemorySnapshots()
    port = SnapshotPort(snapshots)
    assert _get(port, "r1") is None and decoded == []  # nothing stored: nothing to decode
    snapshots.put(RunState(run_id="r1", status="running"), 3)
    first = _get(port, "r1")
    again = _get(port, "r1")
    assert first is again and decoded == ["r1"], decoded
    assert first == decode_snapshot(snapshots.stored["r1"], "r1")
    snapshots.put(RunState(run_id="r1", status="completed"), 5)  # a new value: decoded again
    later = _get(port, "r1")
    assert decoded == ["r1", "r1"], decoded
    assert later is not None and later.last_seq == 5 and later.state.status == "completed"
    snapshots.stored["r1"] = b"not a snapshot"  # written directly, as the projector does
    assert _get(port, "r1") is None and decoded == ["r1", "r1", "r1"]
    snapshots.delete("r1")
    assert _get(port, "r1") is None and len(decoded) == 3


def _timer(timer_id: str, fire_at_ms: int) -> ArmedTimer:
    return ArmedTimer(
        run_id="r1", timer_id=timer_id, fire_at_ms=fire_at_ms, payload=b"{}", armed_at_ms=0
    )


def test_the_timers_earliest_fire_time_follows_arm_cancel_and_fire() -> None:
    time = VirtualTime(0)
    timers = MemoryTimers(time, new_command_queue(time))
    assert timers.next_due_ms() is None and not timers.has_due()
    timers.arm(_timer("a", 100))
    timers.arm(_timer("b", 50))
    assert timers.next_due_ms() == 50
    timers.cancel("r1", "b")
    assert timers.next_due_ms() == 100
    timers.arm(_timer("a", 30))  # re-armed: replaced, earlier
    assert timers.next_due_ms() == 30 and not timers.has_due()
    time.advance_to(30)
    assert timers.has_due() and [t.timer_id for t in timers.due()] == ["a"]
    timers.fire(timers.due()[0])
    assert timers.next_due_ms() is None and not timers.has_due() and timers.armed == {}
    timers.cancel("r1", "gone")  # (cancelling what is not armed changes nothing)
    assert timers.next_due_ms() is None


def test_a_work_queue_counts_the_entries_it_holds() -> None:
    time = VirtualTime(0)
    queue = new_task_queue(time)

    def held() -> int:
        counted = sum(1 for entry in queue.entries if entry.holder is not None)
        assert queue.held == counted, (queue.held, counted)
        return counted

    entries = [queue.publish_now("t", f"{i}".encode(), f"m{i}") for i in range(4)]
    assert all(entry is not None for entry in entries) and held() == 0
    a, b, c, d = (entry for entry in entries if entry is not None)
    for entry in (a, b, c, d):
        queue.deliver(entry, "w1", deadline_ms=10)
    assert held() == 4
    queue.ack(a, "w1")
    queue.nak(b, 5)
    queue.term(c)
    assert held() == 1
    assert queue.expire() == [] and held() == 1  # d's deadline has not passed
    time.advance_to(10)
    assert queue.expire() == [d] and held() == 0
    assert queue.expire() == []
    for _ in range(queue.deliver_max):  # delivered to the bound, then dropped on expiry
        if d.done:
            break
        queue.deliver(d, "w2", deadline_ms=time.now_ms)
        assert held() == 1
        queue.expire()
    assert d.done and held() == 0 and queue.stats.dropped == 1


def test_a_handler_cut_by_its_worker_at_its_deadline_does_not_break_the_scheduler() -> None:
    """Order example, 8 runs, seed 36: a worker's resend backoff sleeps on the loop's clock, the
    loop jumps it to another handler's deadline and the worker cancels that handler; the
    scheduler then finished that call again (InvalidStateError from the simulator itself)."""
    folder = resources.files("dagnats.examples") / "order"
    workflow = parse_workflow((folder / "workflow.json").read_bytes())
    run_input = msgspec.json.encode(msgspec.json.decode((folder / "input.json").read_bytes()))
    case = SimCase(
        workflow=workflow, worker=order_worker, input=run_input, faults=FaultPlan(), runs=8
    )
    result = run_seed(case, 36)
    assert result.ok, [violation.message for violation in result.violations]
    assert set(result.runs.values()) == {"completed"}, result.runs
    assert result.faults.get("lost_result", 0) > 0, result.faults  # (the resend that sleeps)


class _Counted(SqliteProjectionBase):
    """A projection with an AUTOINCREMENT key (what a seed leaves in its counter shows)."""

    name = "counted"
    tables = ("counted",)

    def create(self, db: Database) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS counted (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT)"
        )


class _CountingConnection:
    """The database's connection, counting the restores of its pages (`deserialize`)."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self.inner = inner
        self.restores = 0

    def deserialize(self, data: bytes) -> None:
        self.restores += 1
        self.inner.deserialize(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _a_seed(stores: ProjectionStores, db: Database, rows: int) -> list[int]:
    stores.fresh(db, _Counted())
    for index in range(rows):
        db.execute("INSERT INTO counted (tag) VALUES (?)", [f"row {index}"])
    return [row[0] for row in db.execute("SELECT id FROM counted ORDER BY id")]


def test_fresh_puts_the_rows_back_and_restores_the_pages_only_when_the_schema_moved() -> None:
    """Once a first `fresh` left the database emptied, later ones empty the tables and put the
    checkpoint and counters back by rows (the statements SQLite prepared stay prepared); a seed
    that changed the schema gets the pages back instead, and then rows again."""
    stores = ProjectionStores()
    db = stores.live
    connection = _CountingConnection(db.conn)
    db.conn = connection  # type: ignore[assignment]
    assert _a_seed(stores, db, 3) == [1, 2, 3]
    assert _a_seed(stores, db, 5) == [1, 2, 3, 4, 5]
    checkpoint = read_checkpoint(db, _Counted.name)
    for _ in range(3):
        assert _a_seed(stores, db, 2) == [1, 2]
        assert read_checkpoint(db, _Counted.name) == checkpoint
    assert connection.restores == 0, "the rows were put back, no page restored"
    db.execute("CREATE TABLE scratch (x)")  # a seed that moved the schema
    assert _a_seed(stores, db, 1) == [1]
    assert connection.restores == 1 and "scratch" not in db.table_names()
    assert _a_seed(stores, db, 4) == [1, 2, 3, 4] and connection.restores == 1
    assert read_checkpoint(db, _Counted.name) == checkpoint
