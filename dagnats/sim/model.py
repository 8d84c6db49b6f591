"""The reference model: what a run of a workflow must end as, written apart from the kernel.

A second, plain implementation of the run's rules, from the workflow format's documentation
(docs/workflow-format.md, ARCHITECTURE.md 5c), not from `kernel/`: it imports no rule of the
kernel (`kernel.decide`, `kernel.lifecycle`, `kernel.reducer`, `kernel.queries`, `steps.*`),
only the formats it reads (the workflow definition, the commands). It is fed what the world
did to one run, in the order the engine took it: each command of the run's history (a result
of an attempt, a failure and its kind, a timer that fired, a cancel), with the virtual time it
was appended at. From those alone it decides what the run must do: which steps start, which
attempt is live, which failure is retried and when it is due, which handler runs, when the run
ends and how. `dagnats/sim/model_check.py` compares it with the engine's run.

Rules covered (steps of type `task`; a workflow with another step type is not modelled):

- a step starts when every dependency is done (completed, skipped or recovered), in the order
  written, at most `concurrency.max_steps` steps scheduled, running or waiting to retry at
  once; `skip_if` on a dependency's output skips it instead; readiness is judged in passes
  (a step skipped in a pass makes its dependents ready in the next one, which decides who
  gets a free slot first under `max_steps`);
- attempts: a failure of kind `error` and a step timeout are retried after the policy's backoff
  (or `RetryAfter`) while the attempts that were not lost number fewer than `max_attempts` (0
  reads as 1; the backoff of failure `n` counts those attempts too), others (`non_retryable`,
  `invalid_output`) fail the step for good;
- a lost attempt (its worker vanished: kind `lost`, or `heartbeat_timeout` from older workers)
  is not a failure (`lost_attempt` below): the engine records `step.lost` and starts the next
  attempt at once (no backoff, no timer), without consuming `max_attempts`; a step that already
  lost `lost_attempts_max` attempts, or that may not run again (its run moved on), fails for
  good instead;
- a step failed for good: its `on_failure` handler runs (its completion recovers the step, its
  output becomes the step's; its failure fails the run); without one the run fails;
- a run that fails (a step, its timeout, a cancel) first compensates: the `compensate` handler
  of each completed step, latest completion first, one at a time (a step that completes
  meanwhile joins); then it ends `failed` (`cancelled` for a cancel); a compensate handler
  failing for good ends it `compensate_failed`;
- while a run compensates, body steps may still report: a completion is recorded, a failure
  is final, nothing new starts;
- the run completes when every body step is done; its output is the output of its steps that
  nothing depends on (one: as is; several: an object by step id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final, Literal

from kernel import limits
from kernel.commands import CancelRun, CompleteTask, FailTask, FireTimer, StartRun, TaskStarted
from kernel.workflow import RetryPolicy, SkipIf, WorkflowDef

LOST_ATTEMPTS_MAX: Final[int] = limits.lost_attempts_max
LOST_KINDS: Final = frozenset({"lost", "heartbeat_timeout"})
RETRYABLE_KINDS: Final = frozenset({"error"})
MODELLED_STEP_TYPES: Final = frozenset({"task"})
DONE: Final = frozenset({"completed", "skipped", "recovered"})
ACTIVE: Final = frozenset({"live", "retry_wait"})
WEEK_MS: Final = 7 * 24 * 3_600_000  # the longest backoff a policy may ask for

StepStatus = Literal["pending", "live", "retry_wait", "completed", "failed", "skipped", "recovered"]
Role = Literal["body", "on_failure", "compensate"]
LostRule = Literal["rerun_now", "fail"]


@dataclass(slots=True)
class ModelStep:
    """One step as the model sees it."""

    id: str
    role: Role
    owner: str  # the step a handler serves ("" for a body step)
    status: StepStatus = "pending"
    attempt: int = 0  # the latest attempt started (lost ones included)
    lost: int = 0  # attempts lost with their worker (recorded as `step.lost`)
    output: bytes = b"null"
    completion: int = -1  # order of completion (compensation runs latest first)
    compensated: bool = False
    started_at_ms: int = 0  # when the live attempt started
    retry_due_ms: int = 0  # the latest time the next attempt is due (in retry_wait)

    @property
    def failures(self) -> int:
        """The attempts that were not lost: what `max_attempts` and the backoff count."""
        return self.attempt - self.lost


@dataclass(slots=True)
class Input:
    """One command the model was fed, for the report of a mismatch (described when read)."""

    at_ms: int
    command: object
    applied: bool

    @property
    def text(self) -> str:
        return describe(self.command)


def lost_attempt(step: ModelStep, *, may_run: bool) -> LostRule:
    """What a lost attempt (its worker vanished) does to its step: "rerun_now" (recorded as
    lost, attempt + 1 starts at once without consuming `max_attempts`) or "fail" (failed for
    good like a non-retryable failure: the step already lost `LOST_ATTEMPTS_MAX` attempts, or
    it may not run again). The one place of the rule."""
    assert 0 <= step.lost < max(step.attempt, 1) and step.lost <= LOST_ATTEMPTS_MAX, step
    if step.lost >= LOST_ATTEMPTS_MAX or not may_run:
        return "fail"
    step.lost += 1
    return "rerun_now"


def max_backoff_ms(policy: RetryPolicy, failed_attempt: int) -> int:
    """The longest wait the policy allows after `failed_attempt` (jitter at its top)."""
    assert failed_attempt >= 1
    initial = float(policy.initial_delay_ms)
    if policy.strategy == "fixed":
        delay = initial
    elif policy.strategy == "linear":
        delay = initial * failed_attempt
    else:
        delay = initial * float(policy.multiplier) ** min(failed_attempt - 1, 64)
    cap = policy.max_delay_ms if policy.max_delay_ms > 0 else WEEK_MS
    delay = min(delay, float(min(cap, WEEK_MS))) * (1.0 + policy.jitter)
    return min(int(delay) + 1, WEEK_MS)


def _outputs_differ(engine: bytes, model: bytes) -> bool:
    """Whether two JSON outputs hold different values (the same bytes hold the same value:
    parsed only when the bytes differ)."""
    return engine != model and json.loads(engine) != json.loads(model)


def skip_holds(skip: SkipIf, output: bytes) -> bool:
    """Whether `skip` holds on the dependency's output. Its field is a dotted path (object keys,
    array indexes); numbers compare as numbers, strings in order, other values only by `==` and
    `!=`; a missing field or values of different types compare false (the step runs)."""
    value: object = json.loads(output)
    for key in skip.field.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False
    wanted: object = json.loads(bytes(skip.value))
    if _number(value) and _number(wanted):
        assert isinstance(value, int | float) and isinstance(wanted, int | float)
        return _ordered(float(value), skip.op, float(wanted))
    if isinstance(value, str) and isinstance(wanted, str):
        return _ordered(value, skip.op, wanted)
    if type(value) is not type(wanted) or skip.op not in ("==", "!="):
        return False
    return (value == wanted) == (skip.op == "==")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(a: float | str, op: str, b: float | str) -> bool:
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    if op in ("<", ">="):
        return (a < b) == (op == "<")  # type: ignore[operator]
    return (a > b) == (op == ">")  # type: ignore[operator]


class ModelRun:
    """The model of one run: fed the commands its history took, in order."""

    def __init__(self, start: StartRun, at_ms: int) -> None:
        workflow = start.workflow
        self.workflow: WorkflowDef = workflow
        self.modelled = all(s.type in MODELLED_STEP_TYPES for s in workflow.steps)
        self.status = "running"
        self.outcome = "failed"  # what compensation ends in (cancelled for a cancel)
        self.cancel_requested = False
        self.output: object = None
        self.ended_at_ms: int | None = None
        self.completions = 0
        self.now_ms = at_ms
        self.inputs: list[Input] = [Input(at_ms, start, True)]
        self.lost_now = False  # the latest command lost an attempt that runs again
        self.defs = {s.id: s for s in workflow.steps}
        roles: dict[str, tuple[Role, str]] = {}
        for s in workflow.steps:
            if s.on_failure:
                roles[s.on_failure] = ("on_failure", s.id)
            if s.compensate:
                roles[s.compensate] = ("compensate", s.id)
        self.steps = {s.id: ModelStep(s.id, *roles.get(s.id, ("body", ""))) for s in workflow.steps}
        self.order = [s.id for s in workflow.steps]
        # Body steps with their definitions, in order, and those nothing depends on (the run's
        # output): the steps never change, only their fields.
        self.body = [
            (self.steps[s.id], s) for s in workflow.steps if self.steps[s.id].role == "body"
        ]
        depended = {d for s in workflow.steps for d in s.depends_on}
        self.ends = [step for step, _ in self.body if step.id not in depended]
        if self.modelled:
            self._advance()

    # -- what the world did -------------------------------------------------------------

    def feed(self, command: object, at_ms: int) -> bool | None:
        """Apply one command the engine appended a decision for, at `at_ms`. Returns whether the
        model decides something on it (False: the model finds nothing to do), None for a
        command the model does not judge (a started report, an unmodelled one)."""
        assert at_ms >= self.now_ms - 1, (at_ms, self.now_ms)
        self.now_ms = max(self.now_ms, at_ms)
        self.lost_now = False
        applied = self._apply(command)
        self.inputs.append(Input(at_ms, command, bool(applied)))
        if applied:
            self._advance()
        return applied

    def _apply(self, command: object) -> bool | None:
        if not self.modelled or isinstance(command, TaskStarted):
            return None
        if self.ended_at_ms is not None or isinstance(command, StartRun):
            return False
        match command:
            case CompleteTask():
                step = self._live(command.step_id, command.attempt)
                if step is None:
                    return False
                self._complete(step, bytes(command.output))
                return True
            case FailTask():
                step = self._live(command.step_id, command.attempt)
                if step is None:
                    return False
                self._failed(step, command.kind, command.retry_after_ms)
                return True
            case FireTimer():
                return self._timer(command)
            case CancelRun():
                if self.cancel_requested:
                    return False
                self.cancel_requested = True
                if self.status == "running":
                    self._fail_run("cancelled")
                return True
        self.modelled = False  # a command of a step type the model does not know
        return None

    def _live(self, step_id: str, attempt: int) -> ModelStep | None:
        step = self.steps.get(step_id)
        live = step is not None and step.status == "live" and step.attempt == attempt
        return step if live else None

    def _timer(self, command: FireTimer) -> bool:
        if command.kind == "run_timeout":
            if self.status != "running" or self.workflow.timeout_ms is None:
                return False
            self._fail_run("failed")
            return True
        step = self.steps.get(command.step_id)
        if step is None:
            return False
        if command.kind == "retry":
            due = step.status == "retry_wait" and step.attempt + 1 == command.attempt
            if not due or not self._may_run(step):
                return False
            self._start(step)
            return True
        if command.kind == "step_timeout":
            timeout = self.defs[step.id].timeout_ms
            if self._live(step.id, command.attempt) is None or timeout is None:
                return False
            self._attempt_failed(step, retryable=True, delay_ms=None)
            return True
        return False

    # -- the rules ------------------------------------------------------------------------

    def _may_run(self, step: ModelStep) -> bool:
        if step.role == "compensate":
            return self.status == "compensating"
        return self.status == "running"

    def _policy(self, step: ModelStep) -> RetryPolicy | None:
        return self.defs[step.id].retry or self.workflow.default_retry

    def _start(self, step: ModelStep) -> None:
        step.attempt += 1
        step.status = "live"
        step.started_at_ms = self.now_ms

    def _complete(self, step: ModelStep, output: bytes) -> None:
        step.status, step.output = "completed", output
        step.completion = self.completions
        self.completions += 1
        if step.role == "on_failure" and self.status == "running":
            owner = self.steps[step.owner]
            owner.status, owner.output = "recovered", output
        elif step.role == "compensate" and self.status == "compensating":
            self.steps[step.owner].compensated = True
            self._compensate_next()

    def _failed(self, step: ModelStep, kind: str, retry_after_ms: int | None) -> None:
        if kind in LOST_KINDS:
            if lost_attempt(step, may_run=self._may_run(step)) == "rerun_now":
                self.lost_now = True
                self._start(step)  # at once: no backoff, no timer
                return
            self._attempt_failed(step, retryable=False, delay_ms=None)
            return
        self._attempt_failed(step, retryable=kind in RETRYABLE_KINDS, delay_ms=retry_after_ms)

    def _attempt_failed(self, step: ModelStep, *, retryable: bool, delay_ms: int | None) -> None:
        policy = self._policy(step)
        attempts = max(1, policy.max_attempts) if policy is not None else 1
        failures = step.failures
        assert 1 <= failures <= step.attempt, (step.id, step.attempt, step.lost)
        if retryable and self._may_run(step) and failures < attempts:
            assert policy is not None
            wait = delay_ms if delay_ms is not None else max_backoff_ms(policy, failures)
            step.status, step.retry_due_ms = "retry_wait", self.now_ms + min(wait, WEEK_MS)
            return
        step.status = "failed"
        self._failed_for_good(step)

    def _failed_for_good(self, step: ModelStep) -> None:
        if step.role != "body" and not self._may_run(step):
            return  # a handler failing after its run moved on
        if step.role == "on_failure":
            self._fail_run("failed")
        elif step.role == "compensate":
            self._end("compensate_failed")
        elif self.status == "running":
            handler = self.defs[step.id].on_failure
            if handler:
                self._start(self.steps[handler])
            else:
                self._fail_run("failed")

    def _fail_run(self, outcome: str) -> None:
        assert self.status == "running", self.status
        self.status, self.outcome = "compensating", outcome
        self._compensate_next()

    def _compensate_next(self) -> None:
        waiting = sorted(
            (s for s in self.steps.values() if self._compensable(s)),
            key=lambda s: s.completion,
            reverse=True,
        )
        if not waiting:
            self._end(self.outcome)
            return
        handler = self.steps[self.defs[waiting[0].id].compensate or ""]
        if handler.status == "pending":
            self._start(handler)

    def _compensable(self, step: ModelStep) -> bool:
        return (
            step.status == "completed"
            and bool(self.defs[step.id].compensate)
            and (not step.compensated)
        )

    def _end(self, status: str) -> None:
        self.status, self.ended_at_ms = status, self.now_ms

    def _advance(self) -> None:
        """Start (or skip) every ready body step until nothing changes; complete the run when
        every body step is done."""
        for _ in range(len(self.order) + 1):
            if self.status != "running" or not self._advance_once():
                break
        if self.status == "running" and all(step.status in DONE for step, _ in self.body):
            ends = self.ends
            outputs = {s.id: json.loads(s.output) for s in ends}
            self.output = outputs[ends[0].id] if len(ends) == 1 else outputs
            self._end("completed")

    def _advance_once(self) -> bool:
        pending = [(step, step_def) for step, step_def in self.body if step.status == "pending"]
        if not pending:
            return False
        limit = self.workflow.max_concurrent_steps
        active = sum(1 for s in self.steps.values() if s.status in ACTIVE)
        done = {s.id for s in self.steps.values() if s.status in DONE}  # as the pass begins
        moved = False
        for step, step_def in pending:  # (a pass changes only the step it is at)
            if not done.issuperset(step_def.depends_on):
                continue
            skip = step_def.skip_if
            if skip is not None and skip_holds(skip, self.steps[skip.step_id].output):
                step.status, moved = "skipped", True
                continue
            if limit is not None and active >= limit:
                continue
            self._start(step)
            active += 1
            moved = True
        return moved

    # -- what the model expects -----------------------------------------------------------

    def retry_waits(self) -> list[ModelStep]:
        """Steps waiting for their next attempt that may still run it (each is due)."""
        if self.ended_at_ms is not None or not self.modelled:
            return []
        return [s for s in self.steps.values() if s.status == "retry_wait" and self._may_run(s)]

    def live(self) -> list[ModelStep]:
        """Steps with an attempt out (each must end: its result, its loss, its timeout)."""
        if self.ended_at_ms is not None or not self.modelled:
            return []
        return [s for s in self.steps.values() if s.status == "live"]


def describe(command: object) -> str:
    """A command in a few words, for a mismatch report."""
    match command:
        case CompleteTask():
            return f"{command.step_id}#{command.attempt} completed"
        case FailTask():
            after = f", retry after {command.retry_after_ms} ms" if command.retry_after_ms else ""
            return f"{command.step_id}#{command.attempt} failed ({command.kind}{after})"
        case FireTimer():
            what = f" {command.step_id}#{command.attempt}" if command.step_id else ""
            return f"timer {command.kind}{what} fired"
        case CancelRun():
            return "cancel"
        case TaskStarted():
            return f"{command.step_id}#{command.attempt} started"
        case StartRun():
            return "start"
    return type(command).__name__


@dataclass(slots=True)
class Observed:
    """What the engine's run ended as, read from its history's fold (formats only)."""

    status: str
    # step id -> status, attempt, lost attempts, output
    steps: dict[str, tuple[str, int, int, bytes]] = field(default_factory=dict)
    output: object = None


ENGINE_STEP_STATUS: Final = {"scheduled": "live", "running": "live"}


def compare(model: ModelRun, observed: Observed) -> list[str]:
    """The differences between the model's run and the engine's, one line each."""
    lines: list[str] = []
    if model.status != observed.status:
        lines.append(f"run status: model {model.status}, engine {observed.status}")
    for step_id in model.order:
        step = model.steps[step_id]
        status, attempt, lost, output = observed.steps.get(step_id, ("absent", 0, 0, b"null"))
        status = ENGINE_STEP_STATUS.get(status, status)
        if (step.status, step.attempt, step.lost) != (status, attempt, lost):
            shown = step.lost or lost
            ours = f" ({step.lost} lost)" if shown else ""
            theirs = f" ({lost} lost)" if shown else ""
            lines.append(
                f"step {step_id}: model {step.status} after {step.attempt} attempt(s){ours}, "
                f"engine {status} after {attempt} attempt(s){theirs}"
            )
        elif status in ("completed", "recovered") and _outputs_differ(output, step.output):
            lines.append(f"step {step_id}: output model {step.output!r}, engine {output!r}")
    if model.status == observed.status == "completed" and model.output != observed.output:
        lines.append(f"run output: model {model.output!r}, engine {observed.output!r}")
    return lines
