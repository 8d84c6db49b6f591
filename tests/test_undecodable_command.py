"""A history message whose command no longer decodes (a command type this code no longer
reads) but whose events do: the engine folds it (kernel/codec.py `decode_events`), and so
do the events-only readers, the snapshot projection (`fold_messages`, `SnapshotFolder`) and
the query projections (`positioned_events`): they agree with the engine's fold, and none
writes a snapshot missing that message's events under a later sequence.
"""

from __future__ import annotations

import pytest

from dagnats.runtime.engine import Engine
from kernel import codec
from kernel.errors import DecodeError
from kernel.state import INITIAL_STATE
from projections.base import positioned_events
from projections.snapshot import SnapshotFolder, fold_messages
from tests.kernel_dsl import complete, given, start, task, workflow


def history() -> list[tuple[int, bytes]]:
    """A run's messages; the second's command has a type tag this code does not know."""
    run = given(start(workflow(task("a"), task("b", "a"), name="w")), complete("a", {"x": 1}))
    messages = [codec.encode_decision(c, e) for c, e in run.history if c is not None]
    assert len(messages) == 2
    renamed = messages[1].replace(b'"complete_task"', b'"a_command_gone_since"', 1)
    assert renamed != messages[1]
    return [(1, messages[0]), (2, renamed)]


def test_every_events_only_reader_folds_what_the_engine_folds() -> None:
    messages = history()
    with pytest.raises(DecodeError):
        codec.decode_decision(messages[1][1])  # (what the readers used to skip)
    engine_state = INITIAL_STATE
    for seq, data in messages:
        engine_state = Engine._fold_message("r", engine_state, seq, data)
    assert engine_state.steps[0].status == "completed"

    folded, last_seq = fold_messages(INITIAL_STATE, 0, messages)
    assert (folded, last_seq) == (engine_state, 2)

    folder = SnapshotFolder(every_events=1)
    decoded = [(seq, engine_state.run_id, codec.decode_events(data)) for seq, data in messages]
    assert folder.to_load(decoded) == []
    due = folder.apply(decoded)
    assert not folder.problems, folder.problems
    assert [(s.last_seq, s.state) for s in due] == [(2, engine_state)]

    problems: list[str] = []
    rows = [(seq, engine_state.run_id, data) for seq, data in messages]
    events = [event for _, event in positioned_events(rows, 0, None, problems)]
    assert not problems, problems
    assert events == [e for _, data in messages for e in codec.decode_events(data)]
    assert len(events) == engine_state.event_count
