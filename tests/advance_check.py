"""A check every test gets (tests/conftest.py): the run's advance in `kernel.decide` looks only
at the steps a decision's events touched (`_touched`); each time it does, every step that is
ready then must be among those it looks at, for every step type the tests drive."""

from __future__ import annotations

from collections.abc import Callable

from kernel.dag_index import dag_index
from kernel.lifecycle import Builder
from kernel.state import DONE_STEP_STATUSES, RunState

Touched = Callable[[Builder, RunState, int], list[int] | None]


def ready_positions(state: RunState) -> list[int]:
    """The positions of the steps a full scan would start or skip now (pending, not a
    handler, every dependency done)."""
    index = dag_index(state.step_defs)
    steps = state.steps
    return [
        position
        for position, step_def in enumerate(state.step_defs)
        if steps[position].status == "pending"
        and step_def.id not in index.handlers
        and all(steps[dep].status in DONE_STEP_STATUSES for dep in index.dependencies[position])
    ]


def checked(touched: Touched) -> Touched:
    """`touched`, asserting that its candidates hold every ready step."""

    def check(builder: Builder, before: RunState, marked: int) -> list[int] | None:
        candidates = touched(builder, before, marked)
        if candidates is not None:
            missed = set(ready_positions(builder.state)) - set(candidates)
            assert not missed, f"ready steps {sorted(missed)} not among {candidates}"
        return candidates

    return check
