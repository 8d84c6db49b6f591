"""Admission, the run's side: a run held before its first step, and what lets it go on.

A run of a gated workflow (kernel/admission.py) or one started for later (`ScheduleRun`) is
recorded with `run.started` (its workflow and input, as every run) followed by `run.queued`:
its status is `pending` (waiting for a slot of its gate) or `scheduled` (waiting for
`run_at_ms`, through a durable timer whose firing is an `AdmitRun` command). `AdmitRun` with
the gate's verdict lets it go on (`run.admitted`, then its steps start), or holds it again as
pending. A start the gate skipped (a singleton key held) is recorded as cancelled, naming the
holder; a start whose input does not meet the workflow's `input_schema` as failed, with the
schema errors. A held run that is cancelled ends at once (no step ran).

`kernel/decide.py` calls in here; what the gate decides is the engine's to ask. Pure.
"""

from __future__ import annotations

from typing import Final, cast

import msgspec

from kernel import queries
from kernel.admission_tasks import TASK_RELEASE_KIND, deferral_of
from kernel.commands import (
    AdmissionVerdict,
    AdmitRun,
    AnyCommand,
    CancelRun,
    DeferTask,
    FireTimer,
    ReleaseTask,
    ScheduleRun,
    StartGated,
)
from kernel.effects import AnyEffect, ArmTimer
from kernel.events import (
    AnyEvent,
    ErrorInfo,
    RunAdmitted,
    RunCancelled,
    RunCancelRequested,
    RunQueued,
    TaskDeferred,
    TaskReleased,
)
from kernel.lifecycle import Builder, fail_run
from kernel.state import RunState

HELD_STATUSES: Final = frozenset({"pending", "scheduled"})
RUN_AT_TIMER_ID: Final = "run_at"
replace = msgspec.structs.replace


def hold(builder: Builder, command: StartGated | ScheduleRun) -> None:
    """After `run.started`: hold the run, end it (skipped, invalid), or leave it running."""
    assert builder.state.status == "running", builder.state.status
    if isinstance(command, ScheduleRun):
        builder.emit(
            RunQueued(reason="scheduled", run_at_ms=command.run_at_ms, at_ms=command.at_ms)
        )
        return
    apply_verdict(builder, command.verdict)


def apply_verdict(builder: Builder, verdict: AdmissionVerdict) -> None:
    """What a gate's verdict means for a run that is running (just started) or held."""
    at_ms = builder.at_ms
    held = builder.state.status in HELD_STATUSES
    match verdict.outcome:
        case "admitted":
            if held:
                builder.emit(RunAdmitted(at_ms=at_ms))
        case "pending":
            if builder.state.status != "pending":
                builder.emit(RunQueued(reason="pending", gate_id=verdict.gate_id, at_ms=at_ms))
        case "skipped":
            holder = verdict.holder_run_id
            builder.emit(
                RunQueued(reason="skipped", gate_id=verdict.gate_id, holder_run_id=holder,
                          at_ms=at_ms)
            )  # fmt: skip
            reason = f"skipped: singleton key held by run {holder}"
            builder.emit(RunCancelRequested(reason=reason, at_ms=at_ms))
            builder.emit(RunCancelled(reason=reason, at_ms=at_ms))
        case "invalid":
            if held:
                builder.emit(RunAdmitted(at_ms=at_ms))
            error = ErrorInfo(message=queries.truncate(verdict.reason), kind="invalid_input")
            fail_run(builder, error, failed_step_id="")
        case "unknown":
            raise AssertionError(f"run {builder.state.run_id!r}: no verdict to apply")


def admit(builder: Builder, command: AdmitRun) -> None:
    """A held run's gate granted it a slot, or its time came (no verdict: the workflow is not
    gated). Anything else than a held run decides nothing (a duplicate grant)."""
    if builder.state.status not in HELD_STATUSES:
        return
    verdict = command.verdict or AdmissionVerdict(outcome="admitted")
    apply_verdict(builder, verdict)


def cancel_held(builder: Builder, command: CancelRun) -> None:
    """A held run cancelled: it ends now (no step ran, nothing to compensate)."""
    if builder.state.status in HELD_STATUSES:
        reason = queries.truncate(command.reason)
        builder.emit(RunCancelled(reason=reason, at_ms=command.at_ms))


def react_held(state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
    """A scheduled run arms its start timer (a run_at in the past fires at once)."""
    if isinstance(event, RunQueued) and event.reason == "scheduled":
        return (run_at_timer(state),)
    return ()


def resume_held(state: RunState) -> tuple[AnyEffect, ...]:
    """After a restart: a scheduled run arms its timer again (arming replaces)."""
    if state.status == "scheduled":
        return (run_at_timer(state),)
    return ()


def run_at_timer(state: RunState) -> ArmTimer:
    assert state.run_at_ms is not None, f"run {state.run_id!r} is scheduled with no time"
    command = FireTimer(
        run_id=state.run_id, at_ms=state.run_at_ms, timer_id=RUN_AT_TIMER_ID, kind="run_at"
    )
    return ArmTimer(
        run_id=state.run_id, timer_id=RUN_AT_TIMER_ID, fire_at_ms=state.run_at_ms, command=command
    )


def is_event_of_admission(event: AnyEvent) -> bool:
    return isinstance(event, RunQueued | RunAdmitted)


# -- flow control of tasks (kernel/admission_tasks.py) --------------------------------------

FlowCommand = DeferTask | ReleaseTask | FireTimer


def is_flow_command(command: AnyCommand) -> bool:
    kind = type(command)  # (every decision asks: exact types, cheaper than isinstance)
    if kind is FireTimer:
        return cast(FireTimer, command).kind == TASK_RELEASE_KIND
    return kind is DeferTask or kind is ReleaseTask


def decide_flow_command(builder: Builder, command: AnyCommand) -> None:
    """Defer a task attempt, or release it (its limiter granted it, or its timer fired). An
    attempt no longer live, a deferral already recorded, a release of one not deferred:
    nothing."""
    assert isinstance(command, DeferTask | ReleaseTask | FireTimer), command
    state = builder.state
    step_id, attempt = command.step_id, command.attempt
    found = deferral_of(state, step_id, attempt)
    if not isinstance(command, DeferTask):
        if found is not None:
            builder.emit(TaskReleased(step_id=step_id, attempt=attempt, at_ms=command.at_ms))
        return
    if state.status in HELD_STATUSES or not _live_attempt(state, step_id, attempt):
        return
    if found is not None and (found.reason, found.until_ms) == (command.reason, command.until_ms):
        return
    builder.emit(
        TaskDeferred(
            step_id=step_id, attempt=attempt, reason=command.reason,
            limiter_id=command.limiter_id, until_ms=command.until_ms, at_ms=command.at_ms,
        )
    )  # fmt: skip


def _live_attempt(state: RunState, step_id: str, attempt: int) -> bool:
    """Whether the attempt may still be published (an item of a step, not a step: yes)."""
    step = state.step(step_id)
    if step is None:
        return True
    return step.status in ("scheduled", "running") and step.attempt == attempt
