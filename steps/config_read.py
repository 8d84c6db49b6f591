"""Reading a step type's `config` object: the field checks map and planner share.

Each reader appends a `Problem` (path, value, rule) for a bad field and returns a usable
default, so a step's validation lists every problem at once. Pure: no I/O.
"""

from __future__ import annotations

import msgspec

from kernel.errors import Problem, show_value
from kernel.workflow import StepDef


def config_document(step: StepDef) -> dict[str, object]:
    """The step's config, decoded (the parser guarantees a JSON object)."""
    document = msgspec.json.decode(bytes(step.config))
    assert isinstance(document, dict), "config is a JSON object"
    return document


def unknown_fields(
    document: dict[str, object], allowed: tuple[str, ...], path: str, problems: list[Problem]
) -> None:
    for key, value in document.items():
        if key not in allowed:
            rule = f"unknown field (allowed: {', '.join(allowed)})"
            problems.append(
                Problem(path=f"{path}.config.{key}", value=show_value(value), rule=rule)
            )


def read_int(
    document: dict[str, object], key: str, path: str, problems: list[Problem], *,
    low: int, high: int, default: int,
) -> int:  # fmt: skip
    value = document.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        rule = f"must be an integer from {low} to {high}"
        problems.append(Problem(path=f"{path}.config.{key}", value=show_value(value), rule=rule))
        return default
    return value


def read_names(
    document: dict[str, object], key: str, path: str, problems: list[Problem]
) -> tuple[str, ...] | None:
    """A list of non-empty strings, or None when left out."""
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        rule = "must be an array of non-empty strings"
        problems.append(Problem(path=f"{path}.config.{key}", value=show_value(value), rule=rule))
        return None
    return tuple(str(v) for v in value)
