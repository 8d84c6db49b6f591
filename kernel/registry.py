"""The step table: the one place where `kernel/` and `steps/` meet.

Each module in `steps/` defines one `StepType` and registers it here when the `steps` package is
imported. The kernel looks step types up by name; it never imports a step module directly. The
first look-up loads the `steps` package, so a caller of the kernel needs no set-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kernel.commands import Rejection
    from kernel.effects import AnyEffect
    from kernel.errors import Problem
    from kernel.events import AnyEvent, StepEvent
    from kernel.outcome import Outcome, StepInput
    from kernel.state import RunState
    from kernel.workflow import StepDef

STEPS_PACKAGE = "steps"


class DecideContext(Protocol):
    """What a step type's decide part may read: the run's state and the command's stamps.

    Read-only: a step decides by returning an `Outcome` (kernel.outcome), never by changing
    the run through its context.
    """

    @property
    def state(self) -> RunState: ...

    @property
    def at_ms(self) -> int: ...

    @property
    def seed(self) -> int: ...


class StepType(Protocol):
    """What a step type provides: validation, a typed config, and its four parts.

    `decide` is one function of (context, step id, what it is given); it returns the outcome
    (kernel.outcome) or, for a command whose sender must learn why it is refused, a Rejection.
    """

    @property
    def name(self) -> str: ...

    @property
    def needs_task(self) -> bool:
        """Whether `task` (the worker task name) is required for this type."""
        ...

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        """Problems with this type's own fields and `config` (`path` is e.g. `steps[3]`)."""
        ...

    def read_config(self, step: StepDef) -> object:
        """The step's typed config (a frozen Struct; None for a type without config). Called
        once per step definition value (`StepDef.settings` caches it); the config was
        validated when the workflow was accepted."""
        ...

    def decide(self, context: DecideContext, step_id: str, given: StepInput) -> Outcome | Rejection:
        """Decide part: what `given` means for the step (an outcome; `()` for nothing)."""
        ...

    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        """Evolve part: apply one of the step type's own events, and count it: the state
        returned has `event_count + 1` (one `replace` of the run does both)."""
        ...

    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        """React part: effects of an event of this type's step, or of the run's end while
        the step is live (state is after the event)."""
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
    """Import the `steps` package once. The flag is set only after the import finished, so
    no caller (another thread starting up meanwhile) can see a half-filled table: a second
    caller imports too, and the import system makes it wait for the first."""
    if not _loaded[0]:
        importlib.import_module(STEPS_PACKAGE)
        assert _table, "importing the steps package registers the step types"
        _loaded[0] = True


def names() -> tuple[str, ...]:
    """Every registered step type name, sorted."""
    _load()
    return tuple(sorted(_table))


def get(name: str) -> StepType:
    """The step type registered under `name`.

    Raises:
        KeyError: no such step type (callers validate names first; see `names()`).
    """
    found = _table.get(name)  # (loaded: one look-up)
    if found is not None:
        return found
    _load()
    return _table[name]


def lookup(name: str) -> StepType | None:
    """The step type registered under `name`, or None."""
    _load()
    return _table.get(name)
