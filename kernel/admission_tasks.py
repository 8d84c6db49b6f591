"""Flow control, the run's side: a task attempt held back by a limiter, and let go.

A task of a workflow with `rate_limits` or `max_task_concurrency` is asked of its limiters
(kernel/admission_flow.py) by the engine before it is published. An attempt that must wait is
recorded in the run as `task.deferred` (the step stays `scheduled`; `run show` shows it as
`rate_limited` or waiting for a slot): a rate-limited one arms a durable timer for the time its
tokens are there, whose firing (`FireTimer` kind `task_release`) is `task.released`; one
waiting for a slot is released (`ReleaseTask`) when its limiter grants it. `task.released`
publishes the attempt's task again (the same message id), through its limiters once more,
which answer what they decided. Evolve, react and resume parts; decide is in
kernel/admission_run.py. Pure.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel.commands import FireTimer
from kernel.effects import AnyEffect, ArmTimer, EnqueueTask
from kernel.events import TaskDeferred, TaskReleased
from kernel.state import DeferredTask, RunState

TASK_RELEASE_KIND: Final = "task_release"
replace = msgspec.structs.replace


def evolve_deferral(state: RunState, event: TaskDeferred | TaskReleased) -> RunState:
    """Record or clear a deferral (one per step: a newer attempt's replaces the older)."""
    kept = tuple(d for d in state.deferred if d.step_id != event.step_id)
    if isinstance(event, TaskReleased):
        return replace(state, deferred=kept)
    deferral = DeferredTask(
        step_id=event.step_id, attempt=event.attempt, reason=event.reason,
        limiter_id=event.limiter_id, until_ms=event.until_ms,
    )  # fmt: skip
    return replace(state, deferred=(*kept, deferral))


def deferral_of(state: RunState, step_id: str, attempt: int) -> DeferredTask | None:
    for deferral in state.deferred:
        if deferral.step_id == step_id and deferral.attempt == attempt:
            return deferral
    return None


def release_timer_id(step_id: str, attempt: int) -> str:
    return f"release.{step_id}.{attempt}"


def release_timer(state: RunState, deferral: DeferredTask) -> ArmTimer:
    assert deferral.until_ms is not None, deferral
    command = FireTimer(
        run_id=state.run_id, at_ms=deferral.until_ms, kind=TASK_RELEASE_KIND,
        timer_id=release_timer_id(deferral.step_id, deferral.attempt),
        step_id=deferral.step_id, attempt=deferral.attempt,
    )  # fmt: skip
    return ArmTimer(
        run_id=state.run_id, timer_id=command.timer_id, fire_at_ms=deferral.until_ms,
        command=command,
    )  # fmt: skip


def react_deferred(state: RunState, event: TaskDeferred) -> tuple[AnyEffect, ...]:
    """A rate-limited attempt arms its release timer (one waiting for a slot arms none)."""
    deferral = deferral_of(state, event.step_id, event.attempt)
    if deferral is None or deferral.until_ms is None:
        return ()
    return (release_timer(state, deferral),)


def released_tasks(effects: tuple[AnyEffect, ...], event: TaskReleased) -> tuple[AnyEffect, ...]:
    """Of a run's outstanding effects (`resume`), the released attempt's task message."""
    return tuple(
        effect
        for effect in effects
        if isinstance(effect, EnqueueTask)
        and effect.step_id == event.step_id
        and effect.attempt == event.attempt
    )


def resume_deferred(state: RunState) -> tuple[AnyEffect, ...]:
    """After a restart: each rate-limited attempt arms its release timer again."""
    return tuple(release_timer(state, d) for d in state.deferred if d.until_ms is not None)


def show_deferral(deferral: DeferredTask) -> str:
    """What `run show` says of a deferred step."""
    if deferral.reason == "rate_limited":
        return "rate_limited"
    return "waiting_for_slot"
