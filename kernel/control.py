"""The control plane: agents that start child runs, under quotas the kernel checks. Pure.

An agent loop's turn asks for a child run with a tool call named `CHILD_TOOL` whose arguments
are `{"workflow": "<registered name>", "input": ...}` or `{"definition": {<a workflow the agent
wrote>}, "input": ...}` (the worker SDK's `ctx.start_child` builds it). The kernel decides it
here, from the run's state alone:

- deny by default: the run's workflow file must say `"child_runs": {"allow": true}`;
- the request must be well formed, and a written definition valid like any registration (and
  no looser in its own `child_runs` than the workflow that wrote it);
- the quotas of `child_runs` (each at most its `kernel.limits.control_*_max`): the child's
  generation (its depth from the root run), the children running at once, the definitions
  written, and the starts within any `limits.control_window_ms`.

A refusal names the rule and is the tool call's result, which the agent sees next turn; an
admitted child is recorded (`control.child.started`: its id, workflow, definition, input) and
its end comes back as the tool call's result. The child's id is derived from the parent's id,
the loop and the call, so it lives under the root run's id and starting it again is a no-op.
This module holds the rules and the run's control counters; steps/agent_control.py applies
them for the agent loop.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import msgspec

from kernel import limits
from kernel.commands import AnswerChild, AskChild, ReleaseChild
from kernel.control_events import (
    ControlChildAsked,
    ControlChildEnded,
    ControlChildRefused,
    ControlChildStarted,
    ControlTreeGranted,
    ControlTreeRefused,
    ControlTreeReleased,
)
from kernel.effects import AnyEffect, CancelChild, SendCommand, in_life
from kernel.errors import WorkflowInvalidError
from kernel.event_base import NULL
from kernel.state import RunState
from kernel.step_states import NO_CONTROL, ActiveChild, ControlState, TreeChild
from kernel.workflow import WorkflowDef, parse_workflow
from kernel.workflow.child_runs import QUOTAS, ChildRuns, child_runs_of

CHILD_TOOL: Final = "dagnats.start_child"  # the reserved tool name of a child run's request
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_CHARS: Final = 12
problems_shown_max: Final = 10  # of an invalid definition, in the refusal the agent sees

replace = msgspec.structs.replace


class ChildRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The arguments of a `CHILD_TOOL` call: a registered `workflow`'s name or a `definition`."""

    workflow: str = ""
    definition: msgspec.Raw = NULL
    input: msgspec.Raw = NULL


class Admitted(msgspec.Struct, frozen=True, kw_only=True):
    child_run_id: str
    workflow: str
    definition: WorkflowDef | None
    input: msgspec.Raw


class Refused(msgspec.Struct, frozen=True, kw_only=True):
    rule: str
    message: str


_request_decoder: Final = msgspec.json.Decoder(ChildRequest)


def control_of(state: RunState) -> ControlState:
    """The run's control counters (empty before its first child request)."""
    control = state.dynamic.control
    return NO_CONTROL if isinstance(control, msgspec.UnsetType) else control


def with_control(state: RunState, control: ControlState) -> RunState:
    return replace(state, dynamic=replace(state.dynamic, control=control))


def is_root(state: RunState) -> bool:
    """The run counts its own tree: it is no agent's child run (kernel/control_tree.py)."""
    return not control_of(state).root_run_id


def root_of(state: RunState, step_id: str) -> tuple[str, str]:
    """The root run whose quotas count children this run's agent loop `step_id` starts, and
    the root's agent loop step (this run and step when the run is a root)."""
    if is_root(state):
        return state.run_id, step_id
    control = control_of(state)
    return control.root_run_id, control.root_step_id


def child_id(run_id: str, step_id: str, turn: int, index: int) -> str:
    """The run id of the child tool call `index` of `turn` of `step_id` starts: the parent's
    id (made subject-safe, shortened to fit) then the call, then a digest of all four."""
    assert turn >= 1 and index >= 0, (turn, index)
    digest = hashlib.blake2b(
        f"{run_id}\x00{step_id}\x00{turn}\x00{index}".encode(), digest_size=_DIGEST_CHARS // 2
    ).hexdigest()
    tail = f"-t{turn}c{index}-{digest}"
    head = _UNSAFE.sub("_", f"{run_id}-{step_id}")[: limits.run_id_length_max - len(tail)]
    result = head + tail
    assert len(result) <= limits.run_id_length_max
    return result


def recent_starts(control: ControlState, at_ms: int) -> tuple[int, ...]:
    """The start times within the quota's window before `at_ms`."""
    return tuple(t for t in control.recent_starts_ms if at_ms - t < limits.control_window_ms)


def admit(
    state: RunState, step_id: str, turn: int, index: int, arguments: msgspec.Raw, at_ms: int
) -> Admitted | Refused:
    """The kernel's verdict on a child run request (a `CHILD_TOOL` call's `arguments`)."""
    assert state.workflow is not None
    quotas = child_runs_of(state.workflow)
    if not quotas.allow:
        return Refused(
            rule="child_runs.allow",
            message=f"workflow {state.workflow.name!r} may not start child runs: its file has "
            'no "child_runs": {"allow": true} (deny by default)',
        )
    request = _request(arguments)
    if isinstance(request, Refused):
        return request
    writes = bool(request.definition != NULL)
    refused = _over_quota(state, quotas, at_ms, writes)
    if refused is None and is_root(state):  # the root counts its whole tree (control_tree)
        refused = tree_refusal(state, state.depth + 1, writes, at_ms)
    if refused is not None:
        return refused
    definition = None
    name = request.workflow
    if request.definition != NULL:
        written = _definition(request.definition, quotas)
        if isinstance(written, Refused):
            return written
        definition, name = written, written.name
    child = child_id(state.run_id, step_id, turn, index)
    return Admitted(child_run_id=child, workflow=name, definition=definition, input=request.input)


def _request(arguments: msgspec.Raw) -> ChildRequest | Refused:
    try:
        request = _request_decoder.decode(bytes(arguments))
    except msgspec.DecodeError as error:
        message = (
            'a child run request is {"workflow": "<registered name>", "input": ...} or '
            f'{{"definition": {{...}}, "input": ...}}: {error}'
        )
        return Refused(rule="arguments", message=message)
    written = request.definition != NULL
    if written == bool(request.workflow):
        message = "a child run request names exactly one of workflow and definition"
        return Refused(rule="arguments", message=message)
    if len(request.workflow) > limits.workflow_name_length_max:
        message = f"workflow names are at most {limits.workflow_name_length_max} characters"
        return Refused(rule="arguments.workflow", message=message)
    return request


def _over_quota(state: RunState, quotas: ChildRuns, at_ms: int, writes: bool) -> Refused | None:
    """The first quota a new child would pass, if any."""
    control = control_of(state)
    if state.depth + 1 > quotas.max_generations:
        return _quota(
            "max_generations",
            f"a child of this run would be generation {state.depth + 1}",
            quotas.max_generations,
        )
    active = active_count(state)
    if active >= quotas.max_active:
        return _quota("max_active", f"{active} child runs are running", quotas.max_active)
    recent = len(recent_starts(control, at_ms))
    if recent >= quotas.max_starts_per_minute:
        return _quota(
            "max_starts_per_minute",
            f"{recent} child runs started within the last minute",
            quotas.max_starts_per_minute,
        )
    if writes and control.definitions >= quotas.max_definitions:
        return _quota(
            "max_definitions",
            f"this run's agents wrote {control.definitions} workflow definitions",
            quotas.max_definitions,
        )
    return None


def _quota(name: str, what: str, bound: int) -> Refused:
    return Refused(
        rule=f"child_runs.{name}",
        message=f"child run refused: {what}; the quota is {bound} (child_runs.{name})",
    )


def _definition(document: msgspec.Raw, quotas: ChildRuns) -> WorkflowDef | Refused:
    """The written workflow, validated like any registration, or why it is refused."""
    try:
        written = parse_workflow(bytes(document))
    except WorkflowInvalidError as error:
        shown = "; ".join(
            f"{problem.path}: {problem.rule}" for problem in error.problems[:problems_shown_max]
        )
        return Refused(rule="definition", message=f"the workflow definition is invalid: {shown}")
    own = child_runs_of(written)
    if own.allow:
        looser = [key for key in QUOTAS if getattr(own, key) > getattr(quotas, key)]
        if looser:
            shown = ", ".join(f"{k} {getattr(own, k)} > {getattr(quotas, k)}" for k in looser)
            message = f"a written workflow's child_runs may not pass its writer's ({shown})"
            return Refused(rule="definition.child_runs", message=message)
    return written


# -- evolve ----------------------------------------------------------------------------------


def evolve(
    state: RunState,
    event: ControlChildStarted | ControlChildRefused | ControlChildEnded | ControlChildAsked,
) -> RunState:
    """The run's control counters after one of the control plane's events."""
    control = control_of(state)
    match event:
        case ControlChildAsked():
            written = event.definition
            definition = NULL if written is None else msgspec.Raw(msgspec.json.encode(written))
            child = ActiveChild(
                child_run_id=event.child_run_id, step_id=event.step_id, turn=event.turn,
                index=event.index, workflow=event.workflow, definition=definition,
                input=event.input, at_ms=event.at_ms,
            )  # fmt: skip
            control = control.with_tree(asking=(*control.asking, child))
        case ControlChildStarted():
            control = _answered(control, event.step_id, event.turn, event.index)
            written = event.definition
            definition = NULL if written is None else msgspec.Raw(msgspec.json.encode(written))
            child = ActiveChild(
                child_run_id=event.child_run_id, step_id=event.step_id, turn=event.turn,
                index=event.index, workflow=event.workflow, definition=definition,
                input=event.input, at_ms=event.at_ms,
            )  # fmt: skip
            ended = {agent.step_id for agent in state.dynamic.agents if agent.phase == "ended"}
            live = tuple(c for c in control.active if c.step_id not in ended)  # see active_count
            recent = recent_starts(control, event.at_ms)
            assert len(recent) < limits.control_starts_per_minute_max, "the quota bounds it"
            control = replace(
                control,
                active=(*live, child),
                started=control.started + 1,
                definitions=control.definitions + (0 if event.definition is None else 1),
                recent_starts_ms=(*recent, event.at_ms),
            )
            assert len(control.active) <= limits.control_active_children_max
        case ControlChildRefused():
            control = _answered(control, event.step_id, event.turn, event.index)
            control = replace(control, refused=control.refused + 1)
        case ControlChildEnded():
            active = tuple(c for c in control.active if c.child_run_id != event.child_run_id)
            assert len(active) == len(control.active) - 1, f"{event.child_run_id} was not active"
            control = replace(control, active=active)
    return with_control(state, control)


def _answered(control: ControlState, step_id: str, turn: int, index: int) -> ControlState:
    """The root answered the request of call `index` (if it was asked of the root)."""
    asking = tuple(
        child for child in control.asking if (child.step_id, child.turn, child.index)
        != (step_id, turn, index)
    )  # fmt: skip
    return control if len(asking) == len(control.asking) else control.with_tree(asking=asking)


def drop_step(state: RunState, step_id: str) -> RunState:
    """Agent loop `step_id` starts afresh (a retry or a reopen): its old children are over."""
    control = control_of(state)
    active = tuple(child for child in control.active if child.step_id != step_id)
    asking = tuple(child for child in control.asking if child.step_id != step_id)
    if len(active) == len(control.active) and len(asking) == len(control.asking):
        return state
    control = replace(control, active=active)
    if len(asking) != len(control.asking):
        control = control.with_tree(asking=asking)
    return with_control(state, control)


def active_count(state: RunState) -> int:
    """Children running now (or asked of the root): those of agent loops that have not ended
    (a loop that ended cancelled its children; their late reports are stale)."""
    ended = {agent.step_id for agent in state.dynamic.agents if agent.phase == "ended"}
    control = control_of(state)
    return sum(1 for child in (*control.active, *control.asking) if child.step_id not in ended)


def active_child(state: RunState, step_id: str, turn: int, index: int) -> ActiveChild | None:
    """The running child of tool call `index` of `turn` of `step_id`, if it is one."""
    for child in control_of(state).active:
        if (child.step_id, child.turn, child.index) == (step_id, turn, index):
            return child
    return None


def cancel_children(state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
    """The loop ended: cancel its children still running (a descendant also tells the root
    to stop counting them)."""
    return tuple(
        CancelChild(
            run_id=state.run_id,
            child_run_id=child.child_run_id,
            at_ms=child.at_ms,
            reason=f"cancelled by parent run {state.run_id!r}: agent loop {step_id!r} ended",
            seed=state.seed,
        )
        for child in control_of(state).active
        if child.step_id == step_id
    ) + tuple(
        release(state, step_id, child.child_run_id, child.at_ms)
        for child in control_of(state).active
        if child.step_id == step_id and not is_root(state)
    )


# -- quotas per root run -----------------------------------------------------------------------
#
# The root run counts its whole tree. A descendant's request that passes the descendant's own
# rules is recorded (`control.child.asked`) and asked of the root (`AskChild`); the root's
# agent loop decides it on the root's own counters (`control.tree.granted` or `.refused`) and
# answers (`AnswerChild`), which the descendant records as `control.child.started` or
# `.refused`. When the child ends (or its loop ends) the descendant sends `ReleaseChild`.
# Each hop is a command with a message id derived from the child's id, and each side decides a
# duplicate alike, so a resume may send any of them again.


def tree_refusal(root: RunState, generation: int, writes: bool, at_ms: int) -> Refused | None:
    """The first of the root's quotas a new child anywhere in its tree would pass, if any:
    counted over the root's own children and those the root granted its descendants."""
    assert root.workflow is not None and is_root(root)
    quotas = child_runs_of(root.workflow)
    if not quotas.allow:
        message = f"the root run's workflow {root.workflow.name!r} may not start child runs"
        return Refused(rule="child_runs.allow", message=message)
    control = control_of(root)
    if generation - root.depth > quotas.max_generations:
        what = f"a child would be generation {generation - root.depth} of root run {root.run_id!r}"
        return _quota("max_generations", what, quotas.max_generations)
    active = active_count(root) + len(control.tree_active)
    if active >= quotas.max_active:
        what = f"{active} child runs are running in root run {root.run_id!r}'s tree"
        return _quota("max_active", what, quotas.max_active)
    recent = len(recent_starts(control, at_ms)) + len(_tree_recent(control, at_ms))
    if recent >= quotas.max_starts_per_minute:
        what = f"{recent} child runs started within the last minute in the root run's tree"
        return _quota("max_starts_per_minute", what, quotas.max_starts_per_minute)
    written = control.definitions + control.tree_definitions
    if writes and written >= quotas.max_definitions:
        what = f"the agents of the root run's tree wrote {written} workflow definitions"
        return _quota("max_definitions", what, quotas.max_definitions)
    return None


def _tree_recent(control: ControlState, at_ms: int) -> tuple[int, ...]:
    return tuple(t for t in control.tree_recent_ms if at_ms - t < limits.control_window_ms)


def tree_child(root: RunState, child_run_id: str) -> TreeChild | None:
    """The root's verdict on a descendant's child it still counts or recently refused."""
    tree = control_of(root).tree_state()
    return next((c for c in (*tree.active, *tree.refused) if c.child_run_id == child_run_id), None)


def evolve_tree(
    root: RunState, event: ControlTreeGranted | ControlTreeRefused | ControlTreeReleased
) -> RunState:
    """The root's tree counters after its verdict or a release."""
    control = control_of(root)
    match event:
        case ControlTreeGranted():
            counted = TreeChild(
                child_run_id=event.child_run_id, requester_run_id=event.requester_run_id,
                requester_step_id=event.requester_step_id, turn=event.turn, index=event.index,
                writes=event.writes, at_ms=event.at_ms,
            )  # fmt: skip
            control = control.with_tree(
                active=(*control.tree_active, counted),
                definitions=control.tree_definitions + (1 if event.writes else 0),
                recent_ms=(*_tree_recent(control, event.at_ms), event.at_ms),
            )
            assert len(control.tree_active) <= limits.control_active_children_max
            assert len(control.tree_recent_ms) <= limits.control_starts_per_minute_max
        case ControlTreeRefused():
            refusal = TreeChild(
                child_run_id=event.child_run_id, requester_run_id=event.requester_run_id,
                requester_step_id=event.requester_step_id, turn=event.turn, index=event.index,
                rule=event.rule, message=event.message, at_ms=event.at_ms,
            )  # fmt: skip
            kept = (*control.tree_state().refused, refusal)[-limits.control_tree_refusals_kept :]
            control = replace(control, refused=control.refused + 1).with_tree(refused=kept)
        case ControlTreeReleased():
            active = tuple(c for c in control.tree_active if c.child_run_id != event.child_run_id)
            control = control.with_tree(active=active)
    return with_control(root, control)


def ask(state: RunState, child: ActiveChild) -> SendCommand:
    """Ask the root to count `child` (a descendant's request that passed its own rules)."""
    root, root_step = root_of(state, child.step_id)
    command = AskChild(
        run_id=root, at_ms=child.at_ms, step_id=root_step, child_run_id=child.child_run_id,
        requester_run_id=state.run_id, requester_step_id=child.step_id, turn=child.turn,
        index=child.index, generation=state.depth + 1, writes=bytes(child.definition) != b"null",
    )  # fmt: skip
    msg_id = in_life(f"ask:{child.child_run_id}", state.seed)
    return SendCommand(run_id=state.run_id, command=command, msg_id=msg_id)


def answer(root: RunState, verdict: TreeChild) -> SendCommand:
    """The root's verdict, sent to the descendant that asked (again on resume: the message id
    dedupes it, and the descendant ignores an answer it no longer waits for)."""
    command = AnswerChild(
        run_id=verdict.requester_run_id, at_ms=verdict.at_ms, step_id=verdict.requester_step_id,
        child_run_id=verdict.child_run_id, turn=verdict.turn, index=verdict.index,
        granted=not verdict.rule, rule=verdict.rule, message=verdict.message,
    )  # fmt: skip
    msg_id = in_life(f"answer:{verdict.child_run_id}", root.seed)
    return SendCommand(run_id=root.run_id, command=command, msg_id=msg_id)


def answers(root: RunState) -> tuple[SendCommand, ...]:
    """Every verdict the root may owe (resume: an answer lost in a crash is sent again)."""
    tree = control_of(root).tree_state()
    return tuple(answer(root, verdict) for verdict in (*tree.active, *tree.refused))


def release(state: RunState, step_id: str, child_run_id: str, at_ms: int) -> SendCommand:
    """Tell the root to stop counting `child_run_id` (it ended, or its loop did)."""
    root, root_step = root_of(state, step_id)
    command = ReleaseChild(run_id=root, at_ms=at_ms, step_id=root_step, child_run_id=child_run_id)
    msg_id = in_life(f"release:{child_run_id}", state.seed)
    return SendCommand(run_id=state.run_id, command=command, msg_id=msg_id)
