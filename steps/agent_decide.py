"""The agent loop's decide building blocks: scheduling turns and tool calls, asking a tool
call's approval, the retry due time and the limits a turn reached. Leaves of
steps/agent_loop.py's decide part: they write into a `Draft` and call nothing back. Pure.
"""

from __future__ import annotations

from kernel import limits
from kernel.events import (
    AgentToolCompleted,
    AgentToolLost,
    AgentToolScheduled,
    AgentTurnLost,
    AgentTurnScheduled,
    ErrorInfo,
)
from kernel.retry import backoff_ms, lost_error, lost_exhausted
from kernel.state import RunState
from kernel.step_states import AgentState
from kernel.workflow import RetryPolicy
from steps import approvals
from steps.agent_config import AgentConfig
from steps.agent_envelope import CarriedLoop
from steps.agent_parts import NULL_RAW, agent_of, config_of, tool_item_id, tool_task
from steps.base import Draft


def deadline(context: Draft, step_id: str) -> int | None:
    step_def = context.state.step_def(step_id)
    assert step_def is not None
    return None if step_def.timeout_ms is None else context.at_ms + step_def.timeout_ms


def schedule_turn(
    context: Draft,
    step_id: str,
    turn: int,
    attempt: int,
    carried: CarriedLoop | None = None,
) -> None:
    context.emit(
        AgentTurnScheduled(
            step_id=step_id, turn=turn, attempt=attempt, at_ms=context.at_ms,
            deadline_ms=deadline(context, step_id),
            carried_state=NULL_RAW if carried is None else carried.state,
            carried_tool_results=NULL_RAW if carried is None else carried.tool_results,
        )
    )  # fmt: skip


def retry_due(context: Draft, policy: RetryPolicy, attempt: int, retry_after_ms: int | None) -> int:
    delay = (
        retry_after_ms if retry_after_ms is not None else backoff_ms(policy, attempt, context.seed)
    )
    return context.at_ms + max(0, min(delay, limits.delay_ms_max))


def turn_lost(context: Draft, step_id: str, agent: AgentState, message: str) -> ErrorInfo | None:
    """The turn's attempt was lost (its worker vanished): record it and schedule the next
    attempt at once, without consuming the retry policy. Returns the error to fail the turn
    with instead once it lost limits.lost_attempts_max attempts (None: rescheduled)."""
    assert agent.phase == "turn", agent.phase
    attempt = agent.turn_attempt
    if lost_exhausted(agent.turn_lost_attempts):
        return lost_error(f"agent loop {step_id!r} turn {agent.turn}", attempt, message)
    error = ErrorInfo(message=message, kind="lost")
    context.emit(
        AgentTurnLost(
            step_id=step_id, turn=agent.turn, attempt=attempt, error=error, at_ms=context.at_ms
        )
    )
    schedule_turn(context, step_id, agent.turn, attempt + 1)
    return None


def tool_lost(
    context: Draft, step_id: str, agent: AgentState, index: int, message: str
) -> ErrorInfo | None:
    """Tool call `index`'s attempt was lost: as `turn_lost`, for a tool call."""
    tool = agent.tools[index]
    assert tool.status == "scheduled", tool.status
    if lost_exhausted(tool.lost_attempts):
        return lost_error(f"tool call {tool.call_id!r} of {step_id!r}", tool.attempt, message)
    error = ErrorInfo(message=message, kind="lost")
    context.emit(
        AgentToolLost(
            step_id=step_id, turn=agent.turn, index=index, attempt=tool.attempt, error=error,
            at_ms=context.at_ms,
        )
    )  # fmt: skip
    task = tool_task(context.state, step_id, tool)
    schedule_tool(context, step_id, agent.turn, index, task, tool.attempt + 1)
    return None


def limit_reached(state: RunState, step_id: str) -> tuple[str, str] | None:
    """The limit a completed turn reached (the name and a message), if any."""
    agent = agent_of(state, step_id)
    assert agent is not None
    config = config_of(state, step_id)
    if agent.turns_completed >= config.max_turns:
        return ("max_turns", f"the agent loop took {agent.turns_completed} turns (max_turns)")
    tokens = agent.tokens_in + agent.tokens_out
    if config.max_tokens is not None and tokens >= config.max_tokens:
        return (
            "max_tokens",
            f"the agent loop used {tokens} tokens; max_tokens is {config.max_tokens}",
        )
    if config.max_cost is not None and agent.cost >= config.max_cost:
        return ("max_cost", f"the agent loop cost {agent.cost:g}; max_cost is {config.max_cost:g}")
    return None


def schedule_tool(
    context: Draft, step_id: str, turn: int, index: int, task: str, attempt: int
) -> None:
    agent = agent_of(context.state, step_id)
    assert agent is not None
    call = agent.tools[index]
    context.emit(
        AgentToolScheduled(
            step_id=step_id, turn=turn, index=index, call_id=call.call_id, name=call.name,
            task=task, attempt=attempt, at_ms=context.at_ms,
            deadline_ms=deadline(context, step_id),
        )
    )  # fmt: skip


def ask_approval(context: Draft, step_id: str, turn: int, index: int, config: AgentConfig) -> None:
    """Ask a human whether tool call `index` may run (its key: `<step>.turn<n>-tool<i>`). The
    question names the tool and the call, never its arguments (the notice is published)."""
    agent = agent_of(context.state, step_id)
    assert agent is not None
    call = agent.tools[index]
    asked = approvals.ApprovalRequest(
        question=f"May agent loop {step_id!r} call tool {call.name!r} (turn {turn})?",
        description=f"tool call {call.call_id!r}",
        timeout_ms=config.approval_timeout_ms,
        on_timeout="reject",
    )
    problem = approvals.request(context, step_id, tool_item_id(step_id, turn, index), asked)
    if problem is not None:
        error = ErrorInfo(message=problem, kind="non_retryable")
        context.emit(
            AgentToolCompleted(
                step_id=step_id, turn=turn, index=index, attempt=0, ok=False, error=error,
                at_ms=context.at_ms,
            )
        )  # fmt: skip
