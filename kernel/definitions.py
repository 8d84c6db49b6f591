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

from typing import Final

import msgspec

from kernel import limits
from kernel.state import StepState
from kernel.workflow import WorkflowDef

_encoder: Final = msgspec.json.Encoder()


class Definition:
    """A workflow definition and the first state of its steps (read-only once built)."""

    __slots__ = ("step_ids", "steps", "workflow")

    def __init__(self, workflow: WorkflowDef) -> None:
        self.workflow = workflow
        self.step_ids = tuple(step.id for step in workflow.steps)
        self.steps = tuple(StepState(step_id=step_id) for step_id in self.step_ids)
        assert len(self.steps) == len(workflow.steps), "one state per step"


_definitions: dict[bytes, Definition] = {}


def shared(workflow: WorkflowDef) -> Definition:
    """The shared value of `workflow`'s definition (equal to it; built on first use)."""
    key = _encoder.encode(workflow)
    found = _definitions.get(key)
    if found is not None:
        return found
    built = Definition(workflow)
    if len(key) > limits.definition_bytes_cached_max:
        return built
    if len(_definitions) >= limits.definitions_cached_max:
        del _definitions[next(iter(_definitions))]  # the oldest (dicts keep insertion order)
    _definitions[key] = built
    assert len(_definitions) <= limits.definitions_cached_max
    return built
