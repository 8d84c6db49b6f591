"""The agent loop's events (steps/agent_loop.py), part of the event catalog (kernel/events.py):
each turn and each tool call is its own event, so no completed turn or tool call runs twice."""

from __future__ import annotations

import msgspec

from kernel.event_base import NULL, ErrorInfo, StepEvent


class AgentToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call an agent turn asked for: its id (unique in the turn), tool name, arguments."""

    id: str
    name: str
    arguments: msgspec.Raw = NULL


class AgentTurnScheduled(StepEvent, frozen=True, kw_only=True, tag="agent.turn.scheduled"):
    """A task message is out for `attempt` of turn `turn` of an agent loop."""

    turn: int
    attempt: int
    at_ms: int
    deadline_ms: int | None = None
    # Turn 1 of a loop resumed in a fresh run (continue-as-new): what the old run carried
    # (null: nothing).
    carried_state: msgspec.Raw = NULL
    carried_tool_results: msgspec.Raw = NULL


class AgentTurnFailed(StepEvent, frozen=True, kw_only=True, tag="agent.turn.failed"):
    """A turn's attempt failed; with `will_retry` the next attempt is due at `due_at_ms`,
    without it the agent loop fails."""

    turn: int
    attempt: int
    error: ErrorInfo
    will_retry: bool
    at_ms: int
    due_at_ms: int | None = None


class AgentTurnLost(StepEvent, frozen=True, kw_only=True, tag="agent.turn.lost"):
    """A turn's attempt was lost (its worker vanished); attempt `attempt + 1` follows at once
    and does not count against the loop's retry policy (kernel.events.StepLost)."""

    turn: int
    attempt: int
    error: ErrorInfo
    at_ms: int


class AgentTurnCompleted(StepEvent, frozen=True, kw_only=True, tag="agent.turn.completed"):
    """A turn's handler returned: `done` with the loop's `output`, or the `state` to carry
    and the `tool_calls` to run before the next turn; with the model usage it reported."""

    turn: int
    attempt: int
    done: bool
    state: msgspec.Raw = NULL
    output: msgspec.Raw = NULL
    tool_calls: tuple[AgentToolCall, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    at_ms: int


class AgentToolScheduled(StepEvent, frozen=True, kw_only=True, tag="agent.tool.scheduled"):
    """A task message is out for `attempt` of tool call `index` of turn `turn`."""

    turn: int
    index: int
    call_id: str
    name: str
    task: str
    attempt: int
    at_ms: int
    deadline_ms: int | None = None


class AgentToolFailed(StepEvent, frozen=True, kw_only=True, tag="agent.tool.failed"):
    """A tool call's attempt failed and is retried at `due_at_ms` (a failure for good is an
    `agent.tool.completed` whose result is the error)."""

    turn: int
    index: int
    attempt: int
    error: ErrorInfo
    at_ms: int
    due_at_ms: int


class AgentToolLost(StepEvent, frozen=True, kw_only=True, tag="agent.tool.lost"):
    """A tool call's attempt was lost (its worker vanished); attempt `attempt + 1` follows at
    once and does not count against the loop's retry policy (kernel.events.StepLost)."""

    turn: int
    index: int
    attempt: int
    error: ErrorInfo
    at_ms: int


class AgentToolCompleted(StepEvent, frozen=True, kw_only=True, tag="agent.tool.completed"):
    """A tool call's result, which the next turn sees: its `output` when `ok`, else `error`."""

    turn: int
    index: int
    attempt: int  # 0 for a call that never ran (a tool the loop does not know)
    ok: bool
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    at_ms: int


class AgentLimitReached(StepEvent, frozen=True, kw_only=True, tag="agent.limit.reached"):
    """An agent loop reached one of its bounds (`limit`: max_turns, max_duration, max_tokens,
    max_cost); `action` is its on_limit (fail, or complete with the last state)."""

    limit: str
    message: str
    action: str
    at_ms: int
