"""The query tables: runs, steps, events, approvals, agent turns and tool calls, in SQLite.

`QueryTables` is the built-in SQLite projection (name `dagnats`). It folds each run's events
with the kernel's own `evolve` (the state after each batch kept in memory for the next; in
`_run_states`, written in the same transaction, when a message takes a run's event count past
a multiple of `state_every_events`; a run's state is its stored one and its `events` rows
after it), so a `runs` or `steps` row is by construction a function of the folded state:
`run_row(state, last_seq)` and `step_row(state, index)`, which the replay audit uses
to check the rows. `events` holds one row per event with its JSON body.

`approvals` holds one row per approval a run asked (`approval_rows`, from the run's state).
`agent_turns` (one row per completed turn, with its usage) and `tool_calls` (one row per tool
call, scheduled then completed or failed) come from agent loop events (`agent_rows`). The
rows and the statements that write them are built in `projections.query_rows` (re-exported
here). This module may import only `kernel`, the standard library, msgspec and sqlite-utils.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from sqlite_utils import Database

from kernel import codec, limits
from kernel.events import AnyEvent, RunStarted
from kernel.state import INITIAL_STATE, RunState
from projections.base import Position, SqliteProjectionBase, tag_of
from projections.lives import begins_life, fold
from projections.query_rows import (  # (the rows' names are re-exported: see __all__)
    AGENT_EVENT_TYPES,
    APPROVAL_UPSERT,
    CALL_UPSERT,
    EVENT_COLUMNS,
    EVENT_INSERT,
    PROGRESS_END,
    PROGRESS_FIRST,
    RUN_COLUMNS,
    RUN_PROGRESS_UPDATE,
    RUN_UPSERT,
    STEP_COLUMNS,
    STEP_STATE_FIRST,
    STEP_UPDATE,
    STEP_UPSERT,
    STEPS_DELETE,
    TURN_UPSERT,
    Row,
    agent_rows,
    approval_rows,
    event_row,
    run_row,
    step_row,
    upsert_sql,
)

NAME: Final = "dagnats"
VERSION: Final = 3  # 2: agent_turns and tool_calls are filled; 3: states stored every 64 events
STATES_TABLE: Final = "_run_states"
# A run's state is stored when one of its messages takes its event count past a multiple of
# this; a run no longer in memory is folded from there with its `events` rows after it.
state_every_events: Final = 64
# Rows `flush_parts` writes between two pauses.
flush_rows_max: Final = 64
Folded = Callable[[int, str], RunState | None]  # (seq, run id) -> the state after that message

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL,
    workflow_version TEXT NOT NULL, status TEXT NOT NULL, parent_run_id TEXT,
    started_at_ms INTEGER NOT NULL, ended_at_ms INTEGER, failed_step_id TEXT,
    error_kind TEXT, error_message TEXT, cancel_reason TEXT, steps_total INTEGER NOT NULL,
    steps_done INTEGER NOT NULL, steps_failed INTEGER NOT NULL, event_count INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, input TEXT, output TEXT)""",
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, started_at_ms)",
    "CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, started_at_ms)",
    "CREATE INDEX IF NOT EXISTS runs_by_started ON runs (started_at_ms)",
    "CREATE INDEX IF NOT EXISTS runs_by_failed_step ON runs (failed_step_id) "
    "WHERE failed_step_id IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS steps (run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    workflow TEXT NOT NULL, type TEXT NOT NULL, task TEXT NOT NULL, status TEXT NOT NULL,
    attempt INTEGER NOT NULL, worker_id TEXT, first_scheduled_at_ms INTEGER,
    ended_at_ms INTEGER, error_kind TEXT, error_message TEXT,
    PRIMARY KEY (run_id, step_id))""",
    "CREATE INDEX IF NOT EXISTS steps_by_status ON steps (status, workflow, step_id)",
    "CREATE INDEX IF NOT EXISTS steps_by_task ON steps (task, status)",
    """CREATE TABLE IF NOT EXISTS events (seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    run_id TEXT NOT NULL, type TEXT NOT NULL, step_id TEXT, attempt INTEGER,
    at_ms INTEGER, body TEXT NOT NULL, PRIMARY KEY (seq, idx))""",
    "CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq)",
    "CREATE INDEX IF NOT EXISTS events_by_type ON events (type, at_ms)",
    """CREATE TABLE IF NOT EXISTS approvals (run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    question TEXT, requested_at_ms INTEGER NOT NULL, timeout_at_ms INTEGER,
    resolved_at_ms INTEGER, outcome TEXT, resolved_by TEXT, last_seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id))""",
    "CREATE INDEX IF NOT EXISTS approvals_pending ON approvals (requested_at_ms) "
    "WHERE resolved_at_ms IS NULL",
    """CREATE TABLE IF NOT EXISTS agent_turns (run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    turn INTEGER NOT NULL, at_ms INTEGER NOT NULL, model TEXT, input_tokens INTEGER,
    output_tokens INTEGER, cost_usd REAL, tool_calls INTEGER, duration_ms INTEGER,
    seq INTEGER NOT NULL, PRIMARY KEY (run_id, step_id, turn))""",
    "CREATE INDEX IF NOT EXISTS agent_turns_by_time ON agent_turns (at_ms)",
    "CREATE INDEX IF NOT EXISTS agent_turns_by_model ON agent_turns (model, at_ms)",
    """CREATE TABLE IF NOT EXISTS tool_calls (run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    call_id TEXT NOT NULL, turn INTEGER NOT NULL, tool TEXT NOT NULL, status TEXT NOT NULL,
    scheduled_at_ms INTEGER, completed_at_ms INTEGER, error TEXT, seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id, call_id))""",
    "CREATE INDEX IF NOT EXISTS tool_calls_by_tool ON tool_calls (tool, status)",
    f"""CREATE TABLE IF NOT EXISTS {STATES_TABLE} (run_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL, state BLOB NOT NULL)""",
)
STATE_UPSERT: Final = upsert_sql(STATES_TABLE, ("run_id", "last_seq", "state"), ("run_id",))
_STATE_SELECT: Final = f"SELECT last_seq, state FROM {STATES_TABLE} WHERE run_id = ?"
_RUN_SEQ_SELECT: Final = "SELECT last_seq FROM runs WHERE run_id = ?"
_EVENTS_AFTER_SELECT: Final = (
    "SELECT seq, body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq, idx"
)


def state_stored_after(before_count: int, after_count: int) -> bool:
    """Whether a run's state is stored (`_run_states`) after a message that took its event
    count from `before_count` to `after_count`: when it crossed a multiple of
    `state_every_events` (a function of the stream, so a rebuild stores the same states)."""
    return after_count // state_every_events > before_count // state_every_events


class _Touched:
    """A run touched by the batch: its state before the batch and now, the sequence of its
    last folded message, the state to store at the end of a message (if any is due), and the
    columns of its `runs` row before its progress (`PROGRESS_FIRST`) as stored before the
    batch, when this instance wrote them and trusts them (`head`; None: rows written whole)."""

    __slots__ = (
        "before", "head", "last_seq", "message_count", "message_seq", "shared", "state", "stored",
    )  # fmt: skip

    def __init__(self, before: RunState, last_seq: int, head: Row | None = None) -> None:
        self.before = before
        self.head = head
        self.state = before
        self.last_seq = last_seq
        self.message_seq = last_seq  # the message being folded
        self.message_count = before.event_count  # its event count when that message began
        self.shared: RunState | None = None  # the state after that message, as given
        self.stored: tuple[int, RunState] | None = None

    def end_message(self) -> None:
        """The message being folded is over: note its state when it is one to store."""
        count = self.state.event_count
        if state_stored_after(self.message_count, count):
            self.stored = (self.last_seq, self.state)
        self.message_count = count


class QueryTables(SqliteProjectionBase):
    """The built-in SQLite projection: the tables `dagnats run list` and `dagnats query` read.

    A run's state after the batch is kept in memory (bounded, LRU) for the next batch, and
    trusted only while the stored checkpoint is the one this instance last committed (`begin`;
    a failed or rolled-back batch forgets them all) and the run's `runs` row is still at the
    sequence kept with it (retention deletes a purged run's rows, its checkpoint left as it
    was; the id may start a new run): looked up per run only in a batch after another
    connection wrote the file (SQLite's `data_version` moved). A run not in memory is loaded
    from its stored state (`_run_states`, written when a message crosses a multiple of
    `state_every_events`) and its `events` rows after it, folded again; a run whose first
    event in the batch is its `run.started` needs neither: its rows begin here (an old life's
    steps, if any, are deleted). A held run's rows are updated in the columns that change (its
    progress alone while its status, times and output stay), not written whole."""

    name = NAME
    version = VERSION
    events = None
    tables = ("runs", "steps", "events", "approvals", "agent_turns", "tool_calls", STATES_TABLE)
    schema = _SCHEMA

    def __init__(self, folded: Folded | None = None) -> None:
        """`folded(seq, run_id)`: the run's state after the message at `seq` as its writer
        folded it (the engine of this process), taken instead of evolving its events; None
        where it is not known."""
        self._folded = folded
        self._touched: dict[str, _Touched] = {}
        self._lives: set[str] = set()  # runs of the batch begun (again: a purged id reused)
        self._events: list[Row] = []
        self._turns: list[Row] = []
        self._calls: list[Row] = []
        self.problems: list[str] = []
        # Run id -> (last seq, state, the head of its `runs` row) after the last committed
        # batch (bounded, LRU), valid while the stored checkpoint is `_states_seq`.
        self._states: OrderedDict[str, tuple[int, RunState, Row]] = OrderedDict()
        self._states_seq = -1
        # SQLite's `data_version` as this batch read it (None: not read yet) and as the last
        # one did: equal, no other connection wrote the file in between.
        self._data_version: int | None = None
        self._data_version_last: int | None = None

    def begin(self, after_seq: int) -> None:
        if after_seq != self._states_seq:  # (another checkpoint: a rebuild, a restart)
            self._states.clear()
        self._states_seq = -1  # (until this batch commits)
        self._data_version = None

    def committed(self, seq: int) -> None:
        self._states_seq = seq

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        touched = self._touched.get(at.run_id)
        if touched is None:
            touched = self._touch(db, event, at)
            if touched is None:
                return
        if at.seq != touched.message_seq:
            touched.end_message()
            touched.message_seq = at.seq
            shared = self._folded(at.seq, at.run_id) if self._folded else None
            # (a given state that is not ahead of this one is not taken: folded here instead)
            ahead = shared is not None and shared.event_count > touched.message_count
            touched.shared = shared if ahead else None
        if begins_life(touched.state, event):  # (its old life purged: README "Retention")
            self._lives.add(at.run_id)
            touched.head = None  # (its old life's steps are deleted: every row written whole)
        if touched.shared is not None:  # (after the whole message: the same for its events)
            touched.state = touched.shared
        else:
            try:
                touched.state = fold(touched.state, event)
            except AssertionError as error:
                self.problems.append(f"run {at.run_id!r}: message {at.seq} does not fold: {error}")
                return
        touched.last_seq = at.seq
        self._events.append(event_row(event, at))
        if type(event) in AGENT_EVENT_TYPES:  # (most events fill no agent row)
            turns, calls = agent_rows(event, at)
            self._turns.extend(turns)
            self._calls.extend(calls)

    def _touch(self, db: Database, event: AnyEvent, at: Position) -> _Touched | None:
        run_id = at.run_id
        if type(event) is RunStarted:  # its rows begin here: nothing stored is read
            self._lives.add(run_id)  # (an old life's steps, if its id was used before)
            touched = self._touched[run_id] = _Touched(INITIAL_STATE, 0)
            return touched
        held = self._states.get(run_id)
        if held is not None and self._others_wrote(db) and not _run_row_at(db, run_id, held[0]):
            # Its rows changed under this instance with the checkpoint left where it was:
            # retention deleted them (`dagnats run delete`; the id may then start a new run).
            del self._states[run_id]
            held = None
        if held is not None:
            touched = self._touched[run_id] = _Touched(held[1], held[0], held[2])
            return touched
        known = _stored_state(db, run_id)
        if known is None:
            self.problems.append(f"run {run_id!r}: {tag_of(event)} before run.started")
            return None
        touched = self._touched[run_id] = _Touched(known[1], known[0])
        return touched

    def _others_wrote(self, db: Database) -> bool:
        """Whether another connection may have written the file since the last batch (its
        `data_version` read once per batch, in the batch's transaction, moved; or unknown)."""
        if self._data_version is None:
            self._data_version = int(db.conn.execute("PRAGMA data_version").fetchone()[0])
        return self._data_version != self._data_version_last

    def flush(self, db: Database) -> None:
        for _ in self.flush_parts(db):
            pass

    def flush_parts(self, db: Database) -> Iterator[None]:
        """`flush`, in parts: it pauses after each `flush_rows_max` rows written (a caller
        lets other work run there; the batch's transaction stays open)."""
        runs: list[Row] = []
        progress: list[Row] = []
        steps: list[Row] = []
        step_updates: list[Row] = []
        states: list[Row] = []
        approvals: list[Row] = []
        for touched in self._touched.values():
            touched.end_message()
            state = touched.state
            if touched.stored is not None:
                seq, stored = touched.stored
                states.append((stored.run_id, seq, codec.encode(stored)))
            if state.workflow is None:
                continue
            row = run_row(state, touched.last_seq)
            self._remember(state.run_id, touched.last_seq, state, row[:PROGRESS_FIRST])
            if _progressed(touched, row):
                progress.append((*row[PROGRESS_FIRST:PROGRESS_END], state.run_id))
            else:
                runs.append(row)
            _changed_steps(touched, steps, step_updates)
            if state.approvals:
                approvals.extend(approval_rows(state, touched.last_seq))
        self._others_wrote(db)  # (`data_version` read in every batch: the next compares)
        self._data_version_last = self._data_version
        connection = db.conn
        # (an old life's steps; the rest of its rows has sequences: retention drops them)
        if self._lives:  # (an empty executemany still prepares and steps its statement)
            connection.executemany(STEPS_DELETE, [(run_id,) for run_id in self._lives])
        for statement, rows in (
            (EVENT_INSERT, self._events),
            (RUN_UPSERT, runs),
            (RUN_PROGRESS_UPDATE, progress),
            (STEP_UPSERT, steps),
            (STEP_UPDATE, step_updates),
            (STATE_UPSERT, states),
            (APPROVAL_UPSERT, approvals),
            (TURN_UPSERT, self._turns),
            (CALL_UPSERT, self._calls),
        ):
            for start in range(0, len(rows), flush_rows_max):  # (none: no executemany)
                connection.executemany(statement, rows[start : start + flush_rows_max])
                yield
        self._forget_batch()

    def _remember(self, run_id: str, last_seq: int, state: RunState, head: Row) -> None:
        self._states[run_id] = (last_seq, state, head)
        self._states.move_to_end(run_id)
        while len(self._states) > limits.query_states_cached_max:
            self._states.popitem(last=False)

    def _forget_batch(self) -> None:
        self._touched.clear()
        self._lives.clear()
        self._events.clear()
        self._turns.clear()
        self._calls.clear()

    def discard(self) -> None:
        self._forget_batch()
        self._states.clear()  # (what the batch remembered was rolled back with it)
        self._states_seq = -1
        self._data_version_last = None


def _progressed(touched: _Touched, row: Row) -> bool:
    """Whether a run's new `runs` row is the one stored (trusted: `touched.head`) but for its
    progress columns (`RUN_PROGRESS_COLUMNS`), which alone are then updated. (Its input and
    output, the columns after them, are compared in the states.)"""
    head, before, state = touched.head, touched.before, touched.state
    return (
        head is not None
        and head == row[:PROGRESS_FIRST]
        and before.output == state.output
        and before.input == state.input
    )


def _changed_steps(touched: _Touched, steps: list[Row], updates: list[Row]) -> None:
    """The `steps` rows of a run's steps changed by the batch: in `updates` (parameters of
    STEP_UPDATE) a step whose row this instance wrote before the batch with the same step and
    definition (a held run: `touched.head`), in `steps` (rows to upsert) the others."""
    state, before = touched.state, touched.before
    held = touched.head is not None
    old_steps, old_defs = before.steps, before.step_defs
    for index, step in enumerate(state.steps):
        if index < len(old_steps):
            old = old_steps[index]
            if old is step:
                continue
            if held and old.step_id == step.step_id and old_defs[index] is state.step_defs[index]:
                row = step_row(state, index)
                updates.append((*row[STEP_STATE_FIRST:], row[0], row[1]))
                continue
        steps.append(step_row(state, index))


def _run_row_at(db: Database, run_id: str, last_seq: int) -> bool:
    """Whether the run's `runs` row is there and at `last_seq` (one lookup by key)."""
    row = db.conn.execute(_RUN_SEQ_SELECT, [run_id]).fetchone()
    return row is not None and row[0] == last_seq


def _stored_state(db: Database, run_id: str) -> tuple[int, RunState] | None:
    """(last seq, state) of a run as its rows hold it: its stored state (if any) and its
    `events` rows after that, folded; None when neither is stored (not started).

    Raises:
        DagnatsError: a stored state or event does not decode. AssertionError: it does not fold.
    """
    row = db.conn.execute(_STATE_SELECT, [run_id]).fetchone()
    seq, state = (row[0], codec.decode_state(row[1])) if row is not None else (0, INITIAL_STATE)
    rows = db.conn.execute(_EVENTS_AFTER_SELECT, [run_id, seq]).fetchall()
    if row is None and not rows:
        return None
    for _, body in rows:  # (rows of a purged life not dropped yet: a new life starts over)
        state = fold(state, codec.decode_event(body.encode()))
    return (rows[-1][0] if rows else seq), state


def rebuilt_rows(
    positioned: Iterable[tuple[Position, AnyEvent]], folds: Mapping[str, RunState]
) -> tuple[dict[str, list[Row]], int] | None:
    """The rows a rebuild of `QueryTables` from zero writes in each of its tables, and how many
    events it applies, without a database: each event's row, and each run's rows from its state
    after all of its events (`folds`, the caller's fold of those same events: shared, not
    folded again here). A caller compares a projection fed in batches with these.

    Args:
        positioned: every event of the history in stream order, with its position (what
            `positioned_events` yields from sequence 0).
        folds: run id -> the fold of all of that run's events.
    Returns:
        ({table: rows}, events applied), or None where the rows are not a function of the
        final states alone (agent loop events and approvals: rows merged event by event; a
        run with a stored state: `state_every_events` events or more).
    """
    events: list[Row] = []
    last_seq: dict[str, int] = {}
    for at, event in positioned:
        if type(event) in AGENT_EVENT_TYPES:
            return None
        events.append(event_row(event, at))
        last_seq[at.run_id] = at.seq
    runs: list[Row] = []
    steps: list[Row] = []
    for run_id, seq in last_seq.items():
        state = folds.get(run_id)
        if state is None or state.approvals or state.event_count >= state_every_events:
            return None
        if state.workflow is None:
            continue  # (a run whose history does not start: `apply` reports it)
        runs.append(run_row(state, seq))
        steps.extend(step_row(state, index) for index in range(len(state.steps)))
    tables: dict[str, list[Row]] = {table: [] for table in QueryTables.tables}
    tables.update({"runs": runs, "steps": steps, "events": events})
    return tables, len(events)


def stored_rows(db: Database, run_id: str) -> tuple[Row | None, list[Row]]:
    """The `runs` row and the `steps` rows (in the run's step order) stored for a run."""
    run = db.execute(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    steps = db.execute(
        f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE run_id = ?", [run_id]
    ).fetchall()
    return (tuple(run) if run is not None else None), [tuple(row) for row in steps]


__all__ = [
    "EVENT_COLUMNS", "NAME", "RUN_COLUMNS", "STATES_TABLE", "STEP_COLUMNS", "VERSION", "Folded",
    "QueryTables", "Row", "agent_rows", "approval_rows", "event_row", "rebuilt_rows", "run_row",
    "state_every_events", "state_stored_after", "step_row", "stored_rows",
]  # fmt: skip
