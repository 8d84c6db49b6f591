"""A run id's lives (projections/lives.py): a `run.started` for a run a fold already holds
(its id purged and started again) begins from the initial state, in the projections' folds and
in a load from a snapshot of the old life plus the new life's history."""

from __future__ import annotations

import pytest

from kernel.codec import decode_events
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from projections.lives import begins_life, fold
from projections.snapshot import fold_messages
from tests.projection_support import completed_run

RUN = "run-1"


def _folded(messages: list[bytes], state: RunState = INITIAL_STATE) -> RunState:
    for data in messages:
        for event in decode_events(data):
            state = fold(state, event)
    return state


def test_a_run_started_on_an_ended_run_begins_a_new_life() -> None:
    old = _folded(completed_run(RUN))
    assert old.status == "completed"
    started = decode_events(completed_run(RUN, at_ms=90_000)[0])[0]
    assert begins_life(old, started) and not begins_life(INITIAL_STATE, started)
    with pytest.raises(AssertionError):
        evolve(old, started)  # (what evolve says of it: the reason for `fold`)
    again = _folded(completed_run(RUN, at_ms=90_000)[:2], old)
    assert again == _folded(completed_run(RUN, at_ms=90_000)[:2])
    assert again.status == "running" and again.started_at_ms == 90_000


def test_a_stale_snapshot_of_the_old_life_and_the_new_lifes_history_load_the_new_life() -> None:
    old_messages = completed_run(RUN)
    old = _folded(old_messages)
    new_messages = list(enumerate(completed_run(RUN, at_ms=90_000), start=10))
    state, last_seq = fold_messages(old, len(old_messages), new_messages)
    assert last_seq == new_messages[-1][0]
    assert state == _folded([data for _, data in new_messages])
    assert state.status == "completed" and state.started_at_ms == 90_000
