"""The query tables: runs, steps, events, approvals, agent turns and tool calls, in SQLite.

`QueryTables` is the built-in SQLite projection (name `dagnats`). It folds each run's events
with the kernel's own `evolve` (the state after each batch kept in memory for the next; in
`_run_states`, written in the same transaction, when a message takes a run's event count past
a multiple of `state_every_events`; a run's state is its stored one and its `events` rows
after it), so a `runs` or `steps` row is by construction a function of the folded state:
`run_row(state, last_seq)` and `step_row(state, index, last_seq)`, which the replay audit uses
to check the rows. `events` holds one row per event with its JSON body.

`approvals` holds one row per approval a run asked (`approval_rows`, from the run's state).
`agent_turns` (one row per completed turn, with its usage) and `tool_calls` (one row per tool
call, scheduled then completed or failed) come from agent loop events (`agent_rows`).
This module may import only `kernel`, the standard library, msgspec and sqlite-utils.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

import msgspec
from sqlite_utils import Database

from kernel import codec, limits
from kernel.events import (
    AgentToolCompleted,
    AgentToolScheduled,
    AgentTurnCompleted,
    AnyEvent,
    RunStarted,
)
from kernel.state import DONE_STEP_STATUSES, INITIAL_STATE, RunState
from projections.base import Position, SqliteProjectionBase, tag_of
from projections.lives import begins_life, fold

NAME: Final = "dagnats"
VERSION: Final = 3  # 2: agent_turns and tool_calls are filled; 3: states stored every 64 events
STATES_TABLE: Final = "_run_states"
# A run's state is stored when one of its messages takes its event count past a multiple of
# this; a run no longer in memory is folded from there with its `events` rows after it.
state_every_events: Final = 64
# Rows `flush_parts` writes between two pauses.
flush_rows_max: Final = 64
error_message_chars_max: Final = 1_000  # error text kept in a row (the event keeps it whole)

RUN_COLUMNS: Final = (
    "run_id", "workflow", "workflow_version", "status", "parent_run_id", "started_at_ms",
    "ended_at_ms", "failed_step_id", "error_kind", "error_message", "cancel_reason",
    "steps_total", "steps_done", "steps_failed", "event_count", "last_seq", "input", "output",
)  # fmt: skip
STEP_COLUMNS: Final = (
    "run_id", "step_id", "workflow", "type", "task", "status", "attempt", "worker_id",
    "first_scheduled_at_ms", "ended_at_ms", "error_kind", "error_message",
)  # fmt: skip
EVENT_COLUMNS: Final = ("seq", "idx", "run_id", "type", "step_id", "attempt", "at_ms", "body")

Row = tuple[object, ...]
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


def _text(raw: msgspec.Raw) -> str:
    return bytes(raw).decode()


def _error_text(message: str) -> str:
    return message[:error_message_chars_max]


def run_row(state: RunState, last_seq: int) -> Row:
    """The `runs` row of a run's state (columns in RUN_COLUMNS order)."""
    workflow = state.workflow
    assert workflow is not None, f"run {state.run_id!r} has not started"
    error = state.error
    return (
        state.run_id,
        workflow.name,
        workflow.version,
        state.status,
        state.parent_run_id,
        state.started_at_ms,
        state.ended_at_ms,
        state.failed_step_id or None,
        error.kind if error is not None else None,
        _error_text(error.message) if error is not None else None,
        state.cancel_reason,
        len(state.steps),
        sum(1 for step in state.steps if step.status in DONE_STEP_STATUSES),
        sum(1 for step in state.steps if step.status == "failed"),
        state.event_count,
        last_seq,
        _text(state.input),
        _text(state.output),
    )


def step_row(state: RunState, index: int) -> Row:
    """The `steps` row of the run's step at `index` (columns in STEP_COLUMNS order)."""
    workflow = state.workflow
    assert workflow is not None
    step, step_def = state.steps[index], state.step_defs[index]
    error = step.error
    return (
        state.run_id,
        step.step_id,
        workflow.name,
        step_def.type,
        step_def.task,
        step.status,
        step.attempt,
        step.worker_id or None,
        step.first_scheduled_at_ms,
        step.ended_at_ms,
        error.kind if error is not None else None,
        _error_text(error.message) if error is not None else None,
    )


def approval_rows(state: RunState, last_seq: int) -> list[Row]:
    """The `approvals` rows of a run: one per approval it asked (keyed by the approval's key,
    the step id of an `approval` step); `outcome` is approved/rejected once resolved."""
    return [
        (
            state.run_id,
            approval.key,
            approval.question,
            approval.requested_at_ms,
            approval.deadline_ms,
            approval.resolved_at_ms,
            ("approved" if approval.decision == "approve" else "rejected")
            if approval.decision
            else None,
            approval.by or None,
            last_seq,
        )
        for approval in state.approvals
    ]


TURN_UPSERT: Final = (
    "INSERT OR REPLACE INTO agent_turns (run_id, step_id, turn, at_ms, model, input_tokens, "
    "output_tokens, cost_usd, tool_calls, duration_ms, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
CALL_UPSERT: Final = (
    "INSERT INTO tool_calls (run_id, step_id, call_id, turn, tool, status, scheduled_at_ms, "
    "completed_at_ms, error, seq) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (run_id, step_id, call_id) DO UPDATE SET status = excluded.status, "
    "tool = CASE WHEN excluded.tool = '' THEN tool_calls.tool ELSE excluded.tool END, "
    "scheduled_at_ms = COALESCE(excluded.scheduled_at_ms, tool_calls.scheduled_at_ms), "
    "completed_at_ms = excluded.completed_at_ms, error = excluded.error, seq = excluded.seq"
)


def agent_rows(event: AnyEvent, at: Position) -> tuple[list[Row], list[Row]]:
    """(`agent_turns` rows, `tool_calls` rows) of one event: a completed turn with its usage;
    a tool call when scheduled and when its result is in (`turn<n>-tool<i>` keys a call)."""
    match event:
        case AgentTurnCompleted():
            turn: Row = (
                at.run_id, event.step_id, event.turn, event.at_ms, None, event.tokens_in,
                event.tokens_out, event.cost, len(event.tool_calls), None, at.seq,
            )  # fmt: skip
            return [turn], []
        case AgentToolScheduled():
            call: Row = (
                at.run_id, event.step_id, f"turn{event.turn}-tool{event.index}", event.turn,
                event.name, "scheduled", event.at_ms, None, None, at.seq,
            )  # fmt: skip
            return [], [call]
        case AgentToolCompleted():
            status = "completed" if event.ok else "failed"
            error = event.error.message if event.error is not None else None
            call = (
                at.run_id, event.step_id, f"turn{event.turn}-tool{event.index}", event.turn,
                "", status, None, event.at_ms, error, at.seq,
            )  # fmt: skip
            return [], [call]
    return [], []


_AGENT_EVENT_TYPES: Final = frozenset({AgentTurnCompleted, AgentToolScheduled, AgentToolCompleted})


def event_row(event: AnyEvent, at: Position) -> Row:
    """The `events` row of one event (columns in EVENT_COLUMNS order)."""
    return (
        at.seq,
        at.index,
        at.run_id,
        tag_of(event),
        getattr(event, "step_id", None),
        getattr(event, "attempt", None),
        getattr(event, "at_ms", None),
        codec.encode(event).decode(),
    )


def _upsert_sql(table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT({', '.join(keys)}) DO UPDATE SET {updates}"
    )


RUN_UPSERT: Final = _upsert_sql("runs", RUN_COLUMNS, ("run_id",))
STEP_UPSERT: Final = _upsert_sql("steps", STEP_COLUMNS, ("run_id", "step_id"))
EVENT_INSERT: Final = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
    f"({', '.join('?' for _ in EVENT_COLUMNS)})"
)
STATE_UPSERT: Final = _upsert_sql(STATES_TABLE, ("run_id", "last_seq", "state"), ("run_id",))
APPROVAL_UPSERT: Final = _upsert_sql(
    "approvals",
    ("run_id", "step_id", "question", "requested_at_ms", "timeout_at_ms", "resolved_at_ms",
     "outcome", "resolved_by", "last_seq"),
    ("run_id", "step_id"),
)  # fmt: skip


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
    last folded message, and the state to store at the end of a message (if any is due)."""

    __slots__ = (
        "before", "last_seq", "message_count", "message_seq", "shared", "state", "stored",
    )  # fmt: skip

    def __init__(self, before: RunState, last_seq: int) -> None:
        self.before = before
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
    was; the id may start a new run). A run not in memory is loaded from its
    stored state (`_run_states`, written when a message crosses a multiple of
    `state_every_events`) and its `events` rows after it, folded again."""

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
        self._lives: set[str] = set()  # runs of the batch begun again (a purged id reused)
        self._events: list[Row] = []
        self._turns: list[Row] = []
        self._calls: list[Row] = []
        self.problems: list[str] = []
        # Run id -> (last seq, state) after the last committed batch (bounded, LRU), valid
        # while the stored checkpoint is `_states_seq`.
        self._states: OrderedDict[str, tuple[int, RunState]] = OrderedDict()
        self._states_seq = -1

    def begin(self, after_seq: int) -> None:
        if after_seq != self._states_seq:  # (another checkpoint: a rebuild, a restart)
            self._states.clear()
        self._states_seq = -1  # (until this batch commits)

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
        if type(event) in _AGENT_EVENT_TYPES:  # (most events fill no agent row)
            turns, calls = agent_rows(event, at)
            self._turns.extend(turns)
            self._calls.extend(calls)

    def _touch(self, db: Database, event: AnyEvent, at: Position) -> _Touched | None:
        known = self._states.get(at.run_id)
        if known is not None and not _run_row_at(db, at.run_id, known[0]):
            # Its rows changed under this instance with the checkpoint left where it was:
            # retention deleted them (`dagnats run delete`; the id may then start a new run).
            del self._states[at.run_id]
            known = None
        if known is None:
            known = _stored_state(db, at.run_id)
        if known is None:
            if not isinstance(event, RunStarted):
                self.problems.append(f"run {at.run_id!r}: {tag_of(event)} before run.started")
                return None
            known = (0, INITIAL_STATE)
        touched = self._touched[at.run_id] = _Touched(known[1], known[0])
        return touched

    def flush(self, db: Database) -> None:
        for _ in self.flush_parts(db):
            pass

    def flush_parts(self, db: Database) -> Iterator[None]:
        """`flush`, in parts: it pauses after each `flush_rows_max` rows written (a caller
        lets other work run there; the batch's transaction stays open)."""
        runs: list[Row] = []
        steps: list[Row] = []
        states: list[Row] = []
        approvals: list[Row] = []
        for touched in self._touched.values():
            touched.end_message()
            state, before = touched.state, touched.before
            if touched.stored is not None:
                seq, stored = touched.stored
                states.append((stored.run_id, seq, codec.encode(stored)))
            if state.workflow is None:
                continue
            runs.append(run_row(state, touched.last_seq))
            self._remember(state.run_id, touched.last_seq, state)
            for index, step in enumerate(state.steps):
                if index >= len(before.steps) or before.steps[index] is not step:
                    steps.append(step_row(state, index))
            if state.approvals:
                approvals.extend(approval_rows(state, touched.last_seq))
        connection = db.conn
        for run_id in self._lives:  # its old life's steps (the rest has sequences: retention)
            connection.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
        for statement, rows in (
            (EVENT_INSERT, self._events),
            (RUN_UPSERT, runs),
            (STEP_UPSERT, steps),
            (STATE_UPSERT, states),
            (APPROVAL_UPSERT, approvals),
            (TURN_UPSERT, self._turns),
            (CALL_UPSERT, self._calls),
        ):
            for start in range(0, len(rows), flush_rows_max):  # (none: no executemany)
                connection.executemany(statement, rows[start : start + flush_rows_max])
                yield
        self._forget_batch()

    def _remember(self, run_id: str, last_seq: int, state: RunState) -> None:
        self._states[run_id] = (last_seq, state)
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
        if type(event) in _AGENT_EVENT_TYPES:
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
