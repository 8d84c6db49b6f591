"""The live task attempts of a run: what holds a slot of a task type's concurrency limiter.

A task attempt is live while its run would publish its message again after a restart: the
task messages `resume(state)` gives, whatever step type enqueues them (a task step, a map's
items, an agent loop's turns and tool calls, a planner's call). An attempt that ended (done,
failed, waiting to retry, cancelled with its run) is no longer among them, so the engine
releases its slot (dagnats/runtime/admission_flow.py). Knows no step type. Pure.
"""

from __future__ import annotations

import msgspec

from kernel.effects import EnqueueTask
from kernel.react import resume
from kernel.state import RunState, is_terminal


class LiveTask(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """One live attempt of a task: the step (or item: `<step>.<n>`), the attempt, the type."""

    step_id: str
    attempt: int
    task: str


def live_tasks(state: RunState, task_types: frozenset[str]) -> frozenset[LiveTask]:
    """The live attempts of the run whose task type is one of `task_types`."""
    if not task_types or is_terminal(state) or state.status in ("new", "pending", "scheduled"):
        return frozenset()
    found = frozenset(
        LiveTask(step_id=effect.step_id, attempt=effect.attempt, task=effect.task)
        for effect in resume(state)
        if isinstance(effect, EnqueueTask) and effect.task in task_types
    )
    assert all(each.attempt >= 1 for each in found), found
    return found


def live_attempts(state: RunState) -> frozenset[tuple[str, int]]:
    """The (step or item, attempt) of every live task attempt of the run, of any type (one
    `resume` for all the attempts a caller checks)."""
    if is_terminal(state) or state.status in ("new", "pending", "scheduled"):
        return frozenset()
    return frozenset(
        (effect.step_id, effect.attempt)
        for effect in resume(state)
        if isinstance(effect, EnqueueTask)
    )


def is_live(state: RunState, step_id: str, attempt: int) -> bool:
    """Whether this attempt of a task (of any type) is still live in its run."""
    return (step_id, attempt) in live_attempts(state)
