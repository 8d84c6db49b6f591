"""The step table: the one place where `kernel/` and `steps/` meet.

Each module in `steps/` defines one `StepType` and registers it here when the `steps` package is
imported. The kernel looks step types up by name; it never imports a step module directly. The
first look-up loads the `steps` package, so a caller of the kernel needs no set-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import msgspec

    from kernel.commands import AnyCommand, DeliverEvent, FireTimer, RecordChild
    from kernel.effects import AnyEffect
    from kernel.errors import Problem
    from kernel.events import AnyEvent, ErrorInfo, StepEvent
    from kernel.state import ApprovalState, RunState
    from kernel.workflow import StepDef

STEPS_PACKAGE = "steps"


class DecideContext(Protocol):
    """What a step type's decide parts may do: read the state and decide events.

    `complete` and `fail` end the step's live attempt and apply every kernel rule that follows
    (retries, on_failure, compensation, readiness of dependents); `emit` records one of the
    step type's own events.
    """

    @property
    def state(self) -> RunState: ...

    @property
    def at_ms(self) -> int: ...

    @property
    def seed(self) -> int: ...

    def emit(self, event: AnyEvent) -> None: ...

    def complete(self, step_id: str, output: msgspec.Raw) -> None: ...

    def fail(
        self,
        step_id: str,
        error: ErrorInfo,
        *,
        retryable: bool,
        retry_after_ms: int | None = None,
    ) -> None: ...


class StepType(Protocol):
    """What a step type provides: validation, and its decide/evolve/react/resume parts."""

    @property
    def name(self) -> str: ...

    @property
    def needs_task(self) -> bool:
        """Whether `task` (the worker task name) is required for this type."""
        ...

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        """Problems with this type's own fields and `config` (`path` is e.g. `steps[3]`)."""
        ...

    def start(self, context: DecideContext, step_id: str, input: msgspec.Raw, attempt: int) -> None:
        """Decide part: begin `attempt` of a step with its resolved input (attempt 1 when it
        becomes ready, later ones when a retry is due)."""
        ...

    def fire(self, context: DecideContext, step_id: str, command: FireTimer) -> None:
        """Decide part: one of the step's own timers (kind "step") fired."""
        ...

    def signal(self, context: DecideContext, step_id: str, signal_index: int) -> None:
        """Decide part: a signal arrived while the step is active (it may consume it)."""
        ...

    def child_reported(self, context: DecideContext, step_id: str, command: RecordChild) -> None:
        """Decide part: a child run the step started reports its start or end."""
        ...

    def external_event(self, context: DecideContext, step_id: str, command: DeliverEvent) -> None:
        """Decide part: an external event arrived while the step is active (it may take it)."""
        ...

    def approval_resolved(
        self, context: DecideContext, step_id: str, approval: ApprovalState
    ) -> None:
        """Decide part: one of the step's approvals (kernel.approvals) was resolved."""
        ...

    @property
    def has_items(self) -> bool:
        """Whether the step runs items of its own (a map): task results and timers for ids
        `<step>.<key>` that are not steps are routed to `item`."""
        ...

    def task_completed(self, context: DecideContext, step_id: str, output: msgspec.Raw) -> None:
        """Decide part: the worker task of the step's live attempt returned `output` (most
        types complete the step with it; a planner reads a plan from it)."""
        ...

    def item(self, context: DecideContext, step_id: str, key: str, command: AnyCommand) -> None:
        """Decide part: a task result or timer of the step's item `key` (see `has_items`)."""
        ...

    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        """Evolve part: apply one of the step type's own events."""
        ...

    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        """React part: effects of a step event of this type (state is after the event)."""
        ...

    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        """Resume part: effects to issue again for an unfinished step after a restart."""
        ...


_table: dict[str, StepType] = {}
_loaded: list[bool] = [False]


def register(step_type: StepType) -> StepType:
    """Add a step type to the table (called once per module of `steps/`).

    Raises:
        ValueError: a different step type is already registered under that name.
    """
    existing = _table.get(step_type.name)
    if existing is not None and existing is not step_type:
        raise ValueError(f"step type {step_type.name!r} is registered twice")
    _table[step_type.name] = step_type
    return step_type


def _load() -> None:
    if not _loaded[0]:
        _loaded[0] = True
        importlib.import_module(STEPS_PACKAGE)


def names() -> tuple[str, ...]:
    """Every registered step type name, sorted."""
    _load()
    return tuple(sorted(_table))


def get(name: str) -> StepType:
    """The step type registered under `name`.

    Raises:
        KeyError: no such step type (callers validate names first; see `names()`).
    """
    _load()
    return _table[name]


def lookup(name: str) -> StepType | None:
    """The step type registered under `name`, or None."""
    _load()
    return _table.get(name)
