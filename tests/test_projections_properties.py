"""Projections over generated histories (hypothesis; runs made by `decide`, never by hand).

- the SQLite query tables built incrementally, in any batches, equal a rebuild from zero, and
  each run's rows are the rows of its folded state;
- redelivered messages change nothing (the checkpoint is in the same transaction);
- a snapshot taken anywhere plus the tail after it equals the full fold, also through the
  snapshot projection's batches, redeliveries and evictions;
- a version change rebuilds; a custom projection (the example) agrees with a recount.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from examples.projections.task_stats import TaskStats, day_of
from kernel import codec
from kernel.events import StepCompleted, StepFailed, StepScheduled, StepTimedOut
from kernel.reducer import fold
from kernel.state import RunState
from projections.base import (
    CHECKPOINTS_TABLE,
    CheckpointMovedError,
    Message,
    SqliteRunner,
    read_checkpoint,
    reset_projection,
)
from projections.snapshot import (
    SnapshotFolder,
    decode_snapshot,
    encode_snapshot,
    fold_messages,
    make_snapshot,
)
from projections.sqlite import QueryTables, run_row, step_row, stored_rows
from tests.projection_support import History, completed_run, histories
from tests.strategies import RUN_ID

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def batches(draw: st.DrawFn, messages: list[Message], redeliver: bool) -> list[list[Message]]:
    """The messages cut into batches; with `redeliver`, batches also repeat earlier ones."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(messages) - 1)), max_size=5)))
    pieces: list[list[Message]] = []
    start = 0
    for cut in [*cuts, len(messages)]:
        piece = messages[start:cut]
        if redeliver and start > 0:
            back = draw(st.integers(0, start))
            piece = messages[start - back : cut]
        if piece:
            pieces.append(piece)
        start = max(start, cut)
    return pieces


def dump(db: Database, tables: tuple[str, ...]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the tables, sorted (the checkpoint's time left out)."""
    found = {}
    for table in tables:
        rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
        found[table] = sorted((tuple(row) for row in rows), key=repr)
    checkpoints = db.execute(f"SELECT name, version, seq, events FROM {CHECKPOINTS_TABLE}")
    found[CHECKPOINTS_TABLE] = sorted(tuple(row) for row in checkpoints)
    return found


def rebuilt(messages: list[Message], projection: QueryTables | TaskStats) -> Database:
    db = Database(memory=True)
    SqliteRunner(db, projection).apply_all(messages)
    return db


def apply_in(
    db: Database, projection: QueryTables | TaskStats, pieces: list[list[Message]]
) -> None:
    for piece in pieces:
        runner = SqliteRunner(db, projection)  # a fresh runner each batch: a restart
        after = runner.open()
        runner.apply_batch(piece, after_seq=after, now_ms=0)


def expected_rows(
    state: RunState, last_seq: int
) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    return run_row(state, last_seq), [step_row(state, index) for index in range(len(state.steps))]


@SETTINGS
@given(data=st.data(), history=histories())
def test_query_tables_in_any_batches_with_redelivery_equal_a_rebuild(
    data: st.DataObject, history: History
) -> None:
    projection = QueryTables()
    whole = rebuilt(history.messages, projection)
    incremental = Database(memory=True)
    apply_in(incremental, QueryTables(), data.draw(batches(history.messages, redeliver=True)))
    assert dump(incremental, projection.tables) == dump(whole, projection.tables)
    assert projection.problems == []
    events = whole.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert events == sum(len(history.events_of(run_id)) for run_id in history.runs)


@SETTINGS
@given(history=histories())
def test_each_run_row_is_the_row_of_its_folded_state(history: History) -> None:
    db = rebuilt(history.messages, QueryTables())
    for run_id in history.runs:
        events = history.events_of(run_id)
        last_seq = max(seq for seq, owner, _ in history.messages if owner == run_id)
        run, steps = stored_rows(db, run_id)
        want_run, want_steps = expected_rows(fold(events), last_seq)
        assert run == want_run
        assert sorted(steps) == sorted(want_steps)


@SETTINGS
@given(data=st.data(), history=histories(runs_max=2))
def test_snapshot_plus_tail_equals_the_full_fold_at_any_split(
    data: st.DataObject, history: History
) -> None:
    for run_id in history.runs:
        own = [(seq, payload) for seq, owner, payload in history.messages if owner == run_id]
        whole, whole_seq = fold_messages(fold([]), 0, own)
        split = data.draw(st.integers(1, len(own)), label=f"split of {run_id}")
        head_state, head_seq = fold_messages(fold([]), 0, own[:split])
        stored = decode_snapshot(encode_snapshot(make_snapshot(head_state, head_seq)), run_id)
        assert stored is not None and stored.state == head_state
        # the tail is read with after_seq: messages at or before the snapshot are skipped
        state, last_seq = fold_messages(stored.state, stored.last_seq, own)
        assert (state, last_seq) == (whole, whole_seq)


@SETTINGS
@given(
    data=st.data(),
    history=histories(),
    runs_max=st.integers(1, 3),
    every=st.integers(1, 10),
)
def test_the_snapshot_projection_in_any_batches_ends_at_each_runs_fold(
    data: st.DataObject, history: History, runs_max: int, every: int
) -> None:
    store: dict[str, bytes] = {}
    folder = SnapshotFolder(runs_max=runs_max, every_events=every)
    for piece in data.draw(batches(history.messages, redeliver=True)):
        decoded = [(seq, run_id, codec.decode_events(d)) for seq, run_id, d in piece]
        for run_id in folder.to_load(decoded):  # what SnapshotTarget._load does, from "KV"
            snapshot = decode_snapshot(store.get(run_id), run_id)
            own = [(s, d) for s, owner, d in history.messages if owner == run_id]
            last_in_piece = max(seq for seq, owner, _ in piece if owner == run_id)
            readable = [(s, d) for s, d in own if s <= last_in_piece]  # the stream so far
            start = (snapshot.state, snapshot.last_seq) if snapshot else (fold([]), 0)
            state, last_seq = fold_messages(*start, readable)
            folder.seed(run_id, state, last_seq, stored=snapshot)
        due = folder.apply(decoded)
        store.update({s.run_id: encode_snapshot(s) for s in due})
        folder.written(due)
    assert folder.problems == []
    for run_id in history.runs:
        final = fold(history.events_of(run_id))
        snapshot = decode_snapshot(store.get(run_id), run_id)
        own = [(s, d) for s, owner, d in history.messages if owner == run_id]
        start = (snapshot.state, snapshot.last_seq) if snapshot else (fold([]), 0)
        assert fold_messages(*start, own)[0] == final
        if final.status in ("completed", "failed", "compensate_failed", "cancelled"):
            assert snapshot is not None and snapshot.state == final, "an ended run is written"


@SETTINGS
@given(data=st.data(), history=histories())
def test_the_example_projection_counts_each_event_once(
    data: st.DataObject, history: History
) -> None:
    db = Database(memory=True)
    apply_in(db, TaskStats(), data.draw(batches(history.messages, redeliver=True)))
    counted = Counter[tuple[str, str, str]]()
    for run_id, run in history.runs.items():
        tasks = {step.id: step.task for step in run.workflow.steps}
        for event in history.events_of(run_id):
            column = {
                StepScheduled: "attempts", StepCompleted: "completions",
                StepFailed: "failures", StepTimedOut: "failures",
            }.get(type(event))  # fmt: skip
            if column is not None:
                step_id = getattr(event, "step_id")  # noqa: B009
                counted[(day_of(getattr(event, "at_ms")), tasks[step_id], column)] += 1  # noqa: B009
    stored = Counter[tuple[str, str, str]]()
    for day, task, attempts, failures, completions in db.execute(
        "SELECT day, task, attempts, failures, completions FROM task_daily"
    ):
        for column, value in (("attempts", attempts), ("failures", failures),
                              ("completions", completions)):  # fmt: skip
            if value:
                stored[(day, task, column)] = value
    assert stored == counted


def test_a_version_change_rebuilds_and_a_moved_checkpoint_is_refused() -> None:
    db = Database(memory=True)
    messages = _simple_history()
    runner = SqliteRunner(db, TaskStats())
    last = runner.apply_all(messages)
    assert last == messages[-1][0]
    before = dump(db, TaskStats.tables)
    newer = TaskStats()
    newer.version = 2
    assert SqliteRunner(db, newer).open() == 0, "a new version starts from sequence 0"
    assert db.execute("SELECT COUNT(*) FROM task_daily").fetchone()[0] == 0
    SqliteRunner(db, newer).apply_all(messages)
    after = dump(db, TaskStats.tables)
    assert after["task_daily"] == before["task_daily"]
    checkpoint = read_checkpoint(db, "task_stats")
    assert checkpoint is not None and checkpoint.version == 2 and checkpoint.seq == last
    reset_projection(db, "task_stats")
    assert "task_daily" not in db.table_names()
    with pytest.raises(CheckpointMovedError, match="checkpoint is 0, the runner expected"):
        SqliteRunner(db, newer).apply_batch(messages[:1], after_seq=last, now_ms=0)


def test_a_bad_message_is_skipped_and_named() -> None:
    db = Database(memory=True)
    messages = _simple_history()
    broken = [(messages[0][0] + 1000, "run-x", b"{not json"), *messages]
    runner = SqliteRunner(db, QueryTables())
    after = runner.open()
    result = runner.apply_batch(sorted(broken), after_seq=after, now_ms=0)
    assert len(result.problems) == 1 and "run-x" in result.problems[0]
    assert result.seq == messages[0][0] + 1000


def _simple_history() -> list[Message]:
    return [(index + 1, RUN_ID, data) for index, data in enumerate(completed_run())]
