"""What a run's DAG says about its steps, computed once per DAG: the dependencies and
dependents of each step by position, and the handler roles. Pure; no I/O.

A state update keeps the same `step_defs` tuple object (only a planner's append makes a new
one), so one index serves every decision of a run: `kernel.decide` looks only at the steps an
event touched and their dependents (the reverse-dependency index) instead of every step. Keyed
by the tuple's id and checked by identity (the entry holds the tuple, so its id is not reused
while cached): a pure memo, cleared when full, the same answers as a scan of `step_defs`.

Each run's `step_defs` is its own tuple (decoded from its RunStarted), so behind that memo the
index is found by the DAG itself: the fields it is built from (each step's id, depends_on,
on_failure, compensate), in order. Runs of one workflow definition share one index, built
once; two DAGs that differ in any of those fields never do. At most `limits.dags_cached_max`
DAGs are kept, the oldest going first.
"""

from __future__ import annotations

from typing import Literal

from kernel import limits
from kernel.state import DONE_STEP_STATUSES, StepState
from kernel.workflow import StepDef

HandlerRole = tuple[Literal["on_failure", "compensate"], str]


class DagIndex:
    """The DAG of one `step_defs` tuple, by position (read-only once built)."""

    __slots__ = ("body_reversed", "dependencies", "dependents", "handlers", "roles")

    def __init__(self, step_defs: tuple[StepDef, ...]) -> None:
        positions: dict[str, int] = {}
        for index, step_def in enumerate(step_defs):
            positions.setdefault(step_def.id, index)  # the first, as tuple.index
        roles: dict[str, HandlerRole] = {}
        for step_def in step_defs:  # the first naming step wins, on_failure before compensate
            if step_def.on_failure:
                roles.setdefault(step_def.on_failure, ("on_failure", step_def.id))
            if step_def.compensate:
                roles.setdefault(step_def.compensate, ("compensate", step_def.id))
        assert set(roles) <= set(positions), "handlers are steps of the run"
        dependencies = tuple(
            tuple(positions[dep] for dep in step_def.depends_on) for step_def in step_defs
        )
        dependents: list[list[int]] = [[] for _ in step_defs]
        for index, deps in enumerate(dependencies):
            for dep in dict.fromkeys(deps):
                dependents[dep].append(index)
        self.roles = roles
        self.handlers = frozenset(roles)
        self.dependencies = dependencies
        self.dependents = tuple(tuple(found) for found in dependents)
        self.body_reversed = tuple(
            index
            for index in reversed(range(len(step_defs)))
            if step_defs[index].id not in self.handlers
        )

    def deps_done(self, steps: tuple[StepState, ...], position: int) -> bool:
        """Whether every dependency of the step at `position` is done, in `steps`."""
        deps = self.dependencies[position]
        if len(deps) == 1:  # most steps (a chain's): one look, no generator
            return steps[deps[0]].status in DONE_STEP_STATUSES
        return all(steps[dep].status in DONE_STEP_STATUSES for dep in deps)


_indexes: dict[int, tuple[tuple[StepDef, ...], DagIndex]] = {}
DagKey = tuple[tuple[str, tuple[str, ...], str | None, str | None], ...]
_by_dag: dict[DagKey, DagIndex] = {}


def dag_key(step_defs: tuple[StepDef, ...]) -> DagKey:
    """What the index of `step_defs` is built from: equal keys, equal indexes."""
    return tuple((s.id, s.depends_on, s.on_failure, s.compensate) for s in step_defs)


def dag_index(step_defs: tuple[StepDef, ...]) -> DagIndex:
    """The index of `step_defs` (built on first use of its DAG, then kept while the memos
    have room)."""
    entry = _indexes.get(id(step_defs))
    if entry is not None and entry[0] is step_defs:
        return entry[1]
    key = dag_key(step_defs)
    built = _by_dag.get(key)
    if built is None:
        built = DagIndex(step_defs)
        if len(_by_dag) >= limits.dags_cached_max:
            del _by_dag[next(iter(_by_dag))]  # the oldest (dicts keep insertion order)
        _by_dag[key] = built
    assert len(built.dependencies) == len(step_defs), "an index of this DAG"
    if len(_indexes) >= limits.dag_indexes_cached_max:
        _indexes.clear()
    _indexes[id(step_defs)] = (step_defs, built)
    return built
