"""A run's links to other runs: the parent it reports to, and the successor it continued as.

A child run (started by a parent's step, e.g. `sub_workflow`) carries the link in `run.started`
(`parent_run_id`, `parent_step_id`, `depth`, `detached`) and reports to its parent through
effects: an attached child when it ends, a detached one when it started. A run that ended as
`continued_as_new` starts its successor (`StartContinuation`), again after a restart. These are
the run's own rules, whatever step types it has; the decisions that create the links belong to
the step types (steps/sub_workflow.py, steps/continuation.py). Pure: no I/O.
"""

from __future__ import annotations

import msgspec

from kernel import limits
from kernel.commands import ChildStatus, StartRun
from kernel.effects import AnyEffect, ReportToParent, StartContinuation
from kernel.state import RunState
from kernel.timers import timer_seed


def _report(state: RunState, status: ChildStatus) -> ReportToParent:
    assert state.parent_run_id is not None
    error = state.error.message if state.error is not None else ""
    assert state.parent_step_id, f"child run {state.run_id!r} names its parent step"
    if status == "cancelled":
        error = error or f"child run {state.run_id!r} was cancelled"
    at_ms = state.ended_at_ms if state.ended_at_ms is not None else state.started_at_ms
    return ReportToParent(
        run_id=state.chain_root or state.run_id,  # a continued child: the id its parent knows
        parent_run_id=state.parent_run_id,
        parent_step_id=state.parent_step_id,
        status=status,
        output=state.output if status == "completed" else msgspec.Raw(b"null"),
        error=error,
        at_ms=at_ms,
        seed=state.seed,
    )


def _is_child(state: RunState) -> bool:
    return state.parent_run_id is not None and state.parent_step_id != ""


def report_started(state: RunState) -> tuple[AnyEffect, ...]:
    """After `run.started`: a detached child tells its parent it is running."""
    if _is_child(state) and state.detached:
        return (_report(state, "started"),)
    return ()


def report_ended(state: RunState) -> tuple[AnyEffect, ...]:
    """After the run's terminal event: an attached child tells its parent how it ended."""
    if not _is_child(state) or state.detached or state.status == "continued_as_new":
        return ()  # a continued child: the run it continued as reports
    if state.status == "completed":
        return (_report(state, "completed"),)
    if state.status in ("cancelled", "terminated"):
        return (_report(state, "cancelled"),)
    assert state.status in ("failed", "compensate_failed"), state.status
    return (_report(state, "failed"),)


def repeat_start(state: RunState, command: StartRun) -> tuple[AnyEffect, ...]:
    """A parent starts a child that exists already (its resume after a restart): the child
    reports again what its parent may have missed (its start, or its end)."""
    if state.status == "new" or not _is_child(state):
        return ()
    if (state.parent_run_id, state.parent_step_id) != (
        command.parent_run_id,
        command.parent_step_id,
    ):
        return ()
    if state.detached:
        return report_started(state)
    if state.status in ("completed", "failed", "compensate_failed", "cancelled", "terminated"):
        return report_ended(state)
    return ()


def root_of(state: RunState) -> str:
    """The id of the first run of the run's continue-as-new chain (itself when it is none)."""
    return state.chain_root or state.run_id


def successor_start(state: RunState) -> tuple[AnyEffect, ...]:
    """The start of the run a `continued_as_new` run continued as (none for any other run)."""
    if state.status != "continued_as_new" or state.continued_as is None:
        return ()
    assert state.workflow is not None
    assert state.continued_as != state.run_id, "a run does not continue as itself"
    assert state.chain_index + 1 <= limits.continue_as_new_chain_max, "the step bounds chains"
    workflow = state.continued_workflow or state.workflow.name
    same = workflow == state.workflow.name
    start = StartContinuation(
        run_id=state.run_id,
        new_run_id=state.continued_as,
        workflow=workflow,
        definition=state.workflow if same else None,
        input=state.output,
        chain_root=root_of(state),
        chain_index=state.chain_index + 1,
        parent_run_id=state.parent_run_id,
        parent_step_id=state.parent_step_id,
        depth=state.depth,
        detached=state.detached,
        at_ms=state.ended_at_ms or state.started_at_ms,
        seed=timer_seed(state.seed, state.continued_as),
    )
    return (start,)
