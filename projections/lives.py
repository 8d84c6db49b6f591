"""A run id's lives: a run purged (`dagnats run delete`, retention) may have its id started
again (README "Retention and deleting runs and workflows"). A projection that kept the old
run's state, or its rows, then sees a `run.started` for a run it knows: the first event of a
new life, folded from the initial state, never onto the old one (which `evolve` refuses)."""

from __future__ import annotations

from kernel.events import AnyEvent, RunStarted
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState


def begins_life(state: RunState, event: AnyEvent) -> bool:
    """Whether `event` starts a new life of a run whose state (of its old life) is `state`."""
    return type(event) is RunStarted and state.status != "new"


def fold(state: RunState, event: AnyEvent) -> RunState:
    """`evolve`, a `run.started` on a started run beginning from the initial state."""
    return evolve(INITIAL_STATE if begins_life(state, event) else state, event)
