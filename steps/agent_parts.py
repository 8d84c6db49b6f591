"""The `agent_loop` step's state and effects: evolve its events into `AgentState`, and the task
messages and timers they call for (react and resume parts of steps/agent_loop.py). Pure.

Ids: a turn's task is `<step>.turn<n>`, a tool call's `<step>.turn<n>-tool<i>`; the loop's own
timers are `step.<step>.<attempt>.max_duration` and `step.<step>.<attempt>.delay<n>`.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import limits
from kernel.control import cancel_children
from kernel.effects import AnyEffect, ArmTimer, CancelTimer, EnqueueTask, task_msg_id
from kernel.events import (
    AgentLimitReached,
    AgentToolCompleted,
    AgentToolFailed,
    AgentToolLost,
    AgentToolScheduled,
    AgentTurnCompleted,
    AgentTurnFailed,
    AgentTurnLost,
    AgentTurnScheduled,
    StepEvent,
    TimerFired,
    TimerStarted,
)
from kernel.state import RunState
from kernel.step_states import AgentState, ToolState
from kernel.timers import arm_timer, retry_timer_id, step_timeout_timer_id
from kernel.workflow import NO_RETRY, RetryPolicy
from steps import base
from steps.agent_config import AgentConfig
from steps.agent_envelope import turn_envelope

replace = msgspec.structs.replace


def agent_of(state: RunState, step_id: str) -> AgentState | None:
    for agent in state.dynamic.agents:
        if agent.step_id == step_id:
            return agent
    return None


def with_agent(state: RunState, agent: AgentState, count: int = 0) -> RunState:
    """`state` with the agent loop of `agent.step_id` replaced (or added), and `count` more
    events counted (1 from the loop's evolve part, which counts its event in this replace)."""
    assert count in (0, 1), count
    others = tuple(a for a in state.dynamic.agents if a.step_id != agent.step_id)
    dynamic = replace(state.dynamic, agents=(*others, agent))
    return replace(state, dynamic=dynamic, event_count=state.event_count + count)


def evolve_agent(agent: AgentState, event: StepEvent) -> AgentState:
    match event:
        case AgentTurnScheduled():
            assert event.turn >= agent.turn and event.turn <= limits.agent_turns_max, event.turn
            assert event.attempt <= limits.attempt_number_max, event.attempt
            lost = agent.turn_lost_attempts if event.attempt > 1 else 0  # counted per turn
            return replace(
                agent, phase="turn", turn=event.turn, turn_attempt=event.attempt,
                turn_deadline_ms=event.deadline_ms, turn_retry_at_ms=None, delay_until_ms=None,
                turn_lost_attempts=lost,
            )  # fmt: skip
        case AgentTurnLost():
            assert agent.phase == "turn" and event.turn == agent.turn, (agent.phase, event.turn)
            assert agent.turn_lost_attempts < limits.lost_attempts_max, "lost too often"
            return replace(
                agent, phase="turn_retry", turn_deadline_ms=None, turn_retry_at_ms=event.at_ms,
                turn_lost_attempts=agent.turn_lost_attempts + 1,
            )  # fmt: skip
        case AgentTurnFailed():
            assert agent.phase == "turn" and event.turn == agent.turn, (agent.phase, event.turn)
            phase = "turn_retry" if event.will_retry else "ended"
            return replace(
                agent, phase=phase, turn_deadline_ms=None, turn_retry_at_ms=event.due_at_ms
            )
        case AgentTurnCompleted():
            return _turn_completed(agent, event)
        case AgentToolScheduled():
            tool = agent.tools[event.index]
            assert event.attempt > tool.attempt, f"tool {event.index}: attempts only grow"
            scheduled = replace(
                tool, status="scheduled", attempt=event.attempt, deadline_ms=event.deadline_ms,
                retry_at_ms=None,
            )  # fmt: skip
            return agent.with_tool(event.index, scheduled)
        case AgentToolFailed():
            tool = agent.tools[event.index]
            assert tool.status == "scheduled", tool.status
            waiting = replace(
                tool, status="retry_wait", error=event.error, deadline_ms=None,
                retry_at_ms=event.due_at_ms,
            )  # fmt: skip
            return agent.with_tool(event.index, waiting)
        case AgentToolLost():
            tool = agent.tools[event.index]
            assert tool.status == "scheduled", tool.status
            assert tool.lost_attempts < limits.lost_attempts_max, "lost too often"
            waiting = replace(
                tool, status="retry_wait", error=event.error, deadline_ms=None,
                retry_at_ms=event.at_ms, lost_attempts=tool.lost_attempts + 1,
            )  # fmt: skip
            return agent.with_tool(event.index, waiting)
        case AgentToolCompleted():
            tool = agent.tools[event.index]
            assert tool.status != "completed", f"tool call {event.index} completed twice"
            done = replace(
                tool, status="completed", ok=event.ok, output=event.output, error=event.error,
                deadline_ms=None, retry_at_ms=None,
            )  # fmt: skip
            return agent.with_tool(event.index, done)
        case TimerStarted():
            return replace(agent, phase="delay", delay_until_ms=event.fire_at_ms)
        case TimerFired():
            return replace(agent, delay_until_ms=None)
        case AgentLimitReached():
            return replace(agent, phase="ended")
    raise AssertionError(f"agent_loop owns no event {type(event).__name__}")


def _turn_completed(agent: AgentState, event: AgentTurnCompleted) -> AgentState:
    assert agent.phase == "turn" and event.turn == agent.turn, (agent.phase, event.turn)
    tools = tuple(
        ToolState(call_id=call.id, name=call.name, task="", arguments=call.arguments)
        for call in event.tool_calls
    )
    grown = replace(
        agent,
        phase="ended" if event.done else "tools",
        turn_deadline_ms=None,
        state=agent.state if event.done else event.state,
        tools=tools,
        carried_tool_results=NULL_RAW,
        turns_completed=agent.turns_completed + 1,
        tool_calls=agent.tool_calls + len(tools),
        tokens_in=agent.tokens_in + event.tokens_in,
        tokens_out=agent.tokens_out + event.tokens_out,
        cost=agent.cost + event.cost,
    )
    assert grown.turns_completed <= limits.agent_turns_max
    assert grown.tool_calls <= limits.agent_tool_calls_max
    return grown


def config_of(state: RunState, step_id: str) -> AgentConfig:
    return base.config_of(state, step_id, AgentConfig)


def policy_of(state: RunState, step_id: str) -> RetryPolicy:
    step_def = state.step_def(step_id)
    assert step_def is not None and state.workflow is not None
    return step_def.retry or state.workflow.default_retry or NO_RETRY


def tool_task(state: RunState, step_id: str, tool: ToolState) -> str:
    """The worker task of a tool call (its config's mapping, or its name)."""
    task = config_of(state, step_id).task_of(tool.name)
    assert task, f"tool {tool.name!r} was scheduled, so the loop knows it"
    return task


# -- effects ------------------------------------------------------------------------------

NULL_RAW: Final = msgspec.Raw(b"null")


def turn_item_id(step_id: str, turn: int) -> str:
    return f"{step_id}.turn{turn}"


def tool_item_id(step_id: str, turn: int, index: int) -> str:
    return f"{step_id}.turn{turn}-tool{index}"


def deadline_timer_id(step_id: str, attempt: int) -> str:
    return f"step.{step_id}.{attempt}.max_duration"


def delay_timer_id(step_id: str, attempt: int, turn: int) -> str:
    return f"step.{step_id}.{attempt}.delay{turn}"


class TurnTaskEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """What a turn's handler is told beside its input (`EnqueueTask.envelope`): that the task
    is turn `turn` of an agent loop, so the worker unpacks the turn envelope in its input."""

    turn: int


def turn_task_envelope(turn: int) -> msgspec.Raw:
    assert 1 <= turn <= limits.agent_turns_max, f"turn {turn} out of bounds"
    return msgspec.Raw(msgspec.json.encode(TurnTaskEnvelope(turn=turn)))


def _step_attempt(state: RunState, step_id: str) -> int:
    step = state.step(step_id)
    assert step is not None
    return step.attempt


def deadline_timer(state: RunState, step_id: str, due: int) -> ArmTimer:
    attempt = _step_attempt(state, step_id)
    timer_id = deadline_timer_id(step_id, attempt)
    return arm_timer(state, timer_id, "step", due, step_id=step_id, attempt=attempt)


def delay_timer(state: RunState, agent: AgentState) -> ArmTimer:
    assert agent.delay_until_ms is not None
    attempt = _step_attempt(state, agent.step_id)
    timer_id = delay_timer_id(agent.step_id, attempt, agent.turn + 1)
    return arm_timer(
        state, timer_id, "step", agent.delay_until_ms, step_id=agent.step_id, attempt=attempt
    )


def turn_effects(state: RunState, agent: AgentState) -> tuple[AnyEffect, ...]:
    step_def = state.step_def(agent.step_id)
    step = state.step(agent.step_id)
    assert step_def is not None and step is not None
    item_id = turn_item_id(agent.step_id, agent.turn)
    task = EnqueueTask(
        run_id=state.run_id, step_id=item_id, attempt=agent.turn_attempt, task=step_def.task,
        input=turn_envelope(step.input, agent, agent.turn), metadata=step_def.metadata,
        msg_id=task_msg_id(state.run_id, item_id, agent.turn_attempt, state.seed),
        deadline_ms=agent.turn_deadline_ms, envelope=turn_task_envelope(agent.turn),
    )  # fmt: skip
    if agent.turn_deadline_ms is None:
        return (task,)
    timer_id = step_timeout_timer_id(item_id, agent.turn_attempt)
    timeout = arm_timer(
        state, timer_id, "step_timeout", agent.turn_deadline_ms, step_id=item_id,
        attempt=agent.turn_attempt,
    )  # fmt: skip
    return (task, timeout)


def turn_retry_timer(state: RunState, agent: AgentState) -> ArmTimer:
    assert agent.turn_retry_at_ms is not None
    item_id = turn_item_id(agent.step_id, agent.turn)
    attempt = agent.turn_attempt + 1
    timer_id = retry_timer_id(item_id, attempt)
    return arm_timer(
        state, timer_id, "retry", agent.turn_retry_at_ms, step_id=item_id, attempt=attempt
    )


def tool_effects(state: RunState, agent: AgentState, index: int) -> tuple[AnyEffect, ...]:
    step_def = state.step_def(agent.step_id)
    assert step_def is not None
    tool = agent.tools[index]
    item_id = tool_item_id(agent.step_id, agent.turn, index)
    if tool.status == "retry_wait":
        assert tool.retry_at_ms is not None
        attempt = tool.attempt + 1
        timer_id = retry_timer_id(item_id, attempt)
        return (
            arm_timer(state, timer_id, "retry", tool.retry_at_ms, step_id=item_id, attempt=attempt),
        )
    assert tool.status == "scheduled", tool.status
    task = EnqueueTask(
        run_id=state.run_id, step_id=item_id, attempt=tool.attempt,
        task=tool_task(state, agent.step_id, tool), input=tool.arguments,
        metadata=step_def.metadata,
        msg_id=task_msg_id(state.run_id, item_id, tool.attempt, state.seed),
        deadline_ms=tool.deadline_ms,
    )  # fmt: skip
    if tool.deadline_ms is None:
        return (task,)
    timer_id = step_timeout_timer_id(item_id, tool.attempt)
    timeout = arm_timer(
        state, timer_id, "step_timeout", tool.deadline_ms, step_id=item_id, attempt=tool.attempt
    )
    return (task, timeout)


def _cancel(state: RunState, timer_id: str) -> CancelTimer:
    return CancelTimer(run_id=state.run_id, timer_id=timer_id)


def cancel_all(state: RunState, agent: AgentState) -> tuple[AnyEffect, ...]:
    """The loop ends: cancel every timer it may still have armed."""
    attempt = _step_attempt(state, agent.step_id)
    effects: list[AnyEffect] = []
    if config_of(state, agent.step_id).max_duration_ms is not None:
        effects.append(_cancel(state, deadline_timer_id(agent.step_id, attempt)))
    if agent.turn_deadline_ms is not None:
        item_id = turn_item_id(agent.step_id, agent.turn)
        effects.append(_cancel(state, step_timeout_timer_id(item_id, agent.turn_attempt)))
    if agent.turn_retry_at_ms is not None:
        item_id = turn_item_id(agent.step_id, agent.turn)
        effects.append(_cancel(state, retry_timer_id(item_id, agent.turn_attempt + 1)))
    if agent.delay_until_ms is not None:
        effects.append(_cancel(state, delay_timer_id(agent.step_id, attempt, agent.turn + 1)))
    effects.extend(cancel_children(state, agent.step_id))
    for index, tool in enumerate(agent.tools):
        item_id = tool_item_id(agent.step_id, agent.turn, index)
        if tool.status == "scheduled" and tool.deadline_ms is not None:
            effects.append(_cancel(state, step_timeout_timer_id(item_id, tool.attempt)))
        elif tool.status == "retry_wait":
            effects.append(_cancel(state, retry_timer_id(item_id, tool.attempt + 1)))
    return tuple(effects)


def react_agent(state: RunState, agent: AgentState, event: StepEvent) -> tuple[AnyEffect, ...]:
    step_def = state.step_def(agent.step_id)
    assert step_def is not None
    timed = step_def.timeout_ms is not None
    match event:
        case AgentTurnScheduled():
            return turn_effects(state, agent)
        case AgentTurnFailed() | AgentTurnCompleted() | AgentTurnLost():
            item_id = turn_item_id(event.step_id, event.turn)
            effects: list[AnyEffect] = []
            if timed:
                effects.append(_cancel(state, step_timeout_timer_id(item_id, event.attempt)))
            if isinstance(event, AgentTurnFailed) and event.will_retry:
                effects.append(turn_retry_timer(state, agent))
            elif agent.phase == "ended":
                effects.extend(cancel_all(state, agent))
            return tuple(effects)
        case AgentToolScheduled():
            return tool_effects(state, agent, event.index)
        case AgentToolFailed() | AgentToolCompleted() | AgentToolLost():
            item_id = tool_item_id(event.step_id, event.turn, event.index)
            effects = []
            if timed and event.attempt >= 1:
                effects.append(_cancel(state, step_timeout_timer_id(item_id, event.attempt)))
            if isinstance(event, AgentToolFailed):
                effects.extend(tool_effects(state, agent, event.index))
            return tuple(effects)
        case TimerStarted():
            return (delay_timer(state, agent),)
        case AgentLimitReached():
            return cancel_all(state, agent)
    return ()
