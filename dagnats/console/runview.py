"""What a run page shows, built from the run's folded state and its history: the step grid,
the history timeline (each decision: its command and events), and the agent loops' turns
(each turn's tool calls with arguments and results, tokens and cost).

Pure: values in, plain values out (the templates escape them). Bounded: the timeline keeps
the last `timeline_items_max` decisions, payloads are cut at `payload_chars_shown_max`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from dagnats.console.dag_svg import Node
from kernel.events import (
    AgentToolCompleted,
    AgentToolScheduled,
    AgentTurnCompleted,
    AgentTurnFailed,
    Decision,
)
from kernel.state import RunState

timeline_items_max: Final = 500
payload_chars_shown_max: Final = 4_000
agent_turns_shown_max: Final = 500


def show_json(value: Any) -> str:
    """A JSON value as indented text, cut at `payload_chars_shown_max` characters."""
    if isinstance(value, msgspec.Raw):
        data = bytes(value)
        value = msgspec.json.decode(data) if data else None
    text = msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
    if len(text) > payload_chars_shown_max:
        return text[:payload_chars_shown_max] + f"\n… ({len(text)} characters in all)"
    return text


def duration_text(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1_000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms // 60_000} min {ms % 60_000 // 1000} s"
    return f"{ms // 3_600_000} h {ms % 3_600_000 // 60_000} min"


@dataclass(frozen=True)
class StepRow:
    step_id: str
    kind: str
    status: str
    attempt: int
    duration: str
    output: str
    error: str
    worker_id: str


def tag(value: object) -> str:
    found = type(value).__struct_config__.tag  # type: ignore[attr-defined]
    return str(found) if found is not None else type(value).__name__


def step_rows(state: RunState, now_ms: int) -> list[StepRow]:
    rows: list[StepRow] = []
    kinds = {d.id: d.type for d in state.step_defs}
    for step in state.steps:
        begun = step.first_scheduled_at_ms
        ended = step.ended_at_ms if step.ended_at_ms is not None else None
        lasted = None if begun is None else (ended if ended is not None else now_ms) - begun
        output = show_json(step.output) if bytes(step.output) not in (b"", b"null") else ""
        error = f"{step.error.kind}: {step.error.message}" if step.error is not None else ""
        rows.append(StepRow(
            step_id=step.step_id, kind=kinds.get(step.step_id, "task"), status=step.status,
            attempt=step.attempt, duration=duration_text(lasted), output=output, error=error,
            worker_id=step.worker_id,
        ))  # fmt: skip
    return rows


def dag_nodes(state: RunState) -> list[Node]:
    status = {s.step_id: s.status for s in state.steps}
    return [
        Node(step_id=d.id, depends_on=d.depends_on, status=status.get(d.id, "pending"), kind=d.type)
        for d in state.step_defs
    ]


@dataclass(frozen=True)
class TimelineItem:
    seq: int
    command: str
    at_ms: int | None
    events: list[tuple[str, str]]  # tag, the event's step (or "")
    detail: str


def timeline(decisions: Sequence[tuple[int, Decision]]) -> list[TimelineItem]:
    """The last `timeline_items_max` decisions, oldest first."""
    items: list[TimelineItem] = []
    for seq, decision in decisions[-timeline_items_max:]:
        command = decision.command
        items.append(TimelineItem(
            seq=seq, command=tag(command), at_ms=getattr(command, "at_ms", None),
            events=[(tag(e), str(getattr(e, "step_id", "") or "")) for e in decision.events],
            detail=show_json(msgspec.json.decode(msgspec.json.encode(decision))),
        ))  # fmt: skip
    return items


@dataclass
class ToolCallView:
    call_id: str
    name: str
    arguments: str
    status: str = "asked"
    result: str = ""
    task: str = ""


@dataclass
class TurnView:
    step_id: str
    turn: int
    attempt: int = 0
    done: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    at_ms: int = 0
    state: str = ""
    output: str = ""
    failures: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallView] = field(default_factory=list)


def agent_turns(decisions: Sequence[tuple[int, Decision]]) -> list[TurnView]:
    """Every completed (or failing) turn of every agent loop, in order, with its tool calls."""
    turns: dict[tuple[str, int], TurnView] = {}
    for _, decision in decisions:
        for event in decision.events:
            if isinstance(event, AgentTurnCompleted):
                view = turns.setdefault((event.step_id, event.turn),
                                        TurnView(event.step_id, event.turn))  # fmt: skip
                view.attempt, view.done, view.at_ms = event.attempt, event.done, event.at_ms
                view.tokens_in, view.tokens_out = event.tokens_in, event.tokens_out
                view.cost = event.cost
                view.state = show_json(event.state) if not event.done else ""
                view.output = show_json(event.output) if event.done else ""
                view.tool_calls = [
                    ToolCallView(call_id=c.id, name=c.name, arguments=show_json(c.arguments))
                    for c in event.tool_calls
                ]
            elif isinstance(event, AgentTurnFailed):
                view = turns.setdefault((event.step_id, event.turn),
                                        TurnView(event.step_id, event.turn))  # fmt: skip
                view.failures.append(f"attempt {event.attempt}: {event.error.message}")
            elif isinstance(event, AgentToolScheduled | AgentToolCompleted):
                _tool_event(turns, event)
    shown = sorted(turns.values(), key=lambda t: (t.step_id, t.turn))
    return shown[:agent_turns_shown_max]


def _tool_event(
    turns: dict[tuple[str, int], TurnView], event: AgentToolScheduled | AgentToolCompleted
) -> None:
    view = turns.get((event.step_id, event.turn))
    if view is None or not 0 <= event.index < len(view.tool_calls):
        return
    call = view.tool_calls[event.index]
    if isinstance(event, AgentToolScheduled):
        call.status, call.task = f"running (attempt {event.attempt})", event.task
        return
    call.status = "ok" if event.ok else "error"
    if event.ok:
        call.result = show_json(event.output)
    else:
        call.result = event.error.message if event.error is not None else "error"


def totals(turns: Sequence[TurnView]) -> dict[str, Any]:
    return {
        "turns": len(turns),
        "tool_calls": sum(len(t.tool_calls) for t in turns),
        "tokens_in": sum(t.tokens_in for t in turns),
        "tokens_out": sum(t.tokens_out for t in turns),
        "cost": round(sum(t.cost for t in turns), 6),
    }
