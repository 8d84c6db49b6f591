"""What a step type's decide part is given, and the outcome value it returns.

A step type decides through one function, `StepType.decide(context, step_id, given)`, where
`given` is one of the inputs below or a command addressed to the step, and returns an
`Outcome`: a tuple of actions that `kernel.decide` applies in order. A step never calls back
into the run's rules (retries, on_failure, compensation, advance): it says *what* happened
(`Emit` one of its events, `Complete` or `Fail` an attempt) and the run's rules follow from
that, applied by the kernel alone.

Ordering rule: actions after a `Complete` or `Fail` are applied only while the run's status is
still what it was before that action (a completion that failed the run, or a failure that
started compensation, drops the step's follow-up events).

Formats only: frozen values, no behaviour beyond constructors. May import `kernel.commands`,
`kernel.events` and msgspec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from kernel.commands import (
    CompleteTask,
    ControlCommand,
    DeliverEvent,
    FailTask,
    FireTimer,
    RecordChild,
    ResolveApproval,
    TaskStarted,
)
from kernel.events import AnyEvent, ErrorInfo

if TYPE_CHECKING:
    from kernel.state import RunState

# -- what a step is given ------------------------------------------------------------------


class StartAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """Begin `attempt` of the step with its resolved input (1 when it becomes ready, later
    attempts when a retry is due)."""

    input: msgspec.Raw
    attempt: int


class SignalArrived(msgspec.Struct, frozen=True, kw_only=True):
    """Signal `index` of the run (already recorded) arrived while the step is live; the step
    may consume it (then no later step is offered it)."""

    index: int


class ItemReport(msgspec.Struct, frozen=True, kw_only=True):
    """A task result or timer for `<step>.<key>`, an item the step runs that is not a step of
    the run (a map's item, an agent loop's turn or tool call)."""

    key: str
    command: TaskStarted | CompleteTask | FailTask | FireTimer


class OwnedStepsDone(msgspec.Struct, frozen=True, kw_only=True):
    """Every step the step appended to the run (its namespace `<step>.*`) is done."""


class OwnedStepFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A step the step appended to the run failed for good and nothing recovered it."""

    step_id: str
    error: ErrorInfo


StepInput = (
    StartAttempt | SignalArrived | ItemReport | OwnedStepsDone | OwnedStepFailed | CompleteTask
    | FailTask | FireTimer | RecordChild | DeliverEvent | ResolveApproval | ControlCommand
)  # fmt: skip

# -- what a step returns -------------------------------------------------------------------


class Emit(msgspec.Struct, frozen=True, kw_only=True):
    """Record one event (a common step event or one of the step type's own).

    `folded`: the states before and after the event as the step's draft already folded it
    (steps.base.Draft); the kernel takes `after` instead of folding the event again when its
    own state is `before` itself (`evolve` is pure: the same state). None: the kernel folds.
    """

    event: AnyEvent
    folded: tuple[RunState, RunState] | None = None


class Complete(msgspec.Struct, frozen=True, kw_only=True):
    """The live attempt of `step_id` succeeded with `output`."""

    step_id: str
    output: msgspec.Raw


class Fail(msgspec.Struct, frozen=True, kw_only=True):
    """The live attempt of `step_id` failed; retried under the step's policy when `retryable`
    (after `retry_after_ms` instead of the backoff when given); `timed_out` records it as
    `step.timed_out`."""

    step_id: str
    error: ErrorInfo
    retryable: bool
    retry_after_ms: int | None = None
    timed_out: bool = False


Action = Emit | Complete | Fail
Outcome = tuple[Action, ...]
NOTHING: Final[Outcome] = ()

# Which failure kinds a worker reports (kernel.commands.FailureKind) count, in one place:
# RETRYABLE_KINDS are failures the handler reported that the retry policy may retry; LOST_KINDS
# are attempts whose worker vanished: never a failure, the attempt runs again without
# consuming the policy (kernel.retry.lost_exhausted bounds them); every other kind is a
# failure for good.
RETRYABLE_KINDS: Final = frozenset({"error"})
LOST_KINDS: Final = frozenset({"lost", "heartbeat_timeout"})
