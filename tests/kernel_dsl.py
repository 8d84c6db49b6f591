"""Given/when/then for the pure kernel: `given(...).when(command).then(*events)`.

`given` takes events (folded with `evolve`) or commands (decided, then folded), so a test
builds a reachable state by saying what happened: `given(start(wf), complete("a"))`. `when`
runs `decide` once; the `then_*` methods assert on what it decided, naming the index and both
values (compared as their JSON encoding, so a diff reads like the stored bytes).

Commands made by the factories below are for run "r1"; a command whose `at_ms` is left out is
stamped by the scenario 1000 ms after the previous command or event (the first at 1000), so
times increase and a test can still state them exactly (`Then.at_ms`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Literal

import msgspec

from kernel.commands import (
    AnyCommand,
    CancelRun,
    Command,
    CompleteTask,
    FailTask,
    FailureKind,
    FireTimer,
    Rejection,
    SendSignal,
    StartRun,
    TaskStarted,
)
from kernel.decide import decide
from kernel.effects import AnyEffect, EnqueueTask
from kernel.events import AnyEvent, Event
from kernel.react import react
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, StepStatus
from kernel.timers import (
    RUN_TIMEOUT_TIMER_ID,
    retry_timer_id,
    step_timeout_timer_id,
    step_timer_id,
)
from kernel.workflow import RetryPolicy, RetryStrategy, SkipIf, SkipOp, StepDef, WorkflowDef

RUN_ID: Final = "r1"
UNSTAMPED: Final = -1  # a factory's `at_ms` when the test left it to the scenario
TICK_MS: Final = 1_000

Item = AnyEvent | AnyCommand
RejectionCode = Literal[
    "unknown_run", "run_exists", "run_finished", "unknown_step", "invalid", "already_resolved"
]

_encoder = msgspec.json.Encoder()


# --- values -------------------------------------------------------------------------------


def raw(value: object) -> msgspec.Raw:
    """`value` as raw JSON (a `msgspec.Raw` is passed through unchanged)."""
    if isinstance(value, msgspec.Raw):
        return value
    return msgspec.Raw(msgspec.json.encode(value))


def show(value: object) -> str:
    """A value as JSON text when msgspec can encode it, else its repr."""
    try:
        return _encoder.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


# --- workflows ----------------------------------------------------------------------------


def task(
    step_id: str,
    *depends_on: str,
    task_name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout_ms: int | None = None,
    skip_if: SkipIf | None = None,
    on_failure: str | None = None,
    compensate: str | None = None,
) -> StepDef:
    """A task step running the handler `task_name` (by default named like the step)."""
    return StepDef(
        id=step_id,
        type="task",
        task=task_name if task_name is not None else step_id,
        depends_on=depends_on,
        retry=retry,
        timeout_ms=timeout_ms,
        skip_if=skip_if,
        on_failure=on_failure,
        compensate=compensate,
    )


def workflow(
    *steps: StepDef,
    name: str = "wf",
    timeout_ms: int | None = None,
    max_concurrent_steps: int | None = None,
    default_retry: RetryPolicy | None = None,
) -> WorkflowDef:
    """A workflow of `steps`, built directly (no parser)."""
    return WorkflowDef(
        name=name,
        steps=steps,
        timeout_ms=timeout_ms,
        max_concurrent_steps=max_concurrent_steps,
        default_retry=default_retry,
    )


def retry(
    max_attempts: int,
    strategy: RetryStrategy = "fixed",
    *,
    initial_delay_ms: int = 1_000,
    max_delay_ms: int = 0,
    multiplier: float = 2.0,
    jitter: float = 0.0,
) -> RetryPolicy:
    """A retry policy; fixed 1 s delays unless told otherwise."""
    return RetryPolicy(
        max_attempts=max_attempts,
        strategy=strategy,
        initial_delay_ms=initial_delay_ms,
        max_delay_ms=max_delay_ms,
        multiplier=multiplier,
        jitter=jitter,
    )


def skip_if(step_id: str, field: str, op: SkipOp, value: object) -> SkipIf:
    """Skip when `step_id`'s output at `field` compares true against `value`."""
    return SkipIf(step_id=step_id, field=field, op=op, value=raw(value))


# --- commands -----------------------------------------------------------------------------


def start(
    wf: WorkflowDef,
    input: object = None,
    *,
    run_id: str = RUN_ID,
    at_ms: int = UNSTAMPED,
    seed: int = 0,
) -> StartRun:
    return StartRun(run_id=run_id, at_ms=at_ms, seed=seed, workflow=wf, input=raw(input))


def started(
    step_id: str,
    attempt: int = 1,
    *,
    worker_id: str = "w1",
    run_id: str = RUN_ID,
    at_ms: int = UNSTAMPED,
) -> TaskStarted:
    return TaskStarted(
        run_id=run_id, at_ms=at_ms, step_id=step_id, attempt=attempt, worker_id=worker_id
    )


def complete(
    step_id: str,
    output: object = None,
    *,
    attempt: int = 1,
    run_id: str = RUN_ID,
    at_ms: int = UNSTAMPED,
) -> CompleteTask:
    return CompleteTask(
        run_id=run_id, at_ms=at_ms, step_id=step_id, attempt=attempt, output=raw(output)
    )


def fail(
    step_id: str,
    error: str = "boom",
    *,
    attempt: int = 1,
    kind: FailureKind = "error",
    retry_after_ms: int | None = None,
    seed: int = 0,
    run_id: str = RUN_ID,
    at_ms: int = UNSTAMPED,
) -> FailTask:
    return FailTask(
        run_id=run_id,
        at_ms=at_ms,
        seed=seed,
        step_id=step_id,
        attempt=attempt,
        error=error,
        kind=kind,
        retry_after_ms=retry_after_ms,
    )


def fire_retry(
    step_id: str, attempt: int, *, run_id: str = RUN_ID, at_ms: int = UNSTAMPED
) -> FireTimer:
    """The retry timer of `attempt` (the attempt it starts) firing."""
    return FireTimer(
        run_id=run_id,
        at_ms=at_ms,
        timer_id=retry_timer_id(step_id, attempt),
        kind="retry",
        step_id=step_id,
        attempt=attempt,
    )


def fire_step_timeout(
    step_id: str, attempt: int = 1, *, seed: int = 0, run_id: str = RUN_ID, at_ms: int = UNSTAMPED
) -> FireTimer:
    return FireTimer(
        run_id=run_id,
        at_ms=at_ms,
        seed=seed,
        timer_id=step_timeout_timer_id(step_id, attempt),
        kind="step_timeout",
        step_id=step_id,
        attempt=attempt,
    )


def fire_run_timeout(*, run_id: str = RUN_ID, at_ms: int = UNSTAMPED) -> FireTimer:
    return FireTimer(run_id=run_id, at_ms=at_ms, timer_id=RUN_TIMEOUT_TIMER_ID, kind="run_timeout")


def cancel(reason: str = "", *, run_id: str = RUN_ID, at_ms: int = UNSTAMPED) -> CancelRun:
    return CancelRun(run_id=run_id, at_ms=at_ms, reason=reason)


def step_of(
    step_id: str, step_type: str, config: object, *depends_on: str, timeout_ms: int | None = None
) -> StepDef:
    """A step of any type with its config (as JSON), built directly (no parser)."""
    return StepDef(
        id=step_id,
        type=step_type,
        depends_on=depends_on,
        config=raw(config),
        timeout_ms=timeout_ms,
    )


def fire_step_timer(
    step_id: str, attempt: int = 1, *, run_id: str = RUN_ID, at_ms: int = UNSTAMPED
) -> FireTimer:
    """A step type's own timer (a sleep's wake-up) firing."""
    return FireTimer(
        run_id=run_id,
        at_ms=at_ms,
        timer_id=step_timer_id(step_id, attempt),
        kind="step",
        step_id=step_id,
        attempt=attempt,
    )


def signal(
    name: str,
    payload: object = None,
    *,
    signal_id: str = "",
    run_id: str = RUN_ID,
    at_ms: int = UNSTAMPED,
) -> SendSignal:
    return SendSignal(
        run_id=run_id, at_ms=at_ms, name=name, payload=raw(payload), signal_id=signal_id
    )


# --- scenarios ----------------------------------------------------------------------------


def _event_at_ms(event: AnyEvent) -> int:
    at_ms = getattr(event, "at_ms", None)
    assert isinstance(at_ms, int), f"{type(event).__name__} has no at_ms"
    return at_ms


def _stamp(command: AnyCommand, last_at_ms: int) -> AnyCommand:
    if command.at_ms != UNSTAMPED:
        return command
    return msgspec.structs.replace(command, at_ms=last_at_ms + TICK_MS)


def decided_events(state: RunState, command: AnyCommand) -> tuple[AnyEvent, ...]:
    """`decide` of a command that must apply (a Rejection fails the test)."""
    result = decide(state, command)
    assert not isinstance(result, Rejection), (
        f"given: {show(command)} was rejected: {result.code}: {result.message}"
    )
    return result


class Given:
    """A run state reached by folding events or deciding commands; `when` decides on it."""

    def __init__(self, items: tuple[Item, ...]) -> None:
        state = INITIAL_STATE
        last_at_ms = 0
        history: list[tuple[AnyCommand | None, tuple[AnyEvent, ...]]] = []
        for item in items:
            if isinstance(item, Event):
                state = evolve(state, item)
                last_at_ms = _event_at_ms(item)
                history.append((None, (item,)))
                continue
            assert isinstance(item, Command), f"given takes events or commands, not {item!r}"
            command = _stamp(item, last_at_ms)
            last_at_ms = command.at_ms
            events = decided_events(state, command)
            for event in events:
                state = evolve(state, event)
            history.append((command, events))
        self.state = state
        self.last_at_ms = last_at_ms
        self.history = tuple(history)

    @property
    def events(self) -> tuple[AnyEvent, ...]:
        """Every event of the given history, in order."""
        return tuple(event for _, events in self.history for event in events)

    @property
    def next_at_ms(self) -> int:
        """The time a `when` command without `at_ms` is stamped with."""
        return self.last_at_ms + TICK_MS

    def when(self, command: AnyCommand) -> Then:
        """Decide `command` on the given state."""
        stamped = _stamp(command, self.last_at_ms)
        return Then(self.state, stamped, decide(self.state, stamped))


def given(*items: Item) -> Given:
    """A state from events (folded) and commands (decided and folded), in order."""
    return Given(items)


class Then:
    """What `decide` made of one command, with assertions that return `self` to chain."""

    def __init__(
        self, before: RunState, command: AnyCommand, result: tuple[AnyEvent, ...] | Rejection
    ) -> None:
        self.before = before
        self.command = command
        self.result = result

    @property
    def at_ms(self) -> int:
        """The time stamped on the command (events decided from it carry it)."""
        return self.command.at_ms

    @property
    def events(self) -> tuple[AnyEvent, ...]:
        assert not isinstance(self.result, Rejection), (
            f"expected events, got Rejection {self.result.code}: {self.result.message}"
        )
        return self.result

    @property
    def state(self) -> RunState:
        """The state after the decided events."""
        state = self.before
        for event in self.events:
            state = evolve(state, event)
        return state

    @property
    def effects(self) -> tuple[AnyEffect, ...]:
        """`react` over each decided event, with the state just after that event."""
        state = self.before
        effects: list[AnyEffect] = []
        for event in self.events:
            state = evolve(state, event)
            effects.extend(react(state, event))
        return tuple(effects)

    def then(self, *expected: AnyEvent) -> Then:
        """The decided events are exactly `expected`, in order."""
        _assert_sequence("event", self.events, expected)
        return self

    def then_nothing(self) -> Then:
        """The command decided to no events (and was not rejected)."""
        return self.then()

    def then_includes(self, *expected: AnyEvent) -> Then:
        """Each of `expected` is among the decided events (order not checked)."""
        actual = [show(event) for event in self.events]
        for index, event in enumerate(expected):
            assert show(event) in actual, (
                f"expected[{index}] {show(event)} was not decided; decided:\n  "
                + "\n  ".join(actual)
            )
        return self

    def then_lacks(self, event_type: type[Event], **fields: object) -> Then:
        """No decided event is of `event_type` with all of `fields` equal."""
        for index, event in enumerate(self.events):
            if isinstance(event, event_type) and all(
                getattr(event, name) == value for name, value in fields.items()
            ):
                raise AssertionError(
                    f"events[{index}] is {show(event)}; expected no {event_type.__name__}"
                    f" with {fields}"
                )
        return self

    def then_rejected(self, code: RejectionCode) -> Then:
        """The command was refused with `code` (and a message)."""
        assert isinstance(self.result, Rejection), (
            f"expected Rejection {code!r}, got events {show(self.result)}"
        )
        assert self.result.code == code, (
            f"expected Rejection {code!r}, got {self.result.code!r}: {self.result.message}"
        )
        assert self.result.message, "a Rejection says why"
        assert self.result.run_id == self.command.run_id
        return self

    def then_state(
        self,
        predicate: Callable[[RunState], bool] | None = None,
        /,
        *,
        steps: Mapping[str, StepStatus] | None = None,
        **fields: object,
    ) -> Then:
        """The state after the events satisfies `predicate`, step statuses and fields."""
        state = self.state
        if predicate is not None:
            assert predicate(state), f"state does not satisfy the predicate: {show(state)}"
        for name, value in fields.items():
            actual = getattr(state, name)
            assert actual == value, f"state.{name} is {show(actual)}, expected {show(value)}"
        for step_id, status in (steps or {}).items():
            step = state.step(step_id)
            assert step is not None, f"state has no step {step_id!r}"
            assert step.status == status, (
                f"step {step_id!r} is {step.status!r}, expected {status!r}"
            )
        return self

    def then_effects(self, *expected: AnyEffect) -> Then:
        """`react` over the decided events gives exactly `expected`, in order (task messages
        compared without `history_events`, the stamp test_kernel_react checks on its own)."""
        _assert_sequence("effect", tuple(map(unstamped, self.effects)), expected)
        return self


def unstamped(effect: AnyEffect) -> AnyEffect:
    if isinstance(effect, EnqueueTask):
        return msgspec.structs.replace(effect, history_events=0)
    return effect


def _assert_sequence(what: str, actual: tuple[object, ...], expected: tuple[object, ...]) -> None:
    shown_actual = [show(item) for item in actual]
    shown_expected = [show(item) for item in expected]
    for index, (got, want) in enumerate(zip(shown_actual, shown_expected, strict=False)):
        assert got == want, f"{what}s[{index}] differs:\n  actual:   {got}\n  expected: {want}"
    if len(actual) != len(expected):
        extra = shown_actual[len(expected) :]
        missing = shown_expected[len(actual) :]
        raise AssertionError(
            f"{len(actual)} {what}s decided, {len(expected)} expected"
            + "".join(
                f"\n  unexpected {what}s[{len(expected) + i}]: {e}" for i, e in enumerate(extra)
            )
            + "".join(f"\n  missing {what}s[{len(actual) + i}]: {m}" for i, m in enumerate(missing))
        )
