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
from kernel.control_events import ControlChildEnded, ControlChildRefused, ControlChildStarted
from kernel.effects import AnyEffect, CancelChild
from kernel.errors import WorkflowInvalidError
from kernel.event_base import NULL
from kernel.state import RunState
from kernel.step_states import NO_CONTROL, ActiveChild, ControlState
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
    refused = _over_quota(state, quotas, at_ms, bool(request.definition != NULL))
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
    state: RunState, event: ControlChildStarted | ControlChildRefused | ControlChildEnded
) -> RunState:
    """The run's control counters after one of the control plane's events."""
    control = control_of(state)
    match event:
        case ControlChildStarted():
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
            control = replace(control, refused=control.refused + 1)
        case ControlChildEnded():
            active = tuple(c for c in control.active if c.child_run_id != event.child_run_id)
            assert len(active) == len(control.active) - 1, f"{event.child_run_id} was not active"
            control = replace(control, active=active)
    return with_control(state, control)


def drop_step(state: RunState, step_id: str) -> RunState:
    """Agent loop `step_id` starts afresh (a retry or a reopen): its old children are over."""
    control = control_of(state)
    active = tuple(child for child in control.active if child.step_id != step_id)
    if len(active) == len(control.active):
        return state
    return with_control(state, replace(control, active=active))


def active_count(state: RunState) -> int:
    """Children running now: those of agent loops that have not ended (a loop that ended
    cancelled its children; their late reports are stale)."""
    ended = {agent.step_id for agent in state.dynamic.agents if agent.phase == "ended"}
    return sum(1 for child in control_of(state).active if child.step_id not in ended)


def active_child(state: RunState, step_id: str, turn: int, index: int) -> ActiveChild | None:
    """The running child of tool call `index` of `turn` of `step_id`, if it is one."""
    for child in control_of(state).active:
        if (child.step_id, child.turn, child.index) == (step_id, turn, index):
            return child
    return None


def cancel_children(state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
    """The loop ended: cancel its children still running."""
    return tuple(
        CancelChild(
            run_id=state.run_id,
            child_run_id=child.child_run_id,
            at_ms=child.at_ms,
            reason=f"cancelled by parent run {state.run_id!r}: agent loop {step_id!r} ended",
        )
        for child in control_of(state).active
        if child.step_id == step_id
    )
