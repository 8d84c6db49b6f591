"""The rows of the query tables (`projections.sqlite`): each table's columns, the row of a run,
a step, an approval, an agent turn or tool call, an event, and the statements that write them.

A `runs` or `steps` row is a function of the run's folded state (`run_row`, `step_row`); the
replay audit compares them with what is stored. This module is pure: it builds tuples and SQL
text, it runs nothing. It may import only `kernel`, the standard library and msgspec.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import codec
from kernel.events import AgentToolCompleted, AgentToolScheduled, AgentTurnCompleted, AnyEvent
from kernel.state import DONE_STEP_STATUSES, RunState
from projections.base import Position, tag_of

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


def _text(raw: msgspec.Raw) -> str:
    return bytes(raw).decode()


def _error_text(message: str) -> str:
    return message[:error_message_chars_max]


def run_row(state: RunState, last_seq: int) -> Row:
    """The `runs` row of a run's state (columns in RUN_COLUMNS order)."""
    workflow = state.workflow
    assert workflow is not None, f"run {state.run_id!r} has not started"
    error = state.error
    statuses = [step.status for step in state.steps]
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
        sum(map(DONE_STEP_STATUSES.__contains__, statuses)),  # (no generator per row)
        statuses.count("failed"),
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


AGENT_EVENT_TYPES: Final = frozenset({AgentTurnCompleted, AgentToolScheduled, AgentToolCompleted})


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


def upsert_sql(table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT({', '.join(keys)}) DO UPDATE SET {updates}"
    )


RUN_UPSERT: Final = upsert_sql("runs", RUN_COLUMNS, ("run_id",))
STEP_UPSERT: Final = upsert_sql("steps", STEP_COLUMNS, ("run_id", "step_id"))
EVENT_INSERT: Final = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
    f"({', '.join('?' for _ in EVENT_COLUMNS)})"
)
APPROVAL_UPSERT: Final = upsert_sql(
    "approvals",
    ("run_id", "step_id", "question", "requested_at_ms", "timeout_at_ms", "resolved_at_ms",
     "outcome", "resolved_by", "last_seq"),
    ("run_id", "step_id"),
)  # fmt: skip


# The `runs` columns a held run's row is updated in alone while the rest of it stays as it was
# (its status, times, error and output: a step done): no index of `runs` has them.
RUN_PROGRESS_COLUMNS: Final = (
    "steps_total",
    "steps_done",
    "steps_failed",
    "event_count",
    "last_seq",
)
PROGRESS_FIRST: Final = RUN_COLUMNS.index(RUN_PROGRESS_COLUMNS[0])
PROGRESS_END: Final = PROGRESS_FIRST + len(RUN_PROGRESS_COLUMNS)
assert RUN_COLUMNS[PROGRESS_FIRST:PROGRESS_END] == RUN_PROGRESS_COLUMNS
assert RUN_COLUMNS[PROGRESS_END:] == ("input", "output")  # (compared as the states' own)
RUN_PROGRESS_UPDATE: Final = (
    f"UPDATE runs SET {', '.join(f'{c} = ?' for c in RUN_PROGRESS_COLUMNS)} WHERE run_id = ?"
)
# The `steps` columns a step's row changes in (the rest is its definition's) and the update of
# a held run's step row in them alone (no insert tried first).
STEP_STATE_FIRST: Final = STEP_COLUMNS.index("status")
STEP_UPDATE: Final = (
    f"UPDATE steps SET {', '.join(f'{c} = ?' for c in STEP_COLUMNS[STEP_STATE_FIRST:])} "
    "WHERE run_id = ? AND step_id = ?"
)
STEPS_DELETE: Final = "DELETE FROM steps WHERE run_id = ?"
