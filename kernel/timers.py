"""Durable timers of a run: their stable ids and the effect that arms one.

A timer's firing is a `FireTimer` command of the run. Ids are stable, so arming the same
timer twice replaces it and a repeated firing decides to nothing. The run's own timers (its
timeout, each attempt's deadline and retry) are armed by `kernel.react`; a step type's own
timers (kind "step", ids `step.<step>.<attempt>...`) by its module. Pure: no I/O.
"""

from __future__ import annotations

import zlib
from typing import Final

from kernel import limits
from kernel.commands import FireTimer, TimerKind
from kernel.effects import ArmTimer
from kernel.state import RunState

RUN_TIMEOUT_TIMER_ID: Final = "run_timeout"
SEED_MASK: Final = 0x7FFF_FFFF_FFFF_FFFF


def step_timeout_timer_id(step_id: str, attempt: int) -> str:
    """The id of an attempt's deadline timer."""
    assert attempt >= 1, f"attempt {attempt} of {step_id!r} must be >= 1"
    return f"step_timeout.{step_id}.{attempt}"


def retry_timer_id(step_id: str, attempt: int) -> str:
    """The id of the timer that starts `attempt` (a retry) when it is due."""
    assert 2 <= attempt <= limits.attempt_number_max, f"retry attempt {attempt} of {step_id!r}"
    return f"retry.{step_id}.{attempt}"


def step_timer_id(step_id: str, attempt: int) -> str:
    """The id of a step type's own timer (one per attempt), e.g. a sleep's wake-up."""
    assert attempt >= 1, f"attempt {attempt} of {step_id!r} must be >= 1"
    return f"step.{step_id}.{attempt}"


def timer_seed(run_seed: int, timer_id: str) -> int:
    """The seed a timer's FireTimer carries (for jitter of the retry it may cause): derived from
    the run's seed and the timer id, so it differs per timer and replays identically."""
    assert timer_id, "a timer has an id"
    seed = (run_seed ^ zlib.crc32(timer_id.encode())) & SEED_MASK
    assert 0 <= seed <= SEED_MASK
    return seed


def arm_timer(
    state: RunState,
    timer_id: str,
    kind: TimerKind,
    fire_at_ms: int,
    *,
    step_id: str = "",
    attempt: int = 0,
) -> ArmTimer:
    """The effect arming a durable timer whose firing is a FireTimer command of the run."""
    assert state.run_id and timer_id, (state.run_id, timer_id)
    assert kind == "run_timeout" or step_id, f"a {kind} timer names its step"
    command = FireTimer(
        run_id=state.run_id,
        at_ms=fire_at_ms,
        seed=timer_seed(state.seed, timer_id),
        timer_id=timer_id,
        kind=kind,
        step_id=step_id,
        attempt=attempt,
    )
    return ArmTimer(run_id=state.run_id, timer_id=timer_id, fire_at_ms=fire_at_ms, command=command)


def step_timeout_timer(state: RunState, step_id: str) -> ArmTimer | None:
    """The timer of the current attempt's deadline, if the step has one."""
    step = state.step(step_id)
    assert step is not None, f"no step {step_id!r}"
    if step.deadline_ms is None:
        return None
    timer_id = step_timeout_timer_id(step_id, step.attempt)
    return arm_timer(
        state, timer_id, "step_timeout", step.deadline_ms, step_id=step_id, attempt=step.attempt
    )
