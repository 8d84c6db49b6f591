"""Dynamic steps: the kernel rules for steps a run gains while it runs. Pure: no I/O, no clock.

A *parent* (a planner) appends its plan to the run as ordinary steps, ids namespaced
`<parent>.<id>` (the namespace is the parent link; the parent's `DynamicParent` record lists
its children). Every generic rule runs them: attempts, retries, timeouts, skip_if, on_failure,
compensation. A plan's root steps get the parent's input. The parent stays active until every
child is done, then completes with the outputs of its terminal children as an object keyed by
their ids in the plan. A child that fails for good (and is not recovered) fails its parent for
good: the parent's pending children are skipped, and the parent's own on_failure (or the run's
failure) follows.

A *map* runs items that are not steps (`kernel.dynamic_state.MapState`); a worker's result or a
timer for an item id `<map>.<index>` is routed to the map's step type (`route_item`).

The state types live in `kernel.dynamic_state`; this module holds the evolve helpers and the
decide rules, which `kernel.decide` calls at its few dynamic points.
"""

from __future__ import annotations

import msgspec

from kernel import registry
from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, TaskStarted
from kernel.dynamic_state import DynamicParent, MapState
from kernel.events import ErrorInfo, StepSkipped
from kernel.payloads import compose_object
from kernel.registry import DecideContext
from kernel.state import DONE_STEP_STATUSES, RunState, StepState
from kernel.workflow import StepDef

replace = msgspec.structs.replace
LIVE = ("scheduled", "running")


def parent_id(step_id: str) -> str | None:
    """The parent of a dynamic step (`p` of `p.x`), None for a step of the workflow."""
    parent, _, _ = step_id.rpartition(".")
    return parent or None


def local_id(step_id: str) -> str:
    """A dynamic step's id in its plan (`x` of `p.x`)."""
    return step_id.rpartition(".")[2]


def is_dynamic(step_id: str) -> bool:
    """Whether a step was appended while the run ran ('.' is reserved for namespaces)."""
    return "." in step_id


# -- evolve helpers ------------------------------------------------------------------------


def parent_record(state: RunState, step_id: str) -> DynamicParent | None:
    for record in state.dynamic.parents:
        if record.step_id == step_id:
            return record
    return None


def _with_parent(state: RunState, record: DynamicParent) -> RunState:
    others = tuple(r for r in state.dynamic.parents if r.step_id != record.step_id)
    return replace(state, dynamic=replace(state.dynamic, parents=(*others, record)))


def append_steps(
    state: RunState, parent: str, attempt: int, steps: tuple[StepDef, ...]
) -> RunState:
    """`state` with `steps` appended as children of `parent` (whose attempt no longer has a
    deadline: its timeout bounds the planning, not the plan)."""
    index = state.index_of(parent)
    assert index >= 0, f"run {state.run_id!r} has no step {parent!r}"
    assert all(step.id.startswith(parent + ".") for step in steps), "children are namespaced"
    assert not set(state.step_ids) & {step.id for step in steps}, "children are new steps"
    record = parent_record(state, parent) or DynamicParent(step_id=parent)
    record = replace(record, attempt=attempt, children=tuple(step.id for step in steps))
    parent_step = replace(state.steps[index], deadline_ms=None)
    steps_now = (*state.steps[:index], parent_step, *state.steps[index + 1 :])
    grown = replace(
        state,
        step_ids=(*state.step_ids, *(step.id for step in steps)),
        step_defs=(*state.step_defs, *steps),
        steps=(*steps_now, *(StepState(step_id=step.id) for step in steps)),
        dynamic=replace(state.dynamic, steps_added=state.dynamic.steps_added + len(steps)),
    )
    return _with_parent(grown, record)


def record_rejection(
    state: RunState, parent: str, attempt: int, problems: tuple[str, ...]
) -> RunState:
    """`state` remembering why `attempt` of `parent` had its plan rejected."""
    record = parent_record(state, parent) or DynamicParent(step_id=parent)
    record = replace(record, rejected_attempt=attempt, previous_errors=problems)
    return _with_parent(state, record)


def map_of(state: RunState, step_id: str) -> MapState | None:
    for map_state in state.dynamic.maps:
        if map_state.step_id == step_id:
            return map_state
    return None


def with_map(state: RunState, map_state: MapState) -> RunState:
    """`state` with the map of `map_state.step_id` replaced (or added)."""
    maps = state.dynamic.maps
    for index, existing in enumerate(maps):
        if existing.step_id == map_state.step_id:
            maps = (*maps[:index], map_state, *maps[index + 1 :])
            break
    else:
        maps = (*maps, map_state)
    return replace(state, dynamic=replace(state.dynamic, maps=maps))


# -- decide rules --------------------------------------------------------------------------


def route_item(context: DecideContext, command: AnyCommand) -> bool:
    """Hand a task result or timer of a map item (`<map>.<key>`, not a step) to its map.

    Returns:
        Whether the command was an item's (then the map decided it).
    """
    if not isinstance(command, TaskStarted | CompleteTask | FailTask | FireTimer):
        return False
    state = context.state
    step_id = command.step_id
    if not is_dynamic(step_id) or state.index_of(step_id) >= 0:
        return False
    owner, _, key = step_id.rpartition(".")
    owner_def = state.step_def(owner)
    if owner_def is None:
        return False
    step_type = registry.get(owner_def.type)
    if not step_type.has_items:
        return False
    step_type.item(context, owner, key, command)
    return True


def root_input(state: RunState, step_def: StepDef) -> msgspec.Raw | None:
    """A plan's root step gets its parent's input; None for a step of the workflow."""
    parent = parent_id(step_def.id)
    if parent is None:
        return None
    parent_step = state.step(parent)
    assert parent_step is not None, f"{step_def.id!r} has no parent step"
    return parent_step.input


def settle(context: DecideContext) -> bool:
    """Complete every live parent whose children are all done. Returns whether one did."""
    settled = False
    for record in context.state.dynamic.parents:
        state = context.state
        step = state.step(record.step_id)
        assert step is not None
        if record.attempt == 0 or step.attempt != record.attempt or step.status not in LIVE:
            continue
        handlers = _handlers_among(state, record.children)
        children = [state.step(child) for child in record.children if child not in handlers]
        if all(child is not None and child.status in DONE_STEP_STATUSES for child in children):
            context.complete(record.step_id, plan_output(state, record))
            settled = True
            if context.state.status != "running":
                break
    return settled


def _handlers_among(state: RunState, children: tuple[str, ...]) -> set[str]:
    """The children that are handlers (named by a sibling's on_failure or compensate)."""
    handlers: set[str] = set()
    for child in children:
        step_def = state.step_def(child)
        assert step_def is not None
        handlers.update(name for name in (step_def.on_failure, step_def.compensate) if name)
    return handlers


def finished(step: StepState) -> bool:
    """Whether a step no longer holds its run open: done, or a dynamic step that failed (its
    failure failed its parent, whose own status decides what follows)."""
    return step.status in DONE_STEP_STATUSES or (step.status == "failed" and "." in step.step_id)


def plan_output(state: RunState, record: DynamicParent) -> msgspec.Raw:
    """The outputs of a plan's terminal steps (no sibling depends on them, not handlers),
    as an object keyed by their ids in the plan."""
    used = _handlers_among(state, record.children)
    for child in record.children:
        step_def = state.step_def(child)
        assert step_def is not None
        used.update(step_def.depends_on)
    pairs = []
    for child in record.children:
        if child not in used:
            step = state.step(child)
            assert step is not None
            pairs.append((local_id(child), step.output))
    return compose_object(pairs)


def child_failed(context: DecideContext, step_id: str, error: ErrorInfo) -> bool:
    """A dynamic step failed for good and nothing recovers it: fail its parent for good (its
    pending children are skipped first). Returns False for a step of the workflow."""
    parent = parent_id(step_id)
    if parent is None:
        return False
    state = context.state
    record = parent_record(state, parent)
    step = state.step(parent)
    if record is None or step is None or step.status not in LIVE or step.attempt != record.attempt:
        return True  # its parent already ended: nothing waits for this step
    _skip_pending_children(context, parent, f"step {step_id!r} of its plan failed")
    message = f"step {local_id(step_id)!r} of the plan failed: {error.message}"
    context.fail(parent, ErrorInfo(message=message, kind=error.kind), retryable=False)
    return True


def _skip_pending_children(context: DecideContext, parent: str, reason: str) -> None:
    state = context.state
    handlers = {
        name
        for step_def in state.step_defs
        for name in (step_def.on_failure, step_def.compensate)
        if name
    }
    prefix = parent + "."
    pending = [
        step.step_id
        for step in state.steps
        if step.status == "pending"
        and step.step_id.startswith(prefix)
        and step.step_id not in handlers
    ]
    for step_id in pending:
        context.emit(StepSkipped(step_id=step_id, reason=reason, at_ms=context.at_ms))
