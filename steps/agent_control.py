"""The agent loop's side of the control plane (kernel/control.py): a `CHILD_TOOL` call starts a
child run instead of a task, and the child's end is the call's result. Pure.

decide: `request` records the kernel's verdict on a call (`control.child.started`, or
`control.child.refused` and the call's failed result); `reported` turns the child's report
(`RecordChild`, addressed to the loop's step) into `control.child.ended` and the call's result.
evolve: the control events update the run's control counters and mark the call as running.
react/resume: start the child (again: the start is deduplicated on the child's id); when the
loop ends, cancel the children still running.
"""

from __future__ import annotations

import msgspec

from kernel import control, limits
from kernel.commands import RecordChild
from kernel.control_events import ControlChildEnded, ControlChildRefused, ControlChildStarted
from kernel.effects import AnyEffect, StartChild
from kernel.events import AgentToolCompleted, ErrorInfo
from kernel.state import RunState
from kernel.step_states import ActiveChild, AgentState
from kernel.timers import timer_seed
from kernel.workflow import WorkflowDef
from steps.agent_parts import agent_of, with_agent
from steps.base import Draft

ControlEvent = ControlChildStarted | ControlChildRefused | ControlChildEnded
CONTROL_EVENTS = (ControlChildStarted, ControlChildRefused, ControlChildEnded)
replace = msgspec.structs.replace


def request(context: Draft, step_id: str, turn: int, index: int) -> None:
    """Decide tool call `index` of `turn`, a child run request."""
    agent = agent_of(context.state, step_id)
    assert agent is not None and agent.phase == "tools"
    call = agent.tools[index]
    verdict = control.admit(context.state, step_id, turn, index, call.arguments, context.at_ms)
    if isinstance(verdict, control.Refused):
        context.emit(
            ControlChildRefused(
                step_id=step_id, turn=turn, index=index, call_id=call.call_id,
                rule=verdict.rule, message=verdict.message, at_ms=context.at_ms,
            )
        )  # fmt: skip
        error = ErrorInfo(message=verdict.message, kind="non_retryable")
        context.emit(
            AgentToolCompleted(
                step_id=step_id, turn=turn, index=index, attempt=0, ok=False, error=error,
                at_ms=context.at_ms,
            )
        )  # fmt: skip
        return
    context.emit(
        ControlChildStarted(
            step_id=step_id, turn=turn, index=index, call_id=call.call_id,
            child_run_id=verdict.child_run_id, workflow=verdict.workflow,
            definition=verdict.definition, input=verdict.input, depth=context.state.depth + 1,
            at_ms=context.at_ms,
        )
    )  # fmt: skip


def reported(context: Draft, step_id: str, command: RecordChild) -> bool:
    """A child's report: its call's result when the child is one of the loop's running
    children (True), else nothing (a stale or unknown report)."""
    agent = agent_of(context.state, step_id)
    if agent is None or agent.phase != "tools" or command.status == "started":
        return False
    child = next(
        (c for c in control.control_of(context.state).active
         if c.child_run_id == command.child_run_id and c.step_id == step_id),
        None,
    )  # fmt: skip
    if child is None or child.turn != agent.turn:
        return False
    context.emit(
        ControlChildEnded(
            step_id=step_id, turn=child.turn, index=child.index, child_run_id=child.child_run_id,
            status=command.status, at_ms=context.at_ms,
        )
    )  # fmt: skip
    ok = command.status == "completed"
    message = command.error or f"child run {child.child_run_id!r} {command.status}"
    error = None if ok else ErrorInfo(
        message=message[: limits.error_message_bytes_max // 4], kind="non_retryable"
    )  # fmt: skip
    context.emit(
        AgentToolCompleted(
            step_id=step_id, turn=child.turn, index=child.index, attempt=1, ok=ok,
            output=command.output if ok else msgspec.Raw(b"null"), error=error,
            at_ms=context.at_ms,
        )
    )  # fmt: skip
    return True


def evolve(state: RunState, event: ControlEvent) -> RunState:
    state = control.evolve(state, event)
    if not isinstance(event, ControlChildStarted):
        return state
    agent = agent_of(state, event.step_id)
    assert agent is not None and event.turn == agent.turn, (event.step_id, event.turn)
    tool = agent.tools[event.index]
    assert tool.status == "pending", tool.status
    running = replace(tool, status="scheduled", attempt=1)
    return with_agent(state, agent.with_tool(event.index, running))


def start_effect(state: RunState, child: ActiveChild) -> StartChild:
    definition = None
    if bytes(child.definition) != b"null":
        definition = msgspec.json.decode(bytes(child.definition), type=WorkflowDef)
    return StartChild(
        run_id=state.run_id, step_id=child.step_id, child_run_id=child.child_run_id,
        workflow=child.workflow, input=child.input, depth=state.depth + 1, detached=False,
        at_ms=child.at_ms, seed=timer_seed(state.seed, child.child_run_id), definition=definition,
    )  # fmt: skip


def react(state: RunState, event: ControlEvent) -> tuple[AnyEffect, ...]:
    if isinstance(event, ControlChildStarted):
        child = control.active_child(state, event.step_id, event.turn, event.index)
        assert child is not None
        return (start_effect(state, child),)
    return ()


def resume(state: RunState, agent: AgentState, index: int) -> tuple[AnyEffect, ...] | None:
    """The start of tool call `index`'s child again (None: the call is no child)."""
    child = control.active_child(state, agent.step_id, agent.turn, index)
    return None if child is None else (start_effect(state, child),)
