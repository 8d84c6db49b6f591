"""The engine's folds handed to the projections of its process (`projector_folds.SharedFolds`).

- the query tables and the snapshot folder take the state after a message from there instead
  of evolving its events, and their tables and snapshots are those of folding it themselves;
- a state that is not the one after the message on theirs (not ahead, a count that does not
  add up) is not taken: they fold the events;
- the map is bounded (oldest out) and answers only for the run that appended at that sequence;
- an engine given one notes each append (sequence, run, events, state after).
"""

from __future__ import annotations

import pytest
from sqlite_utils import Database

import projections.snapshot as snapshot_module
import projections.sqlite as sqlite_module
from dagnats.runtime.engine import Engine
from dagnats.runtime.projector_folds import SharedFolds
from dagnats.sim.memory import LogPort, MemoryEventLog, VirtualTime
from kernel import codec
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from projections.base import Message, SqliteRunner
from projections.lives import fold
from projections.snapshot import SnapshotFolder
from projections.sqlite import QueryTables
from tests.kernel_dsl import RUN_ID, complete, start, task, workflow
from tests.test_projections_properties import dump, rebuilt
from tests.test_query_tables_states import HISTORY


def _folds_of(messages: list[Message]) -> SharedFolds:
    """What an engine that appended `messages` would have noted."""
    folds = SharedFolds(size_max=len(messages))
    states: dict[str, RunState] = {}
    for seq, run_id, data in messages:
        events = codec.decode_events(data)
        state = states.get(run_id, INITIAL_STATE)
        for event in events:
            state = evolve(state, event)
        states[run_id] = state
        folds.appended(seq, run_id, events, state)
    return folds


class _Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, state: RunState, event: object) -> RunState:
        self.calls += 1
        return fold(state, event)  # type: ignore[arg-type]


def test_the_query_tables_take_the_given_states_and_equal_their_own_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = rebuilt(HISTORY, QueryTables())
    folds = _folds_of(HISTORY)
    counted = _Counted()
    monkeypatch.setattr(sqlite_module, "fold", counted)
    db = Database(memory=True)
    runner = SqliteRunner(db, QueryTables(folded=folds.state))
    seq = runner.open()
    for first in range(0, len(HISTORY), 50):
        batch = HISTORY[first : first + 50]
        seq = runner.apply_batch(
            batch, after_seq=seq, now_ms=0, decoded=folds.events_of(batch)
        ).seq
    assert counted.calls == 0, "every message's state was given"
    assert dump(db, QueryTables.tables) == dump(whole, QueryTables.tables)


def test_a_given_state_not_ahead_of_the_tables_is_not_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = rebuilt(HISTORY, QueryTables())
    counted = _Counted()
    monkeypatch.setattr(sqlite_module, "fold", counted)
    db = Database(memory=True)
    SqliteRunner(db, QueryTables(folded=lambda _seq, _run: INITIAL_STATE)).apply_all(HISTORY)
    assert counted.calls == sum(len(codec.decode_events(data)) for _, _, data in HISTORY)
    assert dump(db, QueryTables.tables) == dump(whole, QueryTables.tables)


def _snapshots(folder: SnapshotFolder) -> list[tuple[str, int, bytes]]:
    decoded = [(seq, run_id, codec.decode_events(data)) for seq, run_id, data in HISTORY]
    found: list[tuple[str, int, bytes]] = []
    for first in range(0, len(decoded), 40):
        batch = decoded[first : first + 40]
        folder.to_load(batch)
        due = folder.apply(batch)
        folder.written(due)
        found.extend((s.run_id, s.last_seq, codec.encode(s.state)) for s in due)
    return found


def test_the_snapshot_folder_takes_the_given_states_and_writes_the_same_snapshots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = _snapshots(SnapshotFolder())
    folds = _folds_of(HISTORY)
    counted = _Counted()
    monkeypatch.setattr(snapshot_module, "fold", counted)
    assert _snapshots(SnapshotFolder(folded=folds.state)) == expected
    assert counted.calls == 0 and expected
    wrong = SnapshotFolder(folded=lambda _seq, _run: INITIAL_STATE)  # (counts do not add up)
    assert _snapshots(wrong) == expected and counted.calls > 0


def test_the_map_is_bounded_and_answers_for_the_run_that_appended() -> None:
    folds = SharedFolds(size_max=2)
    state = RunState(run_id="run-1")
    event = codec.decode_events(HISTORY[0][2])
    for seq in (1, 2, 3):
        folds.appended(seq, "run-1", event, state)
    assert len(folds) == 2
    assert folds.state(1, "run-1") is None, "the oldest went"
    assert folds.state(3, "run-1") is state and folds.state(3, "run-2") is None
    lookup = folds.events_of([(2, "run-1", b""), (3, "run-2", b""), (9, "run-1", b"")])
    assert (lookup(2), lookup(3), lookup(9)) == (event, None, None)


class _Sink:
    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        return None

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        return None

    async def cancel(self, run_id: str, timer_id: str) -> None:
        return None

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        raise AssertionError(f"dead letter {kind}: {reason}")


async def test_an_engine_given_a_map_notes_each_append() -> None:
    log = MemoryEventLog(VirtualTime())
    sink = _Sink()
    engine = Engine(LogPort(log), sink, sink, sink)
    folds = engine.folds = SharedFolds()
    pair = workflow(task("a"), task("b", "a"))
    assert await engine.handle(codec.encode(start(pair, at_ms=1))) == "applied"
    assert await engine.handle(codec.encode(complete("a", at_ms=2))) == "applied"
    assert await engine.handle(codec.encode(complete("b", at_ms=3))) == "applied"
    assert len(log.messages) == 3 and len(folds) == 3
    state = INITIAL_STATE
    for message in log.messages:
        events = codec.decode_events(message.payload)
        for event in events:
            state = evolve(state, event)
        assert folds.events_of([(message.seq, RUN_ID, b"")])(message.seq) == events
        assert folds.state(message.seq, RUN_ID) == state
    assert state.status == "completed"
