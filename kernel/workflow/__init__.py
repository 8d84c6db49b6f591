"""The workflow format: what users write, the typed definition every run carries, the rules.

What lives here:

- `model`: the types (`WorkflowDef`, `StepDef`, `RetryPolicy`, `SkipIf`, `CancelOn`, ...).
- `parse`: the user's JSON (text or decoded) into a `WorkflowDef`, reading shapes.
- `fields`: readers of single JSON values, and `Problems`, the bounded problem list.
- `rules`: the rules over a typed `WorkflowDef`, run by the parser and by `validate_workflow`.
- `durations`: Go-style duration strings and integer nanoseconds, to milliseconds and back.
- `graph`: cycles, topological order and dependents of the `depends_on` graph.
- `document`: `workflow_to_document`, a definition back in the user's JSON form.
- `builder`: the fluent Python builder (`Workflow(...).task(...).build()`).

This package may import, of the project, only the `kernel` formats it builds on
(`kernel.limits`, `kernel.errors`, `kernel.registry`, `kernel.conditions`), and msgspec.
Modules here import each other by their module (`from kernel.workflow.model import StepDef`),
never through this `__init__`, which only gathers the public names; none of the modules those
imports reach imports this package back at import time, so the order of imports never
matters. Pure: no I/O.
"""

from __future__ import annotations

from kernel.workflow.document import validate_workflow, workflow_to_document
from kernel.workflow.model import (
    EMPTY_OBJECT,
    NO_MATCH,
    NO_RETRY,
    CancelOn,
    RetryPolicy,
    RetryStrategy,
    SkipIf,
    SkipOp,
    StepDef,
    WorkflowDef,
)
from kernel.workflow.parse import parse_workflow

__all__ = [
    "EMPTY_OBJECT",
    "NO_MATCH",
    "NO_RETRY",
    "CancelOn",
    "RetryPolicy",
    "RetryStrategy",
    "SkipIf",
    "SkipOp",
    "StepDef",
    "WorkflowDef",
    "parse_workflow",
    "validate_workflow",
    "workflow_to_document",
]
