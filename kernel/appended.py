"""Appended steps: a run may gain steps while it runs. Run-level rules only; pure, no I/O.

A step type may append steps to its run (a planner appends its plan), with ids namespaced
`<owner>.<id>`; the owner's `DynamicParent` record (kernel.step_states) names them. Appended
steps are ordinary steps: every run rule runs them (attempts, retries, timeouts, skip_if,
on_failure, compensation). The run tells the owner when they are all done (`OwnedStepsDone`)
or when one failed for good (`OwnedStepFailed`); what that means is the owner type's rule.

A step type may also run *items* that are not steps (a map's items, an agent loop's turns and
tool calls) under task ids `<owner>.<key>`; their results and timers are routed to the owner.
"""

from __future__ import annotations

import msgspec

from kernel import limits
from kernel.state import DONE_STEP_STATUSES, RunState, StepState
from kernel.step_states import DynamicParent
from kernel.workflow import StepDef

replace = msgspec.structs.replace
LIVE = ("scheduled", "running")


def parent_id(step_id: str) -> str | None:
    """The owner of an appended step or item (`p` of `p.x`), None for a step of the workflow."""
    assert step_id, "a step has an id"
    parent, _, _ = step_id.rpartition(".")
    return parent or None


def local_id(step_id: str) -> str:
    """An appended step's id in its owner's namespace (`x` of `p.x`)."""
    local = step_id.rpartition(".")[2]
    assert local, f"{step_id!r} ends in a local id"
    return local


def is_appended(step_id: str) -> bool:
    """Whether a step id was appended while the run ran ('.' is reserved for namespaces)."""
    return "." in step_id


def parent_record(state: RunState, step_id: str) -> DynamicParent | None:
    """The record of the steps `step_id` appended, if it appended any."""
    for record in state.dynamic.parents:
        if record.step_id == step_id:
            return record
    return None


def with_parent(state: RunState, record: DynamicParent) -> RunState:
    """`state` with the record of `record.step_id` replaced (or added)."""
    assert state.index_of(record.step_id) >= 0, f"no step {record.step_id!r}"
    others = tuple(r for r in state.dynamic.parents if r.step_id != record.step_id)
    assert len(others) + 1 <= len(state.steps), "at most one record per step"
    return replace(state, dynamic=replace(state.dynamic, parents=(*others, record)))


def append_steps(
    state: RunState, parent: str, attempt: int, steps: tuple[StepDef, ...]
) -> RunState:
    """`state` with `steps` appended as owned by `parent` (whose attempt no longer has a
    deadline: its timeout bounds the attempt that produced them, not their run)."""
    index = state.index_of(parent)
    assert index >= 0, f"run {state.run_id!r} has no step {parent!r}"
    assert all(step.id.startswith(parent + ".") for step in steps), "children are namespaced"
    assert not set(state.step_ids) & {step.id for step in steps}, "children are new steps"
    record = parent_record(state, parent) or DynamicParent(step_id=parent)
    record = replace(record, attempt=attempt, children=tuple(step.id for step in steps))
    parent_step = replace(state.steps[index], deadline_ms=None)
    steps_now = (*state.steps[:index], parent_step, *state.steps[index + 1 :])
    assert state.dynamic.steps_added + len(steps) <= limits.dynamic_steps_per_run_max
    grown = replace(
        state,
        step_ids=(*state.step_ids, *(step.id for step in steps)),
        step_defs=(*state.step_defs, *steps),
        steps=(*steps_now, *(StepState(step_id=step.id) for step in steps)),
        dynamic=replace(state.dynamic, steps_added=state.dynamic.steps_added + len(steps)),
    )
    return with_parent(grown, record)


def runs_appended(state: RunState, step_id: str, attempt: int) -> bool:
    """Whether `attempt` of the step appended steps that run now (its task is over: a late
    report of that attempt is stale)."""
    assert attempt >= 0, f"attempt {attempt} of {step_id!r}"
    record = parent_record(state, step_id)
    return record is not None and record.attempt == attempt


def item_owner(state: RunState, step_id: str) -> tuple[str, str] | None:
    """(owner, key) when `step_id` names an item of a step (`<owner>.<key>`, not a step)."""
    if not is_appended(step_id) or state.index_of(step_id) >= 0:
        return None
    owner, _, key = step_id.rpartition(".")
    if state.step_def(owner) is None:
        return None
    assert key and owner, f"item id {step_id!r} is <owner>.<key>"
    return owner, key


def root_input(state: RunState, step_def: StepDef) -> msgspec.Raw | None:
    """An appended root step gets its owner's input; None for a step of the workflow."""
    parent = parent_id(step_def.id)
    if parent is None:
        return None
    parent_step = state.step(parent)
    assert parent_step is not None, f"{step_def.id!r} has no parent step"
    return parent_step.input


def handlers_among(state: RunState, children: tuple[str, ...]) -> set[str]:
    """The children that are handlers (named by a sibling's on_failure or compensate)."""
    handlers: set[str] = set()
    for child in children:
        step_def = state.step_def(child)
        assert step_def is not None, f"no step {child!r}"
        handlers.update(name for name in (step_def.on_failure, step_def.compensate) if name)
    return handlers


def owners(state: RunState) -> tuple[str, ...]:
    """Every step that appended steps to the run, in the order they first did."""
    found = tuple(record.step_id for record in state.dynamic.parents)
    assert len(found) == len(set(found)), "one record per owner"
    return found


def settled(state: RunState, owner: str) -> bool:
    """Whether `owner` is live and its appended steps (handlers aside) are all done."""
    record = parent_record(state, owner)
    step = state.step(owner)
    assert record is not None and step is not None, f"{owner!r} appended no steps"
    if record.attempt == 0 or step.attempt != record.attempt or step.status not in LIVE:
        return False
    handlers = handlers_among(state, record.children)
    children = [state.step(child) for child in record.children if child not in handlers]
    return all(child is not None and child.status in DONE_STEP_STATUSES for child in children)


def live_owner(state: RunState, step_id: str) -> str | None:
    """The owner of appended step `step_id` while the owner's attempt that appended it is live
    (None for a step of the workflow, or when that owner already ended)."""
    parent = parent_id(step_id)
    if parent is None:
        return None
    record = parent_record(state, parent)
    step = state.step(parent)
    if record is None or step is None or step.status not in LIVE or step.attempt != record.attempt:
        return None
    return parent


def finished(step: StepState) -> bool:
    """Whether a step no longer holds its run open: done, or an appended step that failed (its
    failure went to its owner, whose own status decides what follows)."""
    return step.status in DONE_STEP_STATUSES or (step.status == "failed" and "." in step.step_id)
