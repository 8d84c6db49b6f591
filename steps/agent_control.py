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
from kernel.commands import AnswerChild, AskChild, RecordChild, ReleaseChild
from kernel.control_events import (
    ControlChildAsked,
    ControlChildEnded,
    ControlChildRefused,
    ControlChildStarted,
    ControlTreeGranted,
    ControlTreeRefused,
    ControlTreeReleased,
)
from kernel.effects import AnyEffect, StartChild
from kernel.events import AgentToolCompleted, ErrorInfo
from kernel.state import RunState
from kernel.step_states import ActiveChild, AgentState
from kernel.timers import timer_seed
from kernel.workflow import WorkflowDef
from steps.agent_parts import agent_of, with_agent
from steps.base import Draft

ControlEvent = (
    ControlChildStarted | ControlChildRefused | ControlChildEnded | ControlChildAsked
    | ControlTreeGranted | ControlTreeRefused | ControlTreeReleased
)  # fmt: skip
CONTROL_EVENTS = (
    ControlChildStarted, ControlChildRefused, ControlChildEnded, ControlChildAsked,
    ControlTreeGranted, ControlTreeRefused, ControlTreeReleased,
)  # fmt: skip
TREE_EVENTS = (ControlTreeGranted, ControlTreeRefused, ControlTreeReleased)
replace = msgspec.structs.replace


def request(context: Draft, step_id: str, turn: int, index: int) -> None:
    """Decide tool call `index` of `turn`, a child run request."""
    agent = agent_of(context.state, step_id)
    assert agent is not None and agent.phase == "tools"
    call = agent.tools[index]
    verdict = control.admit(context.state, step_id, turn, index, call.arguments, context.at_ms)
    if isinstance(verdict, control.Refused):
        _refuse(context, step_id, turn, index, call.call_id, verdict)
        return
    if not control.is_root(context.state):  # the root counts its tree: ask it first
        context.emit(
            ControlChildAsked(
                step_id=step_id, turn=turn, index=index, call_id=call.call_id,
                child_run_id=verdict.child_run_id, workflow=verdict.workflow,
                definition=verdict.definition, input=verdict.input,
                root_run_id=control.root_of(context.state, step_id)[0], at_ms=context.at_ms,
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


def _refuse(
    context: Draft, step_id: str, turn: int, index: int, call_id: str, why: control.Refused
) -> None:
    """The call's child run is refused: the refusal is the call's result."""
    context.emit(
        ControlChildRefused(
            step_id=step_id, turn=turn, index=index, call_id=call_id, rule=why.rule,
            message=why.message, at_ms=context.at_ms,
        )
    )  # fmt: skip
    error = ErrorInfo(message=why.message, kind="non_retryable")
    context.emit(
        AgentToolCompleted(
            step_id=step_id, turn=turn, index=index, attempt=0, ok=False, error=error,
            at_ms=context.at_ms,
        )
    )  # fmt: skip


def asked(context: Draft, step_id: str, command: AskChild) -> None:
    """At the root: a descendant's request, decided on the tree's counters (one the root
    already decided decides nothing: the root's resume sends its answer again)."""
    state = context.state
    agent = agent_of(state, step_id)
    why: control.Refused | None = None
    if not control.is_root(state) or agent is None or agent.phase == "ended":
        message = f"root run {state.run_id!r}'s agent loop {step_id!r} no longer starts children"
        why = control.Refused(rule="child_runs.root", message=message)
    elif control.tree_child(state, command.child_run_id) is not None:
        return
    else:
        why = control.tree_refusal(state, command.generation, command.writes, context.at_ms)
    if why is None:
        context.emit(
            ControlTreeGranted(
                step_id=step_id, child_run_id=command.child_run_id,
                requester_run_id=command.requester_run_id,
                requester_step_id=command.requester_step_id, turn=command.turn,
                index=command.index, writes=command.writes, at_ms=context.at_ms,
            )
        )  # fmt: skip
        return
    context.emit(
        ControlTreeRefused(
            step_id=step_id, child_run_id=command.child_run_id,
            requester_run_id=command.requester_run_id,
            requester_step_id=command.requester_step_id, turn=command.turn, index=command.index,
            rule=why.rule, message=why.message, at_ms=context.at_ms,
        )
    )  # fmt: skip


def answered(context: Draft, step_id: str, command: AnswerChild) -> bool:
    """The root's verdict on one of this run's requests: the child starts (False), or the
    refusal is the call's result (True: the loop may go on). A duplicate decides nothing."""
    agent = agent_of(context.state, step_id)
    child = next(
        (c for c in control.control_of(context.state).asking
         if c.child_run_id == command.child_run_id and c.step_id == step_id),
        None,
    )  # fmt: skip
    if agent is None or child is None or agent.phase != "tools" or child.turn != agent.turn:
        return False
    call_id = agent.tools[child.index].call_id
    if not command.granted:
        refused = control.Refused(rule=command.rule, message=command.message)
        _refuse(context, step_id, child.turn, child.index, call_id, refused)
        return True
    definition = None
    if bytes(child.definition) != b"null":
        definition = msgspec.json.decode(bytes(child.definition), type=WorkflowDef)
    context.emit(
        ControlChildStarted(
            step_id=step_id, turn=child.turn, index=child.index, call_id=call_id,
            child_run_id=child.child_run_id, workflow=child.workflow, definition=definition,
            input=child.input, depth=context.state.depth + 1, at_ms=context.at_ms,
        )
    )  # fmt: skip
    return False


def released(context: Draft, step_id: str, command: ReleaseChild) -> None:
    """At the root: a descendant's child ended; the root stops counting it."""
    if control.tree_child(context.state, command.child_run_id) is not None:
        context.emit(
            ControlTreeReleased(
                step_id=step_id, child_run_id=command.child_run_id, at_ms=context.at_ms
            )
        )


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
    if isinstance(event, TREE_EVENTS):
        return control.evolve_tree(state, event)
    state = control.evolve(state, event)
    if not isinstance(event, ControlChildStarted | ControlChildAsked):
        return state
    agent = agent_of(state, event.step_id)
    assert agent is not None and event.turn == agent.turn, (event.step_id, event.turn)
    tool = agent.tools[event.index]
    assert tool.status in ("pending", "scheduled"), tool.status
    running = replace(tool, status="scheduled", attempt=1)
    return with_agent(state, agent.with_tool(event.index, running))


def start_effect(state: RunState, child: ActiveChild) -> StartChild:
    root, root_step = control.root_of(state, child.step_id)
    definition = None
    if bytes(child.definition) != b"null":
        definition = msgspec.json.decode(bytes(child.definition), type=WorkflowDef)
    return StartChild(
        run_id=state.run_id, step_id=child.step_id, child_run_id=child.child_run_id,
        workflow=child.workflow, input=child.input, depth=state.depth + 1, detached=False,
        at_ms=child.at_ms, seed=timer_seed(state.seed, child.child_run_id), definition=definition,
        control_root=root, control_root_step=root_step,
    )  # fmt: skip


def react(state: RunState, event: ControlEvent) -> tuple[AnyEffect, ...]:
    match event:
        case ControlChildStarted():
            child = control.active_child(state, event.step_id, event.turn, event.index)
            assert child is not None
            return (start_effect(state, child),)
        case ControlChildAsked():
            asking = _asking(state, event.step_id, event.turn, event.index)
            assert asking is not None
            return (control.ask(state, asking),)
        case ControlChildEnded() if not control.is_root(state):
            return (control.release(state, event.step_id, event.child_run_id, event.at_ms),)
        case ControlTreeGranted() | ControlTreeRefused():
            verdict = control.tree_child(state, event.child_run_id)
            assert verdict is not None
            return (control.answer(state, verdict),)
    return ()


def _asking(state: RunState, step_id: str, turn: int, index: int) -> ActiveChild | None:
    for child in control.control_of(state).asking:
        if (child.step_id, child.turn, child.index) == (step_id, turn, index):
            return child
    return None


def resume(state: RunState, agent: AgentState, index: int) -> tuple[AnyEffect, ...] | None:
    """The start of tool call `index`'s child again, or its request to the root again (None:
    the call is no child)."""
    child = control.active_child(state, agent.step_id, agent.turn, index)
    if child is not None:
        return (start_effect(state, child),)
    asking = _asking(state, agent.step_id, agent.turn, index)
    return None if asking is None else (control.ask(state, asking),)


def resume_root(state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
    """At the root's agent loop: the verdicts it may owe its descendants, sent again."""
    if not control.is_root(state) or control.root_of(state, step_id)[1] != step_id:
        return ()
    return control.answers(state)
