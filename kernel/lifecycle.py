"""The attempt lifecycle: an attempt ends -> retry -> on_failure -> compensation -> run end.

An attempt ends in one of three ways: it completes, it fails (the handler reported it, or a
live attempt timed out: counted against `retry.max_attempts`), or it is lost (its worker
vanished: recorded as `step.lost`, and the next attempt runs at once without consuming the
policy, up to `limits.lost_attempts_max` lost attempts; kernel.retry).

`kernel.decide` dispatches commands and advances the DAG; this module owns what follows when a
step's attempt completes or fails, and is the one place where a step type's `Outcome`
(kernel.outcome) is applied. Step types are asked through the registry and answer with values;
nothing here is called back from a step. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from kernel import appended, limits, queries, registry
from kernel.commands import Rejection
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    ErrorInfo,
    RunCancelled,
    RunFailed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepLost,
    StepRecovered,
    StepRetryScheduled,
    StepTimedOut,
)
from kernel.outcome import (
    Complete,
    Emit,
    Fail,
    OwnedStepFailed,
    StartAttempt,
    StepInput,
)
from kernel.payloads import compose_object, encode
from kernel.reducer import evolve
from kernel.retry import backoff_ms, failures, lost_error, lost_exhausted, may_retry
from kernel.state import RunState


class Builder:
    """Events decided so far and the state they lead to (`states`: the state after each
    event, so a caller need not fold them again); local to one `decide` call. It is the
    read-only `DecideContext` step types are given (kernel.registry)."""

    __slots__ = ("at_ms", "events", "seed", "state", "states")

    def __init__(self, state: RunState, at_ms: int, seed: int) -> None:
        self.state = state
        self.at_ms = at_ms
        self.seed = seed
        self.events: list[AnyEvent] = []
        self.states: list[RunState] = []

    def emit(self, event: AnyEvent, folded: tuple[RunState, RunState] | None = None) -> None:
        """Record `event` and fold it; `folded` (before, after): a step's draft folded it
        already, and `after` is taken when this decision's state is `before` itself."""
        assert len(self.events) < limits.events_per_decision_max, "decision too large"
        self.events.append(event)
        if folded is not None and folded[0] is self.state:
            self.state = folded[1]  # evolve is pure: folding it again gives the same state
        else:
            self.state = evolve(self.state, event)
        self.states.append(self.state)
        assert self.state.event_count >= len(self.events), "every event is counted"


def ask(builder: Builder, step_id: str, given: StepInput) -> Rejection | None:
    """Ask the type of `step_id` what `given` means, and apply its outcome."""
    step_def = builder.state.step_def(step_id)
    assert step_def is not None, f"run {builder.state.run_id!r} has no step {step_id!r}"
    decided = registry.get(step_def.type).decide(builder, step_id, given)
    if isinstance(decided, Rejection):
        return decided
    apply_outcome(builder, decided)
    return None


def apply_outcome(builder: Builder, outcome: tuple[Emit | Complete | Fail, ...]) -> None:
    """Apply a step's actions in order; after a `Complete` or `Fail`, the rest only while the
    run's status is what it was (kernel.outcome)."""
    assert len(outcome) <= limits.events_per_decision_max, "outcome too large"
    status = builder.state.status
    for action in outcome:
        if builder.state.status != status:
            return
        match action:
            case Emit():
                builder.emit(action.event, action.folded)
            case Complete():
                complete(builder, action.step_id, action.output)
            case Fail():
                attempt_failed(
                    builder,
                    action.step_id,
                    action.error,
                    retryable=action.retryable,
                    retry_after_ms=action.retry_after_ms,
                    timed_out=action.timed_out,
                )


def start_step(builder: Builder, step_id: str, input: msgspec.Raw) -> None:
    """Start attempt 1 of a ready step (or a handler) with its resolved input."""
    size = len(input)
    if size > limits.payload_bytes_max:
        # No attempt can run: the step fails for good before its first attempt (attempt 0).
        message = f"resolved input is {size} bytes; the limit is {limits.payload_bytes_max} bytes"
        error = ErrorInfo(message=message, kind="invalid_input")
        at_ms = builder.at_ms
        builder.emit(
            StepFailed(step_id=step_id, attempt=0, error=error, will_retry=False, at_ms=at_ms)
        )
        _failed_for_good(builder, step_id, error)
        return
    step = builder.state.step(step_id)
    assert step is not None, f"no step {step_id!r}"
    # 1, or after a reopen the attempt after the last one (kernel.reopen): ids stay unique.
    ask(builder, step_id, StartAttempt(input=input, attempt=step.attempt_base + 1))


def complete(builder: Builder, step_id: str, output: msgspec.Raw) -> None:
    """End the step's live attempt with `output`, then apply the rules that follow."""
    step = builder.state.step(step_id)
    assert step is not None and step.status in ("scheduled", "running"), (step_id, step)
    if len(output) > limits.payload_bytes_max:
        message = f"output is {len(output)} bytes; the limit is {limits.payload_bytes_max} bytes"
        error = ErrorInfo(message=message, kind="invalid_output")
        attempt_failed(builder, step_id, error, retryable=False)
        return
    at_ms = builder.at_ms
    builder.emit(StepCompleted(step_id=step_id, attempt=step.attempt, output=output, at_ms=at_ms))
    _after_completed(builder, step_id)


def attempt_failed(
    builder: Builder,
    step_id: str,
    error: ErrorInfo,
    *,
    retryable: bool,
    retry_after_ms: int | None = None,
    timed_out: bool = False,
) -> None:
    """The live attempt of `step_id` failed: retry it under its policy, or fail it for good."""
    state = builder.state
    step = state.step(step_id)
    step_def = state.step_def(step_id)
    assert step is not None and step_def is not None, f"no step {step_id!r}"
    assert step.status in ("scheduled", "running"), f"{step_id!r} failed while {step.status}"
    policy = queries.retry_policy(state, step_def)
    counted = may_retry(policy, step.attempt - step.attempt_base, step.lost_attempts)
    will_retry = retryable and may_run(state, step_id) and counted
    attempt, at_ms = step.attempt, builder.at_ms
    if timed_out:
        builder.emit(
            StepTimedOut(
                step_id=step_id, attempt=attempt, will_retry=will_retry, at_ms=at_ms, error=error
            )
        )
    else:
        builder.emit(
            StepFailed(
                step_id=step_id, attempt=attempt, error=error, will_retry=will_retry, at_ms=at_ms
            )
        )
    if not will_retry:
        _failed_for_good(builder, step_id, error)
        return
    failed = failures(attempt - step.attempt_base, step.lost_attempts)
    seed = builder.seed
    delay = retry_after_ms if retry_after_ms is not None else backoff_ms(policy, failed, seed)
    delay = max(0, min(delay, limits.delay_ms_max))
    builder.emit(
        StepRetryScheduled(
            step_id=step_id, attempt=attempt + 1, delay_ms=delay, due_at_ms=at_ms + delay,
            at_ms=at_ms,
        )
    )  # fmt: skip


def attempt_lost(builder: Builder, step_id: str, error: ErrorInfo) -> None:
    """The live attempt of `step_id` was lost (its worker vanished): record it and run the next
    attempt at once, without consuming the retry policy; past `limits.lost_attempts_max` lost
    attempts (or when the step may not run again) it fails for good instead."""
    step = builder.state.step(step_id)
    assert step is not None, f"no step {step_id!r}"
    assert step.status in ("scheduled", "running"), f"{step_id!r} lost while {step.status}"
    if lost_exhausted(step.lost_attempts):
        message = lost_error(f"step {step_id!r}", step.attempt, error.message)
        attempt_failed(builder, step_id, message, retryable=False)
        return
    if not may_run(builder.state, step_id):
        attempt_failed(builder, step_id, error, retryable=False)
        return
    attempt = step.attempt
    builder.emit(StepLost(step_id=step_id, attempt=attempt, error=error, at_ms=builder.at_ms))
    rejection = ask(builder, step_id, StartAttempt(input=step.input, attempt=attempt + 1))
    assert rejection is None, "the attempt after a lost one is never refused"
    after = builder.state.step(step_id)
    assert after is not None and after.attempt >= attempt, "attempts only grow"


def may_run(state: RunState, step_id: str) -> bool:
    """Whether a step may start another attempt: body steps and on_failure handlers while the
    run is running, compensation handlers while it compensates."""
    role = queries.handler_role(state, step_id)
    if role is not None and role[0] == "compensate":
        return state.status == "compensating"
    return state.status == "running"


def _failed_for_good(builder: Builder, step_id: str, error: ErrorInfo) -> None:
    state = builder.state
    role = queries.handler_role(state, step_id)
    if role is not None and not may_run(state, step_id):
        return  # a handler failing after its run moved on (e.g. started compensating)
    if role is not None:
        _handler_failed(builder, step_id, role, error)
        return
    if state.status != "running":
        return  # a straggler failing while the run compensates: nothing more to do
    step_def = state.step_def(step_id)
    assert step_def is not None
    if step_def.on_failure is not None:
        handler_input = encode(
            {"failed_step": step_id, "error": {"message": error.message, "kind": error.kind}}
        )
        start_step(builder, step_def.on_failure, handler_input)
        return
    if not _owner_told(builder, step_id, error):
        fail_run(builder, error, failed_step_id=step_id)


def _handler_failed(
    builder: Builder, step_id: str, role: tuple[str, str], error: ErrorInfo
) -> None:
    kind, owner = role
    message = f"{kind} handler {step_id!r} of step {owner!r} failed: {error.message}"
    handler_error = ErrorInfo(message=queries.truncate(message), kind="handler_failed")
    if kind == "on_failure":
        if not _owner_told(builder, owner, handler_error):
            fail_run(builder, handler_error, failed_step_id=owner)
    elif builder.state.status == "compensating":
        builder.emit(
            RunFailed(
                error=handler_error,
                status="compensate_failed",
                failed_step_id=builder.state.failed_step_id,
                at_ms=builder.at_ms,
            )
        )


def _owner_told(builder: Builder, step_id: str, error: ErrorInfo) -> bool:
    """An appended step failed for good and nothing recovers it: its owner decides what that
    means. Returns False for a step of the workflow (the run's rules apply)."""
    if appended.parent_id(step_id) is None:
        return False
    owner = appended.live_owner(builder.state, step_id)
    if owner is not None:
        rejection = ask(builder, owner, OwnedStepFailed(step_id=step_id, error=error))
        assert rejection is None, "an owner does not refuse its step's failure"
    return True  # (an owner already ended: nothing waits for this step)


def _after_completed(builder: Builder, step_id: str) -> None:
    state = builder.state
    role = queries.handler_role(state, step_id)
    if role is None:
        return
    kind, owner = role
    if kind == "on_failure":
        if state.status == "running":
            step = state.step(step_id)
            assert step is not None and step.status == "completed"
            builder.emit(
                StepRecovered(
                    step_id=owner, handler_step_id=step_id, output=step.output,
                    at_ms=builder.at_ms,
                )
            )  # fmt: skip
        return
    if state.status == "compensating":
        builder.emit(StepCompensated(step_id=owner, handler_step_id=step_id, at_ms=builder.at_ms))
        _continue_compensation(builder)


def fail_run(
    builder: Builder,
    error: ErrorInfo,
    *,
    failed_step_id: str,
    outcome: Literal["failed", "cancelled"] = "failed",
) -> None:
    """End a running run as failed (or cancelled), compensating its completed steps first."""
    assert builder.state.status == "running", builder.state.status
    at_ms = builder.at_ms
    pending = queries.compensable(builder.state)
    if pending:
        builder.emit(
            CompensationStarted(
                steps=pending, outcome=outcome, error=error, failed_step_id=failed_step_id,
                at_ms=at_ms,
            )
        )  # fmt: skip
        _continue_compensation(builder)
    elif outcome == "cancelled":
        builder.emit(RunCancelled(reason=builder.state.cancel_reason or "", at_ms=at_ms))
    else:
        builder.emit(RunFailed(error=error, failed_step_id=failed_step_id, at_ms=at_ms))
    assert builder.state.status != "running", "a failed run stops running"


def _continue_compensation(builder: Builder) -> None:
    state = builder.state
    assert state.status == "compensating", state.status
    pending = queries.compensable(state)
    if not pending:
        if state.compensation_outcome == "cancelled":
            builder.emit(RunCancelled(reason=state.cancel_reason or "", at_ms=builder.at_ms))
        else:
            error = state.error or ErrorInfo(message="run failed")
            builder.emit(
                RunFailed(error=error, failed_step_id=state.failed_step_id, at_ms=builder.at_ms)
            )
        return
    step = state.step(pending[0])
    step_def = state.step_def(pending[0])
    assert step is not None and step_def is not None and step_def.compensate is not None
    handler = state.step(step_def.compensate)
    assert handler is not None
    if handler.status == "pending":
        handler_input = compose_object((("step_id", encode(step.step_id)), ("output", step.output)))
        start_step(builder, step_def.compensate, handler_input)
