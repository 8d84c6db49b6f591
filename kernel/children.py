"""The child side of sub-workflows: a child run's id, and what a child tells its parent.

A `sub_workflow` step (steps/sub_workflow.py) starts a child run whose id is derived from the
parent, the step and the attempt, so starting it again is idempotent. The child carries the
link in `run.started` (`parent_run_id`, `parent_step_id`, `depth`, `detached`) and reports to
its parent through effects: an attached child when it ends, a detached one when it started.
Pure: no I/O; the shell turns the effects into `RecordChild` commands.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from kernel import limits
from kernel.commands import ChildStatus, StartRun
from kernel.effects import AnyEffect, ReportToParent
from kernel.state import RunState

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_CHARS = 16


def child_run_id(run_id: str, step_id: str, attempt: int) -> str:
    """The run id of the child started by `attempt` of a parent's step: `<run>-<step>-<attempt>`
    when that reads back unambiguously, else that (made safe, shortened to fit) followed by a
    digest of the three parts, so two different triples never give the same id.
    """
    assert attempt >= 1, f"attempt {attempt} must be >= 1"
    plain = f"{run_id}-{step_id}-{attempt}"
    ambiguous = "-" in run_id or "-" in step_id or _UNSAFE.search(step_id) is not None
    if not ambiguous and _UNSAFE.search(run_id) is None and len(plain) <= limits.run_id_length_max:
        return plain
    parts = f"{run_id}\x00{step_id}\x00{attempt}".encode()
    digest = hashlib.blake2b(parts, digest_size=_DIGEST_CHARS // 2).hexdigest()
    keep = limits.run_id_length_max - _DIGEST_CHARS - 1
    result = f"{_UNSAFE.sub('_', plain)[:keep]}-{digest}"
    assert len(result) <= limits.run_id_length_max
    return result


def _report(state: RunState, status: ChildStatus) -> ReportToParent:
    assert state.parent_run_id is not None
    error = state.error.message if state.error is not None else ""
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
    if state.status == "cancelled":
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
    if state.status in ("completed", "failed", "compensate_failed", "cancelled"):
        return report_ended(state)
    return ()
