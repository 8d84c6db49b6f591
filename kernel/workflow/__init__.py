"""The workflow format: what users write, the typed definition every run carries, its rules.

What lives here, one module per concern:

- `model`: the types (`WorkflowDef`, `StepDef`, `RetryPolicy`, `SkipIf`, `CancelOn`, ...).
- `parse`: a user's JSON (text or decoded) into a `WorkflowDef`: it reads the shapes, then
  runs the rules on the typed value read.
- `fields`: readers of single JSON values (retry, timeout, metadata, config, text, numbers).
- `rules`: the rules of a definition, written once over the typed `WorkflowDef`;
  `validate_workflow` runs them on a value built in code, `parse` on the value it read.
- `references`: the rules between steps: unique ids, references by id, handlers, cycles.
- `problems`: `Problems`, the bounded list every reader and rule adds to, and `MISSING`.
- `durations`: Go-style duration strings and integer nanoseconds, to milliseconds and back.
- `graph`: cycles, topological order and dependents of the `depends_on` graph.
- `document`: `workflow_to_document`, a definition back in the user's JSON form.
- `builder`: the fluent Python builder (`Workflow(...).task(...).build()`).

This package may import, of the project, only the `kernel` formats it builds on
(`kernel.limits`, `kernel.errors`, `kernel.registry`, `kernel.conditions`), and msgspec; none
of those imports this package back while it loads, so the order of imports never matters.
Modules here import each other by module (`from kernel.workflow.model import StepDef`), never
through this `__init__`, which only gathers the public names that `from kernel.workflow
import ...` gives. Pure: no I/O.
"""

from __future__ import annotations

from kernel.workflow.document import workflow_to_document
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
from kernel.workflow.rules import validate_workflow

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
