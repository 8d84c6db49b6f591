"""The `agent_loop` step type: a worker handler called once per turn, tools run as tasks.

Config: steps/agent_config.py (`max_turns`/`max_iterations`, `max_duration`, `max_tokens`,
`max_cost`, `loop_delay`, `on_limit`, `continue_as_new_after_turns`, `tools`). The step's
`task` is the turn handler; its `retry` and `timeout` apply to each turn's and each tool
call's attempts.

A turn is a task `<step>.turn<n>` whose input is an envelope (the step input, the state the
previous turn carried, the previous turn's tool results, the turn number, the usage so far).
Its result is `Continue(state, tool_calls)` or `Done(output)` with the model usage. Each tool
call is a task `<step>.turn<n>-tool<i>` (its input: the call's arguments), all of a turn's calls
in parallel, each with its own attempts; a call that fails for good (or names an unknown tool)
is a result the next turn sees, never a failure of the loop. Every turn and tool call is an
event, so after a crash only the one in flight runs again; finished ones come from history.

decide: start schedules turn 1; a turn's result records `agent.turn.completed`, then either
completes the step (Done), stops at a limit (`agent.limit.reached`, then `on_limit`; with
`continue_as_new` once the turn's tools are done, through steps/continuation.py), or
schedules the tool calls; when they are all done the next turn starts (after the durable
`loop_delay` timer, `timer.started`/`timer.fired`). `max_duration` is a durable timer too.
evolve: the agent events update the loop's `AgentState` (kernel.step_states).
react: task messages for turns and tool calls, their timeout and retry timers, the delay and
duration timers, and cancelling them when the loop ends.
resume: the effects of whatever is in flight again.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from kernel import control, limits, registry
from kernel.commands import (
    AnswerChild,
    AnyCommand,
    AskChild,
    CompleteTask,
    FailTask,
    FireTimer,
    RecordChild,
    Rejection,
    ReleaseChild,
    ResolveApproval,
)
from kernel.effects import AnyEffect
from kernel.events import (
    AgentLimitReached,
    AgentToolCompleted,
    AgentToolFailed,
    AgentTurnCompleted,
    AgentTurnFailed,
    AgentTurnScheduled,
    AnyEvent,
    ApprovalRequested,
    ApprovalResolved,
    ErrorInfo,
    ErrorKind,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepEvent,
    StepScheduled,
    TimerFired,
    TimerStarted,
)
from kernel.outcome import LOST_KINDS, RETRYABLE_KINDS, ItemReport, StartAttempt, StepInput
from kernel.retry import failures, may_retry
from kernel.state import RunState, is_terminal
from kernel.step_states import AgentState, ApprovalState
from steps import agent_control, approvals, continuation
from steps.agent_config import CONFIG_FIELDS, AgentConfig, read_config, read_report, tool_calls_of
from steps.agent_decide import (
    ask_approval,
    limit_reached,
    retry_due,
    schedule_tool,
    schedule_turn,
    tool_lost,
    turn_lost,
)
from steps.agent_envelope import carry_input, read_carry, turn_envelope
from steps.agent_parts import (
    NULL_RAW,
    agent_of,
    cancel_all,
    config_of,
    deadline_timer,
    deadline_timer_id,
    delay_timer,
    delay_timer_id,
    evolve_agent,
    policy_of,
    react_agent,
    tool_effects,
    tool_task,
    turn_effects,
    turn_retry_timer,
    with_agent,
)
from steps.base import ConfiguredStepType, Draft, counted

replace = msgspec.structs.replace
KEY: Final = re.compile(r"turn([1-9][0-9]{0,5})(?:-tool(0|[1-9][0-9]{0,2}))?")
LIVE: Final = ("scheduled", "running")


class AgentLoopStep(ConfiguredStepType[AgentConfig]):
    """Call a handler once per turn; run the tools it asks for; stop at Done or a limit."""

    config_type = AgentConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "agent_loop"
    needs_task = True

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _start(draft, step_id, given)
            case FireTimer():
                _fire(draft, step_id, given)
            case ItemReport():
                _item(draft, step_id, given.key, given.command)
            case ResolveApproval() if is_terminal(draft.state):
                return approvals.refuse_after_end(draft.state, given)
            case ResolveApproval():
                return approvals.resolve(draft, given, _approval_resolved)
            case RecordChild():  # a child run one of its tool calls started (kernel/control.py)
                if agent_control.reported(draft, step_id, given):
                    _after_tools(draft, step_id)
            case AskChild():  # quotas per root run (kernel/control.py)
                agent_control.asked(draft, step_id, given)
            case AnswerChild():
                if agent_control.answered(draft, step_id, given):
                    _after_tools(draft, step_id)
            case ReleaseChild():
                agent_control.released(draft, step_id, given)
        return None  # (no worker runs the loop step itself, only its turns and tools)

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        if isinstance(event, ApprovalRequested | ApprovalResolved):
            return approvals.evolve(counted(state), event)
        if isinstance(event, agent_control.CONTROL_EVENTS):
            return agent_control.evolve(counted(state), event)
        if isinstance(event, AgentTurnScheduled) and event.turn == 1 and event.attempt == 1:
            fresh = AgentState(
                step_id=event.step_id,
                started_at_ms=event.at_ms,
                state=event.carried_state,
                carried_tool_results=event.carried_tool_results,
            )
            dropped = control.drop_step(state, event.step_id)
            return with_agent(dropped, evolve_agent(fresh, event), count=1)
        agent = agent_of(state, event.step_id)
        assert agent is not None, f"agent loop {event.step_id!r} has not started"
        return with_agent(state, evolve_agent(agent, event), count=1)

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        match event:
            case StepScheduled():
                config = config_of(state, event.step_id)
                if config.max_duration_ms is None:
                    return ()
                due = event.at_ms + config.max_duration_ms
                return (deadline_timer(state, event.step_id, due),)
            case RunCompleted() | RunFailed() | RunCancelled():
                return tuple(
                    effect
                    for agent in state.dynamic.agents
                    if agent.phase != "ended"
                    for effect in cancel_all(state, agent)
                ) + approvals.cancel_pending(state, self.name)
            case ApprovalRequested() | ApprovalResolved():
                return approvals.react(state, event)
        if is_terminal(state):
            return approvals.cancel_pending(state, self.name)
        if not isinstance(event, StepEvent):
            return ()
        if isinstance(event, agent_control.CONTROL_EVENTS):
            return agent_control.react(state, event)
        agent = agent_of(state, event.step_id)
        assert agent is not None
        return react_agent(state, agent, event)

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        agent = agent_of(state, step_id)
        if agent is None or agent.phase == "ended":
            return ()
        effects: list[AnyEffect] = list(approvals.resume_step(state, step_id))
        effects.extend(agent_control.resume_root(state, step_id))  # quotas per root run
        config = config_of(state, step_id)
        if config.max_duration_ms is not None:
            due = agent.started_at_ms + config.max_duration_ms
            effects.append(deadline_timer(state, step_id, due))
        if agent.phase == "turn":
            effects.extend(turn_effects(state, agent))
        elif agent.phase == "turn_retry":
            effects.append(turn_retry_timer(state, agent))
        elif agent.phase == "tools":
            for index, tool in enumerate(agent.tools):
                if tool.status in ("scheduled", "retry_wait"):
                    child = agent_control.resume(state, agent, index)
                    effects.extend(tool_effects(state, agent, index) if child is None else child)
        elif agent.phase == "delay" and agent.delay_until_ms is not None:
            effects.append(delay_timer(state, agent))
        return tuple(effects)


# -- decide helpers ------------------------------------------------------------------------


def _start(draft: Draft, step_id: str, given: StartAttempt) -> None:
    carried = read_carry(given.input, step_id)  # a loop resumed in a run continued as new
    step_input = given.input if carried is None else carried.input
    draft.emit(
        StepScheduled(step_id=step_id, attempt=given.attempt, input=step_input, at_ms=draft.at_ms)
    )
    schedule_turn(draft, step_id, 1, 1, carried)


def _fire(context: Draft, step_id: str, command: FireTimer) -> None:
    agent = agent_of(context.state, step_id)
    if agent is None or agent.phase == "ended":
        return
    if approvals.fire(context, step_id, command, _approval_resolved):
        return  # a tool call's approval deadline: resolved by its on_timeout
    if command.timer_id == deadline_timer_id(step_id, command.attempt):
        config = config_of(context.state, step_id)
        assert config.max_duration_ms is not None
        message = f"the agent loop ran {config.max_duration_ms} ms (max_duration)"
        _limit(context, step_id, "max_duration", message)
    elif (
        agent.phase == "delay"
        and agent.delay_until_ms is not None
        and (command.timer_id == delay_timer_id(step_id, command.attempt, agent.turn + 1))
    ):
        context.emit(TimerFired(step_id=step_id, timer_id=command.timer_id, at_ms=context.at_ms))
        _next_turn(context, step_id)


def _item(context: Draft, step_id: str, key: str, command: AnyCommand) -> None:
    state = context.state
    step = state.step(step_id)
    agent = agent_of(state, step_id)
    match = KEY.fullmatch(key)
    if state.status != "running" or step is None or step.status not in LIVE:
        return
    if agent is None or match is None or int(match.group(1)) != agent.turn:
        return  # not this loop's turn in hand: a stale result or timer
    if match.group(2) is None:
        _turn_item(context, step_id, agent, command)
    else:
        _tool_item(context, step_id, agent, int(match.group(2)), command)


def _approval_resolved(context: Draft, step_id: str, approval: ApprovalState) -> None:
    """A tool call's approval: approved, the call runs; rejected (or timed out), its result
    is the rejection, which the next turn sees."""
    agent = agent_of(context.state, step_id)
    match = KEY.fullmatch(approval.key.removeprefix(step_id + "."))
    if agent is None or agent.phase != "tools" or match is None or match.group(2) is None:
        return
    turn, index = int(match.group(1)), int(match.group(2))
    if turn != agent.turn or index >= len(agent.tools) or agent.tools[index].status != "pending":
        return
    tool = agent.tools[index]
    if approval.decision == "approve":
        schedule_tool(context, step_id, turn, index, tool_task(context.state, step_id, tool), 1)
        return
    why = f": {approval.comment}" if approval.comment else ""
    error = ErrorInfo(
        message=f"tool call {tool.call_id!r} was rejected by {approval.by}{why}",
        kind="non_retryable",
    )
    context.emit(
        AgentToolCompleted(
            step_id=step_id, turn=turn, index=index, attempt=0, ok=False, error=error,
            at_ms=context.at_ms,
        )
    )  # fmt: skip
    _after_tools(context, step_id)


def _next_turn(context: Draft, step_id: str) -> None:
    """Start the turn after the latest, unless a limit says stop."""
    agent = agent_of(context.state, step_id)
    assert agent is not None and agent.tools_done
    config = config_of(context.state, step_id)
    due = None if config.max_duration_ms is None else agent.started_at_ms + config.max_duration_ms
    if due is not None and context.at_ms >= due:
        message = f"the agent loop ran {config.max_duration_ms} ms (max_duration)"
        _limit(context, step_id, "max_duration", message)
        return
    after_turns = config.continue_as_new_after_turns
    if after_turns is not None and agent.turns_completed >= after_turns:
        message = f"the agent loop took {agent.turns_completed} turns in this run"
        _limit(context, step_id, "continue_as_new_after_turns", message, "continue_as_new")
        return
    reached = limit_reached(context.state, step_id)
    if reached is not None:  # only with on_limit continue_as_new: the others stop at once
        _limit(context, step_id, *reached)
        return
    step = context.state.step(step_id)
    assert step is not None
    size = len(turn_envelope(step.input, agent, agent.turn + 1))
    if size > limits.payload_bytes_max:
        message = (
            f"turn {agent.turn + 1}'s input (step input, state and tool results) is {size} "
            f"bytes; the limit is {limits.payload_bytes_max} bytes"
        )
        context.fail(step_id, ErrorInfo(message=message, kind="invalid_input"), retryable=False)
        return
    schedule_turn(context, step_id, agent.turn + 1, 1)


def _limit(context: Draft, step_id: str, limit: str, message: str, action: str = "") -> None:
    """Stop at a bound: fail, complete with the last state, or continue as new (`action`, by
    default the loop's `on_limit`)."""
    action = action or config_of(context.state, step_id).on_limit
    context.emit(
        AgentLimitReached(
            step_id=step_id, limit=limit, message=message, action=action, at_ms=context.at_ms
        )
    )
    agent = agent_of(context.state, step_id)
    step = context.state.step(step_id)
    assert agent is not None and step is not None
    if action == "complete":
        context.complete(step_id, agent.state)
        return
    if action == "continue_as_new":
        carried = carry_input(step_id, step.input, agent)
        problem = continuation.continue_as_new(context, step_id, carried)
        if problem is None:
            return
        message = f"{message}; it cannot continue as new: {problem}"
    kind: ErrorKind = "timeout" if limit == "max_duration" else "non_retryable"
    context.fail(step_id, ErrorInfo(message=message, kind=kind), retryable=False)


def _turn_item(context: Draft, step_id: str, agent: AgentState, command: AnyCommand) -> None:
    live = agent.phase == "turn"
    match command:
        case CompleteTask() if live and command.attempt == agent.turn_attempt:
            _turn_result(context, step_id, agent, command.output)
        case FailTask() if live and command.attempt == agent.turn_attempt:
            if command.kind in LOST_KINDS:
                exhausted = turn_lost(context, step_id, agent, command.error[:1024])
                if exhausted is not None:
                    _turn_failed(context, step_id, agent, exhausted, False, None)
                return
            error = ErrorInfo(message=command.error[:1024], kind=command.kind)
            retryable = command.kind in RETRYABLE_KINDS
            _turn_failed(context, step_id, agent, error, retryable, command.retry_after_ms)
        case FireTimer(kind="retry") if agent.phase == "turn_retry":
            if command.attempt == agent.turn_attempt + 1:
                schedule_turn(context, step_id, agent.turn, command.attempt)
        case FireTimer(kind="step_timeout") if live and command.attempt == agent.turn_attempt:
            error = ErrorInfo(message=f"turn {agent.turn} attempt timed out", kind="timeout")
            _turn_failed(context, step_id, agent, error, True, None)
        case _:
            return  # a start report, a stale result or timer: nothing to decide


def _turn_failed(
    context: Draft,
    step_id: str,
    agent: AgentState,
    error: ErrorInfo,
    retryable: bool,
    retry_after_ms: int | None,
) -> None:
    policy = policy_of(context.state, step_id)
    attempt, lost = agent.turn_attempt, agent.turn_lost_attempts
    will_retry = retryable and may_retry(policy, attempt, lost)
    failed = failures(attempt, lost)
    due = retry_due(context, policy, failed, retry_after_ms) if will_retry else None
    context.emit(
        AgentTurnFailed(
            step_id=step_id, turn=agent.turn, attempt=attempt, error=error,
            will_retry=will_retry, at_ms=context.at_ms, due_at_ms=due,
        )
    )  # fmt: skip
    if not will_retry:
        message = f"turn {agent.turn} failed: {error.message}"
        context.fail(step_id, ErrorInfo(message=message, kind=error.kind), retryable=False)


def _turn_result(context: Draft, step_id: str, agent: AgentState, output: msgspec.Raw) -> None:
    report = read_report(output)
    if isinstance(report, str):
        error = ErrorInfo(message=report, kind="invalid_output")
        _turn_failed(context, step_id, agent, error, False, None)
        return
    calls = tool_calls_of(report) if report.agent == "continue" else ()
    if agent.tool_calls + len(calls) > limits.agent_tool_calls_max:
        message = f"the loop's tool calls would pass {limits.agent_tool_calls_max}"
        _turn_failed(context, step_id, agent, ErrorInfo(message=message), False, None)
        return
    done = report.agent == "done"
    context.emit(
        AgentTurnCompleted(
            step_id=step_id, turn=agent.turn, attempt=agent.turn_attempt, done=done,
            state=NULL_RAW if done else report.state, output=report.output if done else NULL_RAW,
            tool_calls=calls, tokens_in=report.tokens_in, tokens_out=report.tokens_out,
            cost=report.cost, at_ms=context.at_ms,
        )
    )  # fmt: skip
    if done:
        context.complete(step_id, report.output)
        return
    config = config_of(context.state, step_id)
    reached = limit_reached(context.state, step_id)
    if reached is not None and config.on_limit != "continue_as_new":
        _limit(context, step_id, *reached)
        return  # (continue_as_new runs the tools first, so the fresh run sees their results)
    for index, call in enumerate(calls):
        if call.name == control.CHILD_TOOL:  # a child run: the control plane decides it
            agent_control.request(context, step_id, agent.turn, index)
            continue
        task = config.task_of(call.name)
        if task and call.name in config.approval_tools:
            ask_approval(context, step_id, agent.turn, index, config)
            continue
        if task:
            schedule_tool(context, step_id, agent.turn, index, task, 1)
            continue
        known = ", ".join(name for name, _ in config.tools or ())
        error = ErrorInfo(
            message=f"unknown tool {call.name!r} (known: {known})", kind="non_retryable"
        )
        context.emit(
            AgentToolCompleted(
                step_id=step_id, turn=agent.turn, index=index, attempt=0, ok=False, error=error,
                at_ms=context.at_ms,
            )
        )  # fmt: skip
    _after_tools(context, step_id)


def _after_tools(context: Draft, step_id: str) -> None:
    """Every tool call of the latest turn is done: the next turn, after the loop delay."""
    agent = agent_of(context.state, step_id)
    assert agent is not None
    if agent.phase != "tools" or not agent.tools_done:
        return
    config = config_of(context.state, step_id)
    if config.loop_delay_ms == 0:
        _next_turn(context, step_id)
        return
    step = context.state.step(step_id)
    assert step is not None
    context.emit(
        TimerStarted(
            step_id=step_id, timer_id=delay_timer_id(step_id, step.attempt, agent.turn + 1),
            fire_at_ms=context.at_ms + config.loop_delay_ms, at_ms=context.at_ms,
        )
    )  # fmt: skip


def _tool_item(
    context: Draft, step_id: str, agent: AgentState, index: int, command: AnyCommand
) -> None:
    if agent.phase != "tools" or index >= len(agent.tools):
        return
    tool = agent.tools[index]
    live = tool.status == "scheduled"
    match command:
        case CompleteTask() if live and command.attempt == tool.attempt:
            if len(command.output) > limits.payload_bytes_max:
                size = len(command.output)
                message = f"output is {size} bytes; the limit is {limits.payload_bytes_max} bytes"
                _tool_failed(
                    context,
                    step_id,
                    agent,
                    index,
                    ErrorInfo(message=message, kind="invalid_output"),
                    False,
                    None,
                )
                return
            context.emit(
                AgentToolCompleted(
                    step_id=step_id, turn=agent.turn, index=index, attempt=tool.attempt, ok=True,
                    output=command.output, at_ms=context.at_ms,
                )
            )  # fmt: skip
            _after_tools(context, step_id)
        case FailTask() if live and command.attempt == tool.attempt:
            if command.kind in LOST_KINDS:
                exhausted = tool_lost(context, step_id, agent, index, command.error[:1024])
                if exhausted is not None:
                    _tool_failed(context, step_id, agent, index, exhausted, False, None)
                return
            error = ErrorInfo(message=command.error[:1024], kind=command.kind)
            retryable = command.kind in RETRYABLE_KINDS
            _tool_failed(context, step_id, agent, index, error, retryable, command.retry_after_ms)
        case FireTimer(kind="retry") if tool.status == "retry_wait":
            if command.attempt == tool.attempt + 1:
                schedule_tool(
                    context,
                    step_id,
                    agent.turn,
                    index,
                    tool_task(context.state, step_id, tool),
                    command.attempt,
                )
        case FireTimer(kind="step_timeout") if live and command.attempt == tool.attempt:
            error = ErrorInfo(
                message=f"tool call {tool.call_id!r} attempt timed out", kind="timeout"
            )
            _tool_failed(context, step_id, agent, index, error, True, None)
        case _:
            return


def _tool_failed(
    context: Draft,
    step_id: str,
    agent: AgentState,
    index: int,
    error: ErrorInfo,
    retryable: bool,
    retry_after_ms: int | None,
) -> None:
    policy = policy_of(context.state, step_id)
    tool = agent.tools[index]
    attempt = tool.attempt
    if retryable and may_retry(policy, attempt, tool.lost_attempts):
        failed = failures(attempt, tool.lost_attempts)
        due = retry_due(context, policy, failed, retry_after_ms)
        context.emit(
            AgentToolFailed(
                step_id=step_id, turn=agent.turn, index=index, attempt=attempt, error=error,
                at_ms=context.at_ms, due_at_ms=due,
            )
        )  # fmt: skip
        return
    context.emit(
        AgentToolCompleted(
            step_id=step_id, turn=agent.turn, index=index, attempt=attempt, ok=False,
            error=error, at_ms=context.at_ms,
        )
    )  # fmt: skip
    _after_tools(context, step_id)


AGENT_LOOP = registry.register(AgentLoopStep())
