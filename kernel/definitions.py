"""One value per workflow definition, shared by every run of it. Pure; no I/O.

Each `RunStarted` carries its run's workflow, decoded anew for every run (and for every replay
of it). Runs of the same definition fold to states holding one shared `WorkflowDef` value (the
first one met, kept here), so what is kept per `step_defs` tuple (the DAG index,
kernel.dag_index; step positions, kernel.state; each step's typed config, `StepDef.settings`)
is built once per definition, not once per run, and so are the run's first `step_ids` and
`steps`.

Keyed by the definition's encoded bytes: two definitions share a value only when they encode
alike, so a state holding the shared value encodes exactly as one holding its own copy (a
replay folds to the same state, whatever this memo holds). Bounded: at most
`limits.definitions_cached_max` definitions, each encoding to at most
`limits.definition_bytes_cached_max` bytes (a larger one is not kept: its runs build their own
values, as before); the oldest goes first.
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from kernel import limits
from kernel.state import StepState
from kernel.workflow import WorkflowDef

_encoder: Final = msgspec.json.Encoder()
KeyT = TypeVar("KeyT")
ValueT = TypeVar("ValueT")


class Definition:
    """A workflow definition and the first state of its steps (read-only once built)."""

    __slots__ = ("step_ids", "steps", "workflow")

    def __init__(self, workflow: WorkflowDef) -> None:
        self.workflow = workflow
        self.step_ids = tuple(step.id for step in workflow.steps)
        self.steps = tuple(StepState(step_id=step_id) for step_id in self.step_ids)
        assert len(self.steps) == len(workflow.steps), "one state per step"


_definitions: dict[bytes, Definition] = {}
# The definitions met as objects: a RunStarted is folded more than once (in `decide`, then by
# its caller; again by every replay of the same decoded event), and its workflow object needs
# no second encoding. Keyed by the object's id and checked by identity (the entry holds the
# object, so its id is not reused while kept); bounded alike.
_objects: dict[int, tuple[WorkflowDef, Definition]] = {}


def shared(workflow: WorkflowDef) -> Definition:
    """The shared value of `workflow`'s definition (equal to it; built on first use)."""
    met = _objects.get(id(workflow))
    if met is not None and met[0] is workflow:
        return met[1]
    key = _encoder.encode(workflow)
    found = _definitions.get(key)
    if found is None:
        found = Definition(workflow)
        if len(key) > limits.definition_bytes_cached_max:
            return found  # not kept: its runs build their own values
        _kept(_definitions, key, found)
    _kept(_objects, id(workflow), (workflow, found))
    return found


def _kept(memo: dict[KeyT, ValueT], key: KeyT, value: ValueT) -> None:
    """Keep `value` under `key`, letting the oldest entry go when the memo is full."""
    if len(memo) >= limits.definitions_cached_max:
        del memo[next(iter(memo))]  # the oldest (dicts keep insertion order)
    memo[key] = value
    assert len(memo) <= limits.definitions_cached_max
