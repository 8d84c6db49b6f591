"""decide(state, command) -> events | Rejection: every rule of a DAG run lives here.

Pure: no I/O, no clock (time is the command's `at_ms`), no randomness (the command's `seed`).
A command that does not apply (a duplicate, a stale attempt, anything for a finished run)
decides to `()`. A caller that must learn why gets a `Rejection` value (never stored).

Decide works by emitting events into a local builder that evolves its own copy of the state, so
every later rule sees the effect of the earlier ones, exactly as replay will.
"""

from __future__ import annotations

from typing import Literal, assert_never

import msgspec

from kernel import approvals, dag, dynamic, limits, registry
from kernel.cancel_on import cancel_reason
from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    DeliverEvent,
    FailTask,
    FireTimer,
    RecordChild,
    Rejection,
    ResolveApproval,
    SendSignal,
    StartRun,
    TaskStarted,
)
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    ErrorInfo,
    ErrorKind,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunStarted,
    SignalReceived,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepRecovered,
    StepRetryScheduled,
    StepSkipped,
    StepStarted,
    StepTimedOut,
)
from kernel.payloads import compose_object, encode, skip_applies
from kernel.reducer import evolve
from kernel.retry import backoff_ms
from kernel.state import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    RunState,
    is_terminal,
)

Decided = tuple[AnyEvent, ...] | Rejection


class _Builder:
    """Events decided so far and the state they lead to. Local to one `decide` call.

    It is the `DecideContext` step types decide through (kernel.registry).
    """

    __slots__ = ("at_ms", "events", "seed", "state")

    def __init__(self, state: RunState, at_ms: int, seed: int) -> None:
        self.state = state
        self.at_ms = at_ms
        self.seed = seed
        self.events: list[AnyEvent] = []

    def emit(self, event: AnyEvent) -> None:
        assert len(self.events) < limits.events_per_decision_max, "decision too large"
        self.events.append(event)
        self.state = evolve(self.state, event)

    def complete(self, step_id: str, output: msgspec.Raw) -> None:
        """End the step's live attempt with `output`, then apply the rules that follow."""
        step = self.state.step(step_id)
        assert step is not None and step.status in ("scheduled", "running"), step
        if len(output) > limits.payload_bytes_max:
            message = (
                f"output is {len(output)} bytes; the limit is {limits.payload_bytes_max} bytes"
            )
            error = ErrorInfo(message=message, kind="invalid_output")
            _attempt_failed(self, step_id, error, retryable=False, at_ms=self.at_ms)
            return
        self.emit(
            StepCompleted(step_id=step_id, attempt=step.attempt, output=output, at_ms=self.at_ms)
        )
        _after_completed(self, step_id, self.at_ms)

    def fail(
        self,
        step_id: str,
        error: ErrorInfo,
        *,
        retryable: bool,
        retry_after_ms: int | None = None,
    ) -> None:
        """Fail the step's live attempt (retried under its policy when `retryable`)."""
        _attempt_failed(
            self,
            step_id,
            error,
            retryable=retryable,
            at_ms=self.at_ms,
            seed=self.seed,
            retry_after_ms=retry_after_ms,
        )


def decide(state: RunState, command: AnyCommand) -> Decided:
    """The events a command leads to, given the run's state.

    Args:
        state: the fold of the run's history so far.
        command: what is asked, stamped with `at_ms` and `seed` by the shell.

    Returns:
        The events to append (possibly none), or a Rejection saying why the command is refused.
    """
    if isinstance(command, StartRun):
        return _start_run(state, command)
    if state.status == "new":
        return Rejection(run_id=command.run_id, code="unknown_run", message=dag.no_run(command))
    assert command.run_id == state.run_id, f"command for {command.run_id!r} on {state.run_id!r}"
    if is_terminal(state):
        if isinstance(command, CancelRun) and state.cancel_reason is None:
            message = f"run {state.run_id!r} already ended as {state.status}; nothing to cancel"
            return Rejection(run_id=state.run_id, code="run_finished", message=message)
        if isinstance(command, ResolveApproval):
            return approvals.refuse_after_end(state, command)
        return ()
    builder = _Builder(state, command.at_ms, command.seed)
    rejection = _apply(builder, command)
    if rejection is not None:
        return rejection
    if builder.events:
        _advance(builder, command.at_ms)
    return tuple(builder.events)


def _apply(builder: _Builder, command: AnyCommand) -> Rejection | None:
    if dynamic.route_item(builder, command):
        return None  # a map item's result or timer: the map decided it
    match command:
        case StartRun():
            raise AssertionError("StartRun is decided before")
        case TaskStarted():
            return _task_started(builder, command)
        case CompleteTask():
            return _complete_task(builder, command)
        case FailTask():
            return _fail_task(builder, command)
        case FireTimer():
            _fire_timer(builder, command)
            return None
        case CancelRun():
            _cancel_run(builder, command)
            return None
        case SendSignal():
            return _send_signal(builder, command)
        case RecordChild():
            return _record_child(builder, command)
        case DeliverEvent():
            _deliver_event(builder, command)
            return None
        case ResolveApproval():
            return approvals.resolve(builder, command)
        case _:
            assert_never(command)


def _record_child(builder: _Builder, command: RecordChild) -> Rejection | None:
    """A child run reports to the step that started it (stale reports decide to nothing)."""
    step = builder.state.step(command.step_id)
    if step is None:
        return dag.unknown_step(builder.state, command.step_id)
    step_def = builder.state.step_def(command.step_id)
    assert step_def is not None
    if step.status in ("scheduled", "running"):
        registry.get(step_def.type).child_reported(builder, command.step_id, command)
    return None


def _deliver_event(builder: _Builder, command: DeliverEvent) -> None:
    """An external event: the workflow's cancel_on, then each live step, may take it."""
    if builder.state.status == "running":
        reason = cancel_reason(builder.state, command)
        if reason is not None:
            cancel = CancelRun(run_id=command.run_id, at_ms=command.at_ms, reason=reason)
            _cancel_run(builder, cancel)
            return
    for step_def in builder.state.step_defs:
        if builder.state.status != "running":
            return
        step = builder.state.step(step_def.id)
        assert step is not None
        if step.status in ("scheduled", "running"):
            registry.get(step_def.type).external_event(builder, step_def.id, command)


def _start_run(state: RunState, command: StartRun) -> Decided:
    if state.status != "new":
        if state.workflow == command.workflow and state.input == command.input:
            return ()  # the same start again: idempotent
        message = f"run {command.run_id!r} already exists with another workflow or input"
        return Rejection(run_id=command.run_id, code="run_exists", message=message)
    if len(command.input) > limits.payload_bytes_max:
        message = (
            f"input is {len(command.input)} bytes; the limit is {limits.payload_bytes_max} bytes"
        )
        return Rejection(run_id=command.run_id, code="invalid", message=message)
    builder = _Builder(state, command.at_ms, command.seed)
    builder.emit(
        RunStarted(
            run_id=command.run_id,
            workflow=command.workflow,
            input=command.input,
            at_ms=command.at_ms,
            seed=command.seed,
            parent_run_id=command.parent_run_id,
            parent_step_id=command.parent_step_id,
            depth=command.depth,
            detached=command.detached,
            continued_from=command.continued_from,
            chain_root=command.chain_root,
            chain_index=command.chain_index,
        )
    )
    _advance(builder, command.at_ms)
    return tuple(builder.events)


def _task_started(builder: _Builder, command: TaskStarted) -> Rejection | None:
    state = builder.state
    step = state.step(command.step_id)
    if step is None:
        return dag.unknown_step(state, command.step_id)
    if step.status == "scheduled" and step.attempt == command.attempt:
        builder.emit(
            StepStarted(
                step_id=command.step_id,
                attempt=command.attempt,
                worker_id=command.worker_id,
                at_ms=command.at_ms,
            )
        )
    return None


def _complete_task(builder: _Builder, command: CompleteTask) -> Rejection | None:
    state = builder.state
    if state.step(command.step_id) is None:
        return dag.unknown_step(state, command.step_id)
    if dag.current_attempt(state, command.step_id, command.attempt) is None:
        return None  # stale attempt or a second completion
    _record_start(builder, command)
    step_def = state.step_def(command.step_id)
    assert step_def is not None
    registry.get(step_def.type).task_completed(builder, command.step_id, command.output)
    return None


def _fail_task(builder: _Builder, command: FailTask) -> Rejection | None:
    state = builder.state
    if state.step(command.step_id) is None:
        return dag.unknown_step(state, command.step_id)
    if dag.current_attempt(state, command.step_id, command.attempt) is None:
        return None
    record = dynamic.parent_record(state, command.step_id)
    if record is not None and record.attempt == command.attempt:
        return None  # the attempt returned its plan, which runs: a late failure report is stale
    _record_start(builder, command)
    kind: ErrorKind = command.kind
    error = ErrorInfo(
        message=dag.truncate(command.error), kind=kind, traceback=dag.truncate(command.traceback)
    )
    retryable = command.kind in ("error", "heartbeat_timeout")
    _attempt_failed(
        builder,
        command.step_id,
        error,
        retryable=retryable,
        at_ms=command.at_ms,
        seed=command.seed,
        retry_after_ms=command.retry_after_ms,
    )
    return None


def _record_start(builder: _Builder, command: CompleteTask | FailTask) -> None:
    """Record `step.started` from a result whose worker did not report it separately."""
    step = builder.state.step(command.step_id)
    assert step is not None and step.attempt == command.attempt
    if step.status == "scheduled" and command.started_at_ms is not None:
        builder.emit(
            StepStarted(
                step_id=command.step_id,
                attempt=command.attempt,
                worker_id=command.worker_id,
                at_ms=command.started_at_ms,
            )
        )


def _fire_timer(builder: _Builder, command: FireTimer) -> None:
    state = builder.state
    if command.kind == "run_timeout":
        assert state.workflow is not None
        if state.status == "running" and state.workflow.timeout_ms is not None:
            message = f"run timed out after {state.workflow.timeout_ms} ms"
            error = ErrorInfo(message=message, kind="timeout")
            _fail_run(builder, error, failed_step_id="", at_ms=command.at_ms)
        return
    step = state.step(command.step_id)
    if step is None:
        return
    if command.kind == "retry":
        due = step.status == "retry_wait" and step.attempt + 1 == command.attempt
        if due and _may_run(state, command.step_id):
            step_def = state.step_def(command.step_id)
            assert step_def is not None
            registry.get(step_def.type).start(builder, command.step_id, step.input, command.attempt)
        return
    if command.kind == "step":
        if dag.current_attempt(state, command.step_id, command.attempt) is not None:
            step_def = state.step_def(command.step_id)
            assert step_def is not None
            registry.get(step_def.type).fire(builder, command.step_id, command)
        return
    assert command.kind == "step_timeout", command.kind
    live = dag.current_attempt(state, command.step_id, command.attempt)
    if live is not None and live.deadline_ms is not None:  # a planner's plan has no deadline
        _attempt_failed(
            builder,
            command.step_id,
            ErrorInfo(message=f"attempt {command.attempt} timed out", kind="timeout"),
            retryable=True,
            at_ms=command.at_ms,
            seed=command.seed,
            timed_out=True,
        )


def _send_signal(builder: _Builder, command: SendSignal) -> Rejection | None:
    """Record the signal in order, then offer it to the active steps (one may consume it)."""
    state = builder.state
    problem = dag.signal_problem(state, command)
    if problem is not None:
        return Rejection(run_id=state.run_id, code="invalid", message=problem)
    builder.emit(SignalReceived(name=command.name, payload=command.payload, at_ms=command.at_ms))
    index = len(builder.state.signals) - 1
    for step_def in builder.state.step_defs:
        step = builder.state.step(step_def.id)
        assert step is not None
        if step.status in ("scheduled", "running"):
            registry.get(step_def.type).signal(builder, step_def.id, index)
            if builder.state.signals[index].consumed_by is not None:
                break
    return None


def _cancel_run(builder: _Builder, command: CancelRun) -> None:
    if builder.state.cancel_reason is not None:
        return  # already requested
    builder.emit(RunCancelRequested(reason=dag.truncate(command.reason), at_ms=command.at_ms))
    if builder.state.status == "running":
        message = dag.truncate(f"cancelled: {command.reason}" if command.reason else "cancelled")
        error = ErrorInfo(message=message, kind="cancelled")
        _fail_run(builder, error, failed_step_id="", at_ms=command.at_ms, outcome="cancelled")


def _attempt_failed(
    builder: _Builder,
    step_id: str,
    error: ErrorInfo,
    *,
    retryable: bool,
    at_ms: int,
    seed: int = 0,
    retry_after_ms: int | None = None,
    timed_out: bool = False,
) -> None:
    state = builder.state
    step = state.step(step_id)
    step_def = state.step_def(step_id)
    assert step is not None and step_def is not None
    policy = dag.retry_policy(state, step_def)
    may_continue = _may_run(state, step_id)
    will_retry = retryable and may_continue and step.attempt < policy.max_attempts
    attempt = step.attempt
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
    if will_retry:
        delay = retry_after_ms if retry_after_ms is not None else backoff_ms(policy, attempt, seed)
        delay = max(0, min(delay, limits.delay_ms_max))
        builder.emit(
            StepRetryScheduled(
                step_id=step_id,
                attempt=attempt + 1,
                delay_ms=delay,
                due_at_ms=at_ms + delay,
                at_ms=at_ms,
            )
        )
        return
    _failed_for_good(builder, step_id, error, at_ms)


def _may_run(state: RunState, step_id: str) -> bool:
    """Whether a step may start another attempt: body steps and on_failure handlers while the
    run is running, compensation handlers while it compensates."""
    role = dag.handler_role(state, step_id)
    if role is not None and role[0] == "compensate":
        return state.status == "compensating"
    return state.status == "running"


def _failed_for_good(builder: _Builder, step_id: str, error: ErrorInfo, at_ms: int) -> None:
    state = builder.state
    role = dag.handler_role(state, step_id)
    if role is not None and not _may_run(state, step_id):
        return  # a handler failing after its run moved on (e.g. started compensating)
    if role is not None:
        kind, owner = role
        message = f"{kind} handler {step_id!r} of step {owner!r} failed: {error.message}"
        handler_error = ErrorInfo(message=dag.truncate(message), kind="handler_failed")
        if kind == "on_failure":
            if not dynamic.child_failed(builder, owner, handler_error):
                _fail_run(builder, handler_error, failed_step_id=owner, at_ms=at_ms)
        elif state.status == "compensating":
            builder.emit(
                RunFailed(
                    error=handler_error,
                    status="compensate_failed",
                    failed_step_id=state.failed_step_id,
                    at_ms=at_ms,
                )
            )
        return
    if state.status != "running":
        return  # a straggler failing while the run compensates: nothing more to do
    step_def = state.step_def(step_id)
    assert step_def is not None
    if step_def.on_failure is not None:
        handler_input = encode(
            {"failed_step": step_id, "error": {"message": error.message, "kind": error.kind}}
        )
        _start_step(builder, step_def.on_failure, handler_input, at_ms)
        return
    if not dynamic.child_failed(builder, step_id, error):
        _fail_run(builder, error, failed_step_id=step_id, at_ms=at_ms)


def _after_completed(builder: _Builder, step_id: str, at_ms: int) -> None:
    state = builder.state
    role = dag.handler_role(state, step_id)
    if role is None:
        return
    kind, owner = role
    if kind == "on_failure":
        if state.status == "running":
            step = state.step(step_id)
            assert step is not None
            builder.emit(
                StepRecovered(
                    step_id=owner, handler_step_id=step_id, output=step.output, at_ms=at_ms
                )
            )
        return
    if state.status == "compensating":
        builder.emit(StepCompensated(step_id=owner, handler_step_id=step_id, at_ms=at_ms))
        _continue_compensation(builder, at_ms)


def _fail_run(
    builder: _Builder,
    error: ErrorInfo,
    *,
    failed_step_id: str,
    at_ms: int,
    outcome: Literal["failed", "cancelled"] = "failed",
) -> None:
    assert builder.state.status == "running", builder.state.status
    pending = dag.compensable(builder.state)
    if pending:
        builder.emit(
            CompensationStarted(
                steps=pending,
                outcome=outcome,
                error=error,
                failed_step_id=failed_step_id,
                at_ms=at_ms,
            )
        )
        _continue_compensation(builder, at_ms)
    elif outcome == "cancelled":
        builder.emit(RunCancelled(reason=builder.state.cancel_reason or "", at_ms=at_ms))
    else:
        builder.emit(RunFailed(error=error, failed_step_id=failed_step_id, at_ms=at_ms))


def _continue_compensation(builder: _Builder, at_ms: int) -> None:
    state = builder.state
    assert state.status == "compensating", state.status
    pending = dag.compensable(state)
    if not pending:
        if state.compensation_outcome == "cancelled":
            builder.emit(RunCancelled(reason=state.cancel_reason or "", at_ms=at_ms))
        else:
            error = state.error or ErrorInfo(message="run failed")
            builder.emit(RunFailed(error=error, failed_step_id=state.failed_step_id, at_ms=at_ms))
        return
    step = state.step(pending[0])
    step_def = state.step_def(pending[0])
    assert step is not None and step_def is not None and step_def.compensate is not None
    handler = state.step(step_def.compensate)
    assert handler is not None
    if handler.status == "pending":
        handler_input = compose_object((("step_id", encode(step.step_id)), ("output", step.output)))
        _start_step(builder, step_def.compensate, handler_input, at_ms)


def _start_step(builder: _Builder, step_id: str, input: msgspec.Raw, at_ms: int) -> None:
    size = len(input)
    if size > limits.payload_bytes_max:
        # No attempt can run: the step fails for good before its first attempt (attempt 0).
        message = f"resolved input is {size} bytes; the limit is {limits.payload_bytes_max} bytes"
        error = ErrorInfo(message=message, kind="invalid_input")
        builder.emit(
            StepFailed(step_id=step_id, attempt=0, error=error, will_retry=False, at_ms=at_ms)
        )
        _failed_for_good(builder, step_id, error, at_ms)
        return
    step_def = builder.state.step_def(step_id)
    assert step_def is not None
    registry.get(step_def.type).start(builder, step_id, input, 1)


def _advance(builder: _Builder, at_ms: int) -> None:
    """Start every ready step (skipping those whose skip_if holds) until nothing changes,
    then complete the run when every step outside the handlers is done."""
    for _ in range(limits.advance_iterations_max):
        if builder.state.status != "running" or not _advance_once(builder, at_ms):
            break
    else:
        raise AssertionError(f"advance did not settle in {limits.advance_iterations_max} passes")
    state = builder.state
    if state.status != "running":
        return
    handlers = dag.handler_ids(state)
    body = [s for s in state.steps if s.step_id not in handlers]
    if all(dynamic.finished(step) for step in body):
        output = dag.run_output(state, handlers)
        if len(output) > limits.payload_bytes_max:
            message = (
                f"the run output (the terminal steps' outputs) is {len(output)} bytes; "
                f"the limit is {limits.payload_bytes_max} bytes"
            )
            error = ErrorInfo(message=message, kind="invalid_output")
            _fail_run(builder, error, failed_step_id="", at_ms=at_ms)
            return
        builder.emit(RunCompleted(output=output, at_ms=at_ms))


def _advance_once(builder: _Builder, at_ms: int) -> bool:
    progressed = dynamic.settle(builder)  # planners whose plans are all done complete
    state = builder.state
    if state.status != "running":
        return progressed
    assert state.workflow is not None
    handlers = dag.handler_ids(state)
    by_id = dict(zip(state.step_ids, state.steps, strict=True))
    limit = state.workflow.max_concurrent_steps
    active = sum(1 for step in state.steps if step.status in ACTIVE_STEP_STATUSES)
    for step_def in state.step_defs:
        step = by_id[step_def.id]
        if step.status != "pending" or step_def.id in handlers:
            continue
        if not all(by_id[dep].status in DONE_STEP_STATUSES for dep in step_def.depends_on):
            continue
        condition = step_def.skip_if
        if condition is not None and skip_applies(condition, by_id[condition.step_id].output):
            reason = f"skip_if {condition.step_id}.{condition.field} {condition.op} " + (
                bytes(condition.value).decode()
            )
            builder.emit(StepSkipped(step_id=step_def.id, reason=reason, at_ms=at_ms))
            progressed = True
            continue
        if limit is not None and active >= limit:
            continue
        _start_step(builder, step_def.id, dag.resolve_input(state, step_def, by_id), at_ms)
        active += 1
        progressed = True
        if builder.state.status != "running":
            break
    return progressed
