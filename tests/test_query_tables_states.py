"""The query tables' run states: kept in memory between batches, stored every 64 events.

- a run no longer in memory (a new instance: a restart; or beyond the bound of states kept)
  is loaded from its stored state and its `events` rows after it: the tables still equal a
  rebuild from zero, in any batches, for runs long enough to have stored states;
- a state is stored exactly where a message takes the run's event count past a multiple of
  `state_every_events` (a function of the stream: a rebuild stores the same ones);
- a batch rolled back (its checkpoint's update failed after the rows were written) leaves
  nothing of it in memory: the batch applied again gives the tables of a rebuild;
- after a rebuild (`reset_projection`) under the same instance, nothing it remembered of the
  old tables is used: the tables equal a rebuild.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from bench.kernel_fold import build_run, chain_workflow
from kernel import codec, limits
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE
from projections.base import CHECKPOINTS_TABLE, Message, SqliteRunner, reset_projection
from projections.sqlite import STATES_TABLE, QueryTables, state_every_events
from tests.test_projections_properties import batches, dump, rebuilt

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUNS = ("run-a", "run-b", "run-c")


def _long_history(steps: int = 30) -> list[Message]:
    """Three interleaved runs of a chain whose steps each fail once (well past 64 events)."""
    runs = [
        [codec.encode_decision(command, events) for command, events in build_run(
            chain_workflow(steps), run_id, 1_000 * index)]
        for index, run_id in enumerate(RUNS)
    ]  # fmt: skip
    messages: list[Message] = []
    for position in range(max(len(run) for run in runs)):
        for run_id, run in zip(RUNS, runs, strict=True):
            if position < len(run):
                messages.append((len(messages) + 1, run_id, run[position]))
    return messages


HISTORY = _long_history()


def _apply_with_new_instances(db: Database, pieces: list[list[Message]]) -> None:
    for piece in pieces:
        runner = SqliteRunner(db, QueryTables())  # nothing in memory: loaded from the rows
        runner.apply_batch(piece, after_seq=runner.open(), now_ms=0)


@SETTINGS
@given(data=st.data())
def test_runs_loaded_from_stored_states_and_events_equal_a_rebuild(data: st.DataObject) -> None:
    whole = rebuilt(HISTORY, QueryTables())
    incremental = Database(memory=True)
    _apply_with_new_instances(incremental, data.draw(batches(HISTORY, redeliver=True)))
    assert dump(incremental, QueryTables.tables) == dump(whole, QueryTables.tables)


def test_runs_beyond_the_bound_kept_in_memory_are_loaded_and_equal_a_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = rebuilt(HISTORY, QueryTables())
    monkeypatch.setattr(limits, "query_states_cached_max", 1)
    db = Database(memory=True)
    runner = SqliteRunner(db, QueryTables())
    seq = runner.open()
    for first in range(0, len(HISTORY), 5):  # (3 runs in each batch, 1 kept)
        seq = runner.apply_batch(HISTORY[first : first + 5], after_seq=seq, now_ms=0).seq
    assert dump(db, QueryTables.tables) == dump(whole, QueryTables.tables)


def test_a_state_is_stored_where_a_message_passes_a_multiple_of_64_events() -> None:
    db = rebuilt(HISTORY, QueryTables())
    stored = {
        run_id: (seq, codec.decode_state(state))
        for run_id, seq, state in db.execute(f"SELECT run_id, last_seq, state FROM {STATES_TABLE}")
    }
    for run_id in RUNS:
        state, count_before, expected = INITIAL_STATE, 0, None
        for seq, owner, data in HISTORY:
            if owner != run_id:
                continue
            for event in codec.decode_events(data):
                state = evolve(state, event)
            if state.event_count // state_every_events > count_before // state_every_events:
                expected = (seq, state)
            count_before = state.event_count
        assert state.event_count > 2 * state_every_events, state.event_count
        assert expected is not None and stored[run_id] == expected, run_id
        assert stored[run_id][0] < max(seq for seq, owner, _ in HISTORY if owner == run_id)


def _failing_checkpoint_update(
    action: int, table: str | None, *_: object
) -> int:  # (an authorizer: the batch's last write is refused)
    refused = action == sqlite3.SQLITE_UPDATE and table == CHECKPOINTS_TABLE
    return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK


def test_a_rolled_back_batch_leaves_nothing_in_memory() -> None:
    whole = rebuilt(HISTORY, QueryTables())
    db = Database(memory=True)
    projection = QueryTables()
    runner = SqliteRunner(db, projection)
    half = len(HISTORY) // 2
    seq = runner.apply_batch(HISTORY[:half], after_seq=runner.open(), now_ms=0).seq
    db.conn.set_authorizer(_failing_checkpoint_update)
    with pytest.raises(sqlite3.DatabaseError):
        runner.apply_batch(HISTORY[half:], after_seq=seq, now_ms=0)
    db.conn.set_authorizer(None)
    assert db.execute("SELECT MAX(seq) FROM events").fetchone()[0] == HISTORY[half - 1][0]
    runner.apply_batch(HISTORY[half:], after_seq=seq, now_ms=0)
    assert dump(db, QueryTables.tables) == dump(whole, QueryTables.tables)


def test_a_rebuild_under_the_same_instance_uses_nothing_it_remembered() -> None:
    whole = rebuilt(HISTORY, QueryTables())
    db = Database(memory=True)
    projection = QueryTables()
    runner = SqliteRunner(db, projection)
    runner.apply_all(HISTORY[: len(HISTORY) // 2])
    reset_projection(db, projection.name, projection.tables)
    # From zero again, first a few messages only: the states remembered are of the old tables.
    seq = runner.apply_batch(HISTORY[:4], after_seq=runner.open(), now_ms=0).seq
    runner.apply_batch(HISTORY[4:], after_seq=seq, now_ms=0)
    assert dump(db, QueryTables.tables) == dump(whole, QueryTables.tables)
