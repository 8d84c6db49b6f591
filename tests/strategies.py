"""Hypothesis strategies for the kernel: random valid DAG workflows, and reachable runs of them.

Workflows are built directly as `kernel.workflow.WorkflowDef` values (no parser involved). Runs
are produced by a `Driver` that looks at the current state and offers only commands a real
shell could send at that point (a worker's result for a live or stale attempt, a timer that
`react` armed, a duplicate of an earlier command, a cancel); every event comes from `decide`,
never by hand, so every history is reachable (STYLE.md rule 19).

`run_commands(workflow, commands)` (and `replay`, which wraps it in a `Run`) sends a fixed list
of commands through the same driver: the property tests' explicit examples. The state machine
drives a `Driver` itself, one rule per kind of command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeVar

import msgspec
from hypothesis import strategies as st

from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    FailTask,
    FailureKind,
    FireTimer,
    Rejection,
    StartRun,
    TaskStarted,
)
from kernel.decide import decide
from kernel.effects import AnyEffect, ArmTimer, CancelTimer
from kernel.events import AnyEvent
from kernel.react import react, resume
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from kernel.workflow import RetryPolicy, RetryStrategy, SkipIf, SkipOp, StepDef, WorkflowDef

RUN_ID: Final = "run-1"
STEPS_MAX: Final = 12
COMMANDS_MAX: Final = 60
SEED_MAX: Final = 2**64 - 1
INT_MAX: Final = 2**63 - 1

# Fields a skip_if reads. Outputs sometimes carry them so conditions both hold and do not.
SKIP_FIELDS: Final = ("flag", "n", "label", "nested.n")
SKIP_OPS: Final[tuple[SkipOp, ...]] = ("==", "!=", "<", ">", "<=", ">=")
RETRY_STRATEGIES: Final[tuple[RetryStrategy, ...]] = ("fixed", "linear", "exponential")
FAILURE_KINDS: Final[tuple[FailureKind, ...]] = (
    "error",
    "non_retryable",
    "heartbeat_timeout",
    "invalid_output",
    "lost",
)

Decided = tuple[AnyEvent, ...] | Rejection
T = TypeVar("T")
CommandKind = Literal[
    "complete", "start_task", "fail", "timer", "duplicate", "stale", "cancel", "start_again"
]
Action = CommandKind | Literal["restart"]

# ---------------------------------------------------------------------------------------------
# Workflows


step_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    """A retry policy: 1..4 attempts, any strategy, bounded delays, optional jitter."""
    initial_delay_ms = draw(st.integers(0, 60_000))
    capped = draw(st.booleans())
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 4)),
        strategy=draw(st.sampled_from(RETRY_STRATEGIES)),
        initial_delay_ms=initial_delay_ms,
        # 0 (only the global cap) or at least the initial delay, as validation requires.
        max_delay_ms=initial_delay_ms + draw(st.integers(0, 120_000)) if capped else 0,
        multiplier=draw(st.floats(1.0, 10.0, allow_nan=False, allow_infinity=False)),
        jitter=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0, allow_nan=False))),
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=8),
)


_labels = st.sampled_from(("", "a", "b", "zz"))
# Values of the fields skip_if conditions read: few, so conditions often hold and often not.
_skip_field_values = st.one_of(st.booleans(), st.integers(-5, 5), _labels, st.none())


def _skip_value(op: SkipOp) -> st.SearchStrategy[object]:
    if op in ("==", "!="):
        return st.one_of(_skip_field_values, json_scalars)
    return st.one_of(st.integers(-5, 5), _labels, st.floats(-5.0, 5.0))


@st.composite
def skip_conditions(draw: st.DrawFn, dependencies: Sequence[str]) -> SkipIf:
    """A skip_if on a field of one of `dependencies` (the field may be missing at run time)."""
    op = draw(st.sampled_from(SKIP_OPS))
    value = draw(_skip_value(op))
    return SkipIf(
        step_id=draw(st.sampled_from(tuple(dependencies))),
        field=draw(st.sampled_from(SKIP_FIELDS)),
        op=op,
        value=msgspec.Raw(msgspec.json.encode(value)),
    )


@st.composite
def workflows(draw: st.DrawFn, *, steps_max: int = STEPS_MAX) -> WorkflowDef:
    """A valid workflow of 1..`steps_max` steps.

    Body steps depend only on body steps generated before them (so the DAG is acyclic); the
    written order is a random permutation of that. Handler steps have no dependencies, nobody
    depends on them, and each is the on_failure or compensate target of exactly one body step.
    """
    total = draw(st.integers(1, steps_max))
    handlers_count = draw(st.integers(0, (total - 1) // 2))
    body_count = total - handlers_count
    names = draw(st.lists(step_names, min_size=total, max_size=total, unique=True))
    body_ids, handler_names = names[:body_count], names[body_count:]
    slots = [(body_id, role) for body_id in body_ids for role in ("on_failure", "compensate")]
    targets = draw(st.permutations(slots))[:handlers_count]
    handler_of = {slot: handler for slot, handler in zip(targets, handler_names, strict=True)}
    steps: list[StepDef] = []
    for index, step_id in enumerate(body_ids):
        earlier = body_ids[:index]
        depends_on: tuple[str, ...] = ()
        if earlier:
            depends_on = tuple(
                draw(st.lists(st.sampled_from(earlier), unique=True, max_size=min(3, index)))
            )
        skip_if = None
        wants_skip_if = draw(st.booleans())
        if depends_on and wants_skip_if:
            skip_if = draw(skip_conditions(depends_on))
        steps.append(
            StepDef(
                id=step_id,
                task=draw(st.sampled_from(("fetch", "summarize", "store"))),
                depends_on=depends_on,
                retry=draw(st.none() | retry_policies()),
                timeout_ms=draw(st.none() | st.integers(1, 600_000)),
                skip_if=skip_if,
                on_failure=handler_of.get((step_id, "on_failure")),
                compensate=handler_of.get((step_id, "compensate")),
            )
        )
    for handler_id in handler_names:
        steps.append(
            StepDef(
                id=handler_id,
                task="handle",
                retry=draw(st.none() | retry_policies()),
                timeout_ms=draw(st.none() | st.integers(1, 600_000)),
            )
        )
    ordered: list[StepDef] = steps
    if draw(st.booleans()):
        ordered = draw(st.permutations(steps))
    return WorkflowDef(
        name=draw(step_names),
        steps=tuple(ordered),
        default_retry=draw(st.none() | retry_policies()),
        timeout_ms=draw(st.none() | st.integers(1, 10_000_000)),
        max_concurrent_steps=draw(st.none() | st.integers(1, 4)),
    )


def handler_ids(workflow: WorkflowDef) -> frozenset[str]:
    """The ids of every on_failure and compensate handler step of `workflow`."""
    ids = {s.on_failure for s in workflow.steps if s.on_failure is not None}
    ids |= {s.compensate for s in workflow.steps if s.compensate is not None}
    return frozenset(ids)


def retry_policy(workflow: WorkflowDef, step: StepDef) -> RetryPolicy:
    """The retry policy that applies to `step` (its own, else the workflow's default)."""
    if step.retry is not None:
        return step.retry
    return workflow.default_retry or RetryPolicy()


# ---------------------------------------------------------------------------------------------
# Payloads

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=5), children, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def outputs(draw: st.DrawFn, *, oversize: bool = True) -> msgspec.Raw:
    """A worker's JSON output: any JSON, often an object with the fields skip_if conditions read,
    and (with `oversize`) rarely one over the payload limit (1 MiB) or over half of it (so two
    dependencies or a compensation input go over)."""
    shapes = ("fields", "fields", "any", "huge", "half") if oversize else ("fields", "any")
    shape = draw(st.sampled_from(shapes))
    if shape == "huge" and draw(st.integers(0, 9)) == 0:
        return msgspec.Raw(b'"' + b"x" * 1_048_576 + b'"')
    if shape == "half" and draw(st.integers(0, 4)) == 0:
        return msgspec.Raw(b'{"blob":"' + b"y" * 600_000 + b'"}')
    if shape == "any":
        return msgspec.Raw(msgspec.json.encode(draw(json_values)))
    document: dict[str, object] = {}
    for name in ("flag", "n", "label"):
        if draw(st.integers(0, 3)):  # present three times in four
            document[name] = draw(_skip_field_values)
    if draw(st.booleans()):
        document["nested"] = {"n": draw(st.integers(-5, 5))}
    return msgspec.Raw(msgspec.json.encode(document))


@st.composite
def error_messages(draw: st.DrawFn) -> str:
    """An error text: short, or (rarely) longer than the 8 KiB limit, with multi-byte chars."""
    if draw(st.integers(0, 19)) == 0:
        return "é" * draw(st.integers(4_000, 5_000))
    return draw(st.text(max_size=20))


time_steps = st.one_of(st.just(0), st.integers(1, 1_000), st.integers(1_000, 100_000_000))
seeds = st.integers(0, SEED_MAX)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class Record:
    """One command as the engine handled it: the decision, the states around it, the effects."""

    command: AnyCommand
    decided: Decided
    before: RunState
    after: RunState
    effects: tuple[AnyEffect, ...]
    armed: frozenset[str]  # timers armed by `react` and neither fired nor cancelled, after it

    @property
    def events(self) -> tuple[AnyEvent, ...]:
        """The events appended for this command (none for a rejection)."""
        return self.decided if isinstance(self.decided, tuple) else ()


@dataclass
class Driver:
    """One run as the engine sees it: state, the records so far, the timers `react` armed.

    `send` is exactly the engine's loop for one command: decide, evolve each event, react to
    it, and track ArmTimer/CancelTimer. It never makes events itself.
    """

    workflow: WorkflowDef
    run_id: str = RUN_ID
    state: RunState = INITIAL_STATE
    now: int = 0
    records: list[Record] = field(default_factory=list)
    armed: dict[str, FireTimer] = field(default_factory=dict)

    def send(self, command: AnyCommand) -> Record:
        """Decide `command` on the current state and apply what it decides."""
        before = self.state
        if isinstance(command, FireTimer):
            self.armed.pop(command.timer_id, None)  # a fired timer is gone
        decided = decide(before, command)
        state = before
        effects: list[AnyEffect] = []
        if isinstance(decided, tuple):
            for event in decided:
                state = evolve(state, event)
                effects.extend(react(state, event))
        for effect in effects:
            if isinstance(effect, ArmTimer):
                self.armed[effect.timer_id] = effect.command
            elif isinstance(effect, CancelTimer):
                self.armed.pop(effect.timer_id, None)
        self.state = state
        self.now = max(self.now, command.at_ms)
        record = Record(
            command=command,
            decided=decided,
            before=before,
            after=state,
            effects=tuple(effects),
            armed=frozenset(self.armed),
        )
        self.records.append(record)
        return record

    def restart(self) -> None:
        """An engine restart: `resume(state)` arms its timers again (a durable schedule that is
        not re-armed stays armed; arming an id again replaces it)."""
        for effect in resume(self.state):
            if isinstance(effect, ArmTimer):
                self.armed[effect.timer_id] = effect.command

    def start(self, *, at_ms: int = 0, seed: int = 0, input: bytes = b"null") -> Record:
        """Send the run's StartRun."""
        command = StartRun(
            run_id=self.run_id,
            at_ms=at_ms,
            seed=seed,
            workflow=self.workflow,
            input=msgspec.Raw(input),
        )
        return self.send(command)

    @property
    def events(self) -> tuple[AnyEvent, ...]:
        """Every event appended so far, in order."""
        return tuple(event for record in self.records for event in record.events)

    def live_attempts(self) -> tuple[tuple[str, int, str], ...]:
        """(step id, attempt, status) of every scheduled or running attempt."""
        return tuple(
            (step.step_id, step.attempt, step.status)
            for step in self.state.steps
            if step.status in ("scheduled", "running")
        )

    def stale_attempts(self) -> tuple[tuple[str, int], ...]:
        """(step id, attempt) pairs a worker may still report on that are no longer live."""
        stale: list[tuple[str, int]] = []
        for step in self.state.steps:
            live = step.status in ("scheduled", "running")
            first = 1
            last = step.attempt - 1 if live else step.attempt
            stale.extend((step.step_id, attempt) for attempt in range(first, last + 1))
        return tuple(stale)

    def available(self, *, complete_only: bool = False) -> tuple[CommandKind, ...]:
        """The kinds of command that can be sent now."""
        if complete_only:
            return ("complete", "start_task") if self.live_attempts() else ()
        kinds: list[CommandKind] = []
        if self.live_attempts():
            kinds.extend(("complete", "start_task", "fail"))
        if self.armed:
            kinds.append("timer")
        if self.records:
            kinds.append("duplicate")
        if self.stale_attempts():
            kinds.append("stale")
        kinds.extend(("cancel", "start_again"))
        return tuple(kinds)


def run_commands(workflow: WorkflowDef, commands: Sequence[AnyCommand]) -> tuple[Record, ...]:
    """Send `commands` in order to a fresh run of `workflow`; return what each decided."""
    driver = Driver(workflow)
    for command in commands:
        driver.send(command)
    return tuple(driver.records)


# ---------------------------------------------------------------------------------------------
# Drawing one command


class Draw(Protocol):
    """What draws a value: `st.DrawFn` in a composite, `DataObject.draw` in a state machine."""

    def __call__(self, strategy: st.SearchStrategy[T], label: object = None) -> T: ...


def _at(draw: Draw, driver: Driver) -> int:
    return min(driver.now + draw(time_steps), INT_MAX)


def draw_command(
    draw: Draw, driver: Driver, kind: CommandKind, *, oversize: bool = True
) -> AnyCommand:
    """One command of `kind`, looking at the driver's state. Commands a client or worker sends
    are stamped at or after the latest time seen; a fired timer or an exact redelivery carries
    the at_ms it was made with. `oversize` allows outputs over the payload limit."""
    run_id = driver.run_id
    if kind in ("complete", "start_task", "fail"):
        step_id, attempt, _status = draw(st.sampled_from(driver.live_attempts()))
        return _result(draw, driver, kind, step_id, attempt, oversize=oversize)
    if kind == "stale":
        step_id, attempt = draw(st.sampled_from(driver.stale_attempts()))
        return _result(draw, driver, draw(st.sampled_from(("complete", "fail"))), step_id, attempt)
    if kind == "timer":
        # The schedule delivers the stored command as it is: its at_ms is the due time (earlier
        # than now when the timer fires late) and its seed the one react derived.
        return driver.armed[draw(st.sampled_from(sorted(driver.armed)))]
    if kind == "duplicate":
        earlier = draw(st.sampled_from(driver.records)).command
        if draw(st.booleans()):
            return earlier  # an exact redelivery
        return msgspec.structs.replace(earlier, at_ms=max(driver.now, earlier.at_ms))
    if kind == "cancel":
        reason = draw(error_messages())
        return CancelRun(run_id=run_id, at_ms=_at(draw, driver), seed=draw(seeds), reason=reason)
    if kind == "start_again":
        other = draw(st.booleans())
        return StartRun(
            run_id=run_id,
            at_ms=_at(draw, driver),
            workflow=driver.workflow,
            input=msgspec.Raw(b'{"other":true}' if other else b"null"),
        )
    raise AssertionError(f"unknown command kind {kind!r}")


def _result(
    draw: Draw, driver: Driver, kind: str, step_id: str, attempt: int, *, oversize: bool = True
) -> AnyCommand:
    run_id = driver.run_id
    at_ms = _at(draw, driver)
    seed = draw(seeds)
    if kind == "start_task":
        worker = draw(st.sampled_from(("w1", "w2")))
        return TaskStarted(
            run_id=run_id,
            at_ms=at_ms,
            seed=seed,
            step_id=step_id,
            attempt=attempt,
            worker_id=worker,
        )
    if kind == "complete":
        return CompleteTask(
            run_id=run_id,
            at_ms=at_ms,
            seed=seed,
            step_id=step_id,
            attempt=attempt,
            output=draw(outputs(oversize=oversize)),
        )
    retry_after = draw(st.none() | st.integers(0, 100_000) | st.just(10**15))
    return FailTask(
        run_id=run_id,
        at_ms=at_ms,
        seed=seed,
        step_id=step_id,
        attempt=attempt,
        error=draw(error_messages()),
        kind=draw(st.sampled_from(FAILURE_KINDS)),
        traceback=draw(st.sampled_from(("", "Traceback (most recent call last): ..."))),
        retry_after_ms=retry_after,
    )


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Run:
    """A generated run: the workflow and every command the driver sent, with its record."""

    workflow: WorkflowDef
    records: tuple[Record, ...]

    @property
    def commands(self) -> tuple[AnyCommand, ...]:
        return tuple(record.command for record in self.records)

    @property
    def events(self) -> tuple[AnyEvent, ...]:
        return tuple(event for record in self.records for event in record.events)

    @property
    def final(self) -> RunState:
        return self.records[-1].after if self.records else INITIAL_STATE

    def __repr__(self) -> str:
        """The counterexample as hypothesis prints it: the workflow and the commands to replay."""
        workflow = show(self.workflow)
        lines = [f"workflow={workflow}", "commands=["]
        lines.extend(
            f"    {show(r.command).replace(workflow, 'workflow')},  # -> {_short(r.decided)}"
            for r in self.records
        )
        lines.append("]")
        return "Run(\n" + "\n".join(lines) + "\n)"

    def _repr_pretty_(self, printer: _Printer, cycle: bool) -> None:
        printer.text(repr(self))


class _Printer(Protocol):
    def text(self, text: str) -> None: ...


def show(value: msgspec.Struct) -> str:
    """A short constructor-like text of a Struct, raw JSON payloads shown as (cut) bytes."""
    parts = []
    for field_info in msgspec.structs.fields(value):
        item = getattr(value, field_info.name)
        if item == field_info.default:
            continue
        if isinstance(item, msgspec.Raw):
            text = bytes(item)
            shown = repr(text[:40] + b"..." if len(text) > 40 else text)
        elif isinstance(item, msgspec.Struct):
            shown = show(item)
        elif isinstance(item, tuple) and item and isinstance(item[0], msgspec.Struct):
            shown = "(" + ", ".join(show(element) for element in item) + ",)"
        elif isinstance(item, str) and len(item) > 40:
            shown = repr(item[:40]) + f"+{len(item) - 40}"
        else:
            shown = repr(item)
        parts.append(f"{field_info.name}={shown}")
    return f"{type(value).__name__}({', '.join(parts)})"


def _short(decided: Decided) -> str:
    if isinstance(decided, Rejection):
        return f"Rejection({decided.code})"
    return "[" + ", ".join(type(event).__name__ for event in decided) + "]"


# How often each kind is chosen when available: mostly progress, sometimes trouble.
KIND_WEIGHTS: Final[dict[Action, int]] = {
    "complete": 8,
    "start_task": 3,
    "fail": 3,
    "timer": 3,
    "duplicate": 2,
    "stale": 2,
    "cancel": 1,
    "start_again": 1,
    "restart": 1,
}


def _weighted_kind(draw: st.DrawFn, kinds: tuple[Action, ...]) -> Action:
    """A kind drawn by KIND_WEIGHTS (shrinks towards the first available kind)."""
    total = sum(KIND_WEIGHTS[kind] for kind in kinds)
    pick = draw(st.integers(0, total - 1))
    for kind in kinds:
        pick -= KIND_WEIGHTS[kind]
        if pick < 0:
            return kind
    raise AssertionError("weights do not cover the pick")


def replay(workflow: WorkflowDef, commands: Sequence[AnyCommand]) -> Run:
    """A `Run` from a fixed list of commands (for explicit examples)."""
    return Run(workflow=workflow, records=run_commands(workflow, commands))


@st.composite
def runs(
    draw: st.DrawFn,
    *,
    workflow: WorkflowDef | None = None,
    commands_max: int = COMMANDS_MAX,
    complete_only: bool = False,
    after_terminal_max: int = 6,
) -> Run:
    """A reachable run: StartRun, then commands chosen by looking at the state each time.

    With `complete_only`, every live attempt is only started or completed (no failures, no
    timers, no cancel), until nothing is live.
    """
    if workflow is None:
        workflow = draw(workflows())
    driver = Driver(workflow)
    driver.start(at_ms=draw(st.integers(0, 10**12)), seed=draw(seeds), input=b'{"q":1}')
    after_terminal = draw(st.integers(0, after_terminal_max))
    for _ in range(commands_max):
        if is_terminal(driver.state):
            if after_terminal == 0:
                break
            after_terminal -= 1
        kinds = driver.available(complete_only=complete_only)
        if not kinds:
            break
        if not complete_only and not draw(st.integers(0, 40)):
            break  # sometimes stop early, anywhere
        kind = _weighted_kind(draw, kinds if complete_only else (*kinds, "restart"))
        if kind == "restart":
            driver.restart()
            continue
        command = draw_command(draw, driver, kind, oversize=not complete_only)
        driver.send(command)
    return Run(workflow=workflow, records=tuple(driver.records))
