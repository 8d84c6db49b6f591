"""The workflow file's `child_runs` field: whether the workflow's agents may start child runs
of their own (the control plane, kernel/control.py), and the quotas they run under.

```json
"child_runs": {"allow": true, "max_generations": 2, "max_active": 4, "max_definitions": 16,
               "max_starts_per_minute": 10}
```

Deny by default: a workflow without the field (or with `"allow": false`) starts no child this
way. Each quota defaults to its `kernel.limits.control_*_default` and may be at most its
`control_*_max`. The type, its reader, its JSON schema and its document form live here; this
module imports nothing of the project but `kernel.limits`, `kernel.errors` and the workflow's
`problems`. Pure.
"""

from __future__ import annotations

from typing import Annotated, Final, Protocol

import msgspec

from kernel import limits
from kernel.workflow.problems import Problems

FIELDS: Final = ("allow", "max_generations", "max_active", "max_definitions",
                 "max_starts_per_minute")  # fmt: skip
JSONSchema = dict[str, object]


class ChildRuns(msgspec.Struct, frozen=True, kw_only=True):
    """What a workflow's agents may start: `allow` (deny by default) and the quotas of one run:
    the depth a child may have (`max_generations`, a root run is 0), children running at once,
    definitions written, and child starts within any minute."""

    allow: bool = False
    max_generations: Annotated[int, msgspec.Meta(ge=1, le=limits.control_generations_max)] = (
        limits.control_generations_default
    )
    max_active: Annotated[int, msgspec.Meta(ge=1, le=limits.control_active_children_max)] = (
        limits.control_active_children_default
    )
    max_definitions: Annotated[int, msgspec.Meta(ge=0, le=limits.control_definitions_max)] = (
        limits.control_definitions_default
    )
    max_starts_per_minute: Annotated[
        int, msgspec.Meta(ge=1, le=limits.control_starts_per_minute_max)
    ] = limits.control_starts_per_minute_default


DENY: Final = ChildRuns()
BOUNDS: Final = {
    "max_generations": (1, limits.control_generations_max),
    "max_active": (1, limits.control_active_children_max),
    "max_definitions": (0, limits.control_definitions_max),
    "max_starts_per_minute": (1, limits.control_starts_per_minute_max),
}
QUOTAS: Final = tuple(BOUNDS)  # the quota fields, each compared as "at most"


class HasChildRuns(Protocol):
    @property
    def child_runs(self) -> ChildRuns | msgspec.UnsetType: ...


def child_runs_of(workflow: HasChildRuns) -> ChildRuns:
    """A workflow's `child_runs` (DENY when its file has none)."""
    value = workflow.child_runs
    return DENY if isinstance(value, msgspec.UnsetType) else value


def read_child_runs(value: object, problems: Problems) -> ChildRuns | msgspec.UnsetType:
    """The `child_runs` field of a workflow document (unset when left out), each problem added
    to `problems` with its path (`child_runs.max_active`), value and rule."""
    if value is None:
        return msgspec.UNSET
    if not isinstance(value, dict):
        problems.add("child_runs", value, "must be a JSON object (" + ", ".join(FIELDS) + ")")
        return msgspec.UNSET
    found: dict[str, object] = {}
    for key, item in value.items():
        path = f"child_runs.{key}"
        if key not in FIELDS:
            problems.add(path, item, f"unknown field (allowed: {', '.join(FIELDS)})")
        elif key == "allow":
            if isinstance(item, bool):
                found[key] = item
            else:
                problems.add(path, item, "must be true (agents may start runs) or false")
        else:
            low, high = BOUNDS[key]
            if isinstance(item, int) and not isinstance(item, bool) and low <= item <= high:
                found[key] = item
            else:
                problems.add(path, item, f"must be an integer from {low} to {high}")
    return msgspec.convert(found, ChildRuns)


def child_runs_property() -> JSONSchema:
    """The JSON schema of the top-level `child_runs` field."""
    properties: dict[str, object] = {
        "allow": {"type": "boolean", "description": "agents may start child runs (default no)"}
    }
    for key, (low, high) in BOUNDS.items():
        properties[key] = {"type": "integer", "minimum": low, "maximum": high}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "description": "the control plane: may this workflow's agents start child runs, and "
        "under which quotas (per run)",
    }


def child_runs_document(workflow: HasChildRuns) -> dict[str, object] | None:
    """The `child_runs` field as a user writes it (None when the workflow has none)."""
    value = workflow.child_runs
    if isinstance(value, msgspec.UnsetType):
        return None
    return msgspec.to_builtins(value)  # type: ignore[no-any-return]
