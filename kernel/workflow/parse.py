"""Parsing a user-written workflow document (JSON text or decoded dict) into a `WorkflowDef`.

The rules are written once, against the user's format, so a JSON file, the Python builder and
a typed value checked by `validate_workflow` get the same problems with the same JSON paths.
Every problem found is reported (up to `limits.validation_problems_max`), each naming its path,
the bad value and the rule. Nothing here raises except `WorkflowInvalidError`, whatever the
input. This module reads shapes and values; the rules between steps (references, handlers,
cycles) live in `kernel.workflow.rules`. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Final

import msgspec

from kernel import limits, registry
from kernel.conditions import condition_problems
from kernel.errors import WorkflowInvalidError
from kernel.registry import StepType
from kernel.workflow.fields import (
    MISSING,
    Problems,
    canonical_json,
    read_config,
    read_integer,
    read_metadata,
    read_object,
    read_retries,
    read_retry,
    read_text,
    read_timeout,
)
from kernel.workflow.model import (
    EMPTY_OBJECT,
    NO_MATCH,
    CancelOn,
    SkipIf,
    SkipOp,
    StepDef,
    WorkflowDef,
)
from kernel.workflow.rules import check_between_steps, first_index_by_id, known_ids_text

TOP_FIELDS: Final = (
    "$schema", "name", "version", "steps", "default_retry", "timeout", "concurrency", "metadata",
    "cancel_on",
)  # fmt: skip
STEP_FIELDS: Final = (
    "id", "type", "task", "depends_on", "retry", "retries", "timeout", "skip_if",
    "on_failure", "compensate", "metadata", "config",
)  # fmt: skip
SKIP_IF_FIELDS: Final = ("step_id", "field", "op", "value")
CANCEL_ON_FIELDS: Final = ("event", "match")
EVENT_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
CONCURRENCY_FIELDS: Final = ("max_steps", "max_runs")
SKIP_OPS: Final[dict[str, SkipOp]] = {
    "==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="
}  # fmt: skip
TYPE_ALIASES: Final = {"normal": "task"}
DEPENDENCIES_SHOWN_MAX: Final = 10
_STEP_ID = re.compile(r"[A-Za-z0-9_-]+")


def parse_workflow(source: object) -> WorkflowDef:
    """The `WorkflowDef` of JSON text (bytes or str) or of an already-decoded dict.

    Raises:
        WorkflowInvalidError: with every problem found (bounded).
    """
    problems = Problems()
    document = decode_source(source, problems)
    workflow = None if document is MISSING else parse_document(document, problems)
    if not problems.found:
        assert workflow is not None, "a document without problems yields a workflow"
        assert 1 <= len(workflow.steps) <= limits.steps_per_workflow_max
        return workflow
    name = document.get("name") if isinstance(document, dict) else None
    shown = name[: limits.workflow_name_length_max] if isinstance(name, str) else ""
    raise WorkflowInvalidError(tuple(problems.found), workflow=shown)


def decode_source(source: object, problems: Problems) -> object:
    """The decoded document: JSON text is decoded (within the size bound), a dict passes."""
    if isinstance(source, str):
        if len(source) > limits.workflow_bytes_max:  # each character is at least one byte
            _too_large(len(source), problems)
            return MISSING
        data = source.encode("utf-8", "surrogatepass")
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        return source
    if len(data) > limits.workflow_bytes_max:
        _too_large(len(data), problems)
        return MISSING
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        shown = source if isinstance(source, str) else data
        problems.add("$", shown, f"is not valid JSON: {error}")
        return MISSING


def _too_large(size: int, problems: Problems) -> None:
    limit = limits.workflow_bytes_max
    problems.add_shown("$", f"{size} bytes", f"is larger than the limit of {limit} bytes")


TASK_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
WORKFLOW_NAME: Final = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*(?<!\.)")


def parse_document(document: object, problems: Problems) -> WorkflowDef | None:
    """The workflow of a decoded document, adding each problem found to `problems`."""
    fields = read_object(document, "", TOP_FIELDS, problems)
    if fields is None:
        return None
    name = read_text(fields, "name", "", problems, required=True)
    if len(name) > limits.workflow_name_length_max:
        problems.add("name", name, f"is longer than {limits.workflow_name_length_max} characters")
    elif name and not WORKFLOW_NAME.fullmatch(name):
        problems.add("name", name, "may hold only A-Z a-z 0-9 _ - . = (it is a key of the store)")
    version = _version(fields.get("version", MISSING), problems)
    default_retry = read_retry(fields, "default_retry", "", problems)
    timeout_ms = read_timeout(fields, "", problems)
    max_steps = _concurrency(fields.get("concurrency", MISSING), problems)
    metadata = read_metadata(fields.get("metadata", MISSING), "metadata", problems)
    steps = _steps(fields.get("steps", MISSING), problems)
    cancel_on = read_cancel_on(fields.get("cancel_on", MISSING), problems)
    return WorkflowDef(
        name=name,
        version=version,
        steps=steps,
        default_retry=default_retry,
        timeout_ms=timeout_ms,
        max_concurrent_steps=max_steps,
        metadata=metadata,
        cancel_on=cancel_on,
    )


def _steps(value: object, problems: Problems) -> tuple[StepDef, ...]:
    if value is MISSING or value is None:
        problems.add("steps", MISSING, "is required: a workflow has at least one step")
        return ()
    if not isinstance(value, list | tuple):
        problems.add("steps", value, "must be an array of step objects")
        return ()
    if not value:
        problems.add("steps", value, "must hold at least one step")
        return ()
    if len(value) > limits.steps_per_workflow_max:
        rule = f"holds {len(value)} steps; the limit is {limits.steps_per_workflow_max}"
        problems.add_shown("steps", f"[... {len(value)} steps]", rule)
        return ()
    first_index = first_index_by_id(value)
    parsed: list[tuple[int, StepDef]] = []
    for index, raw in enumerate(value):
        if problems.full:
            break
        step = _step(raw, index, first_index, problems)
        if step is not None:
            parsed.append((index, step))
    check_between_steps(parsed, problems)
    return tuple(step for _, step in parsed)


def _step(
    raw: object, index: int, first_index: dict[str, int], problems: Problems
) -> StepDef | None:
    path = f"steps[{index}]"
    fields = read_object(raw, path, STEP_FIELDS, problems)
    if fields is None:
        return None
    step_id = _step_id(fields, path, index, first_index, problems)
    type_name, step_type = _step_type(fields, path, problems)
    task = _task(fields, path, type_name, step_type, problems)
    depends_on = _depends_on(fields, path, step_id, first_index, problems)
    retry = read_retry(fields, "retry", path, problems)
    if "retries" in fields:
        if retry is not None:
            problems.add(f"{path}.retries", fields["retries"], "use either retries or retry")
        retry = read_retries(fields["retries"], f"{path}.retries", problems)
    config = read_config(fields.get("config", MISSING), f"{path}.config", problems)
    step = StepDef(
        id=step_id,
        type=type_name,
        task=task,
        depends_on=depends_on,
        retry=retry,
        timeout_ms=read_timeout(fields, path, problems),
        skip_if=_skip_if(fields.get("skip_if", MISSING), f"{path}.skip_if", depends_on, problems),
        on_failure=_reference(
            fields, "on_failure", path, problems, step_id=step_id, first_index=first_index
        ),
        compensate=_reference(
            fields, "compensate", path, problems, step_id=step_id, first_index=first_index
        ),
        metadata=read_metadata(fields.get("metadata", MISSING), f"{path}.metadata", problems),
        config=config or EMPTY_OBJECT,
    )
    if step_type is not None and config is not None:  # the type reads only a readable config
        problems.extend(step_type.validate(step, path))
    return step


def _task(
    fields: dict[str, object], path: str, type_name: str, step_type: StepType | None,
    problems: Problems,
) -> str:  # fmt: skip
    task = read_text(fields, "task", path, problems, required=False)
    value = fields.get("task", MISSING)
    absent = value is MISSING or value is None or (isinstance(value, str) and not value)
    if absent and step_type is not None and step_type.needs_task:
        rule = f"is required for a step of type {type_name!r}: the worker task it runs"
        problems.add(f"{path}.task", value, rule)
    if len(task) > limits.task_name_length_max:
        rule = f"is longer than {limits.task_name_length_max} characters"
        problems.add(f"{path}.task", task, rule)
    elif task and not TASK_NAME.fullmatch(task):
        rule = "must be words of A-Z a-z 0-9 _ - joined by single dots, e.g. 'payments.charge'"
        problems.add(f"{path}.task", task, rule)
    return task


def _step_id(
    fields: dict[str, object], path: str, index: int, first_index: dict[str, int],
    problems: Problems,
) -> str:  # fmt: skip
    step_id = read_text(fields, "id", path, problems, required=True)
    if not step_id:
        return step_id
    if len(step_id) > limits.step_id_length_max:
        rule = f"is longer than {limits.step_id_length_max} characters"
        problems.add(f"{path}.id", step_id, rule)
    elif _STEP_ID.fullmatch(step_id) is None:
        rule = (
            "must use only letters, digits, '_' and '-' "
            "('.' is reserved for planner namespaces and ':' for message ids)"
        )
        problems.add(f"{path}.id", step_id, rule)
    first = first_index.get(step_id, index)
    if first != index:
        problems.add(f"{path}.id", step_id, f"duplicates steps[{first}].id; ids must be unique")
    return step_id


def _step_type(
    fields: dict[str, object], path: str, problems: Problems
) -> tuple[str, StepType | None]:
    value = fields.get("type", MISSING)
    if value is MISSING or value is None:
        value = "task"
    if not isinstance(value, str):
        problems.add(f"{path}.type", value, "must be a string naming a step type")
        return "task", None
    name = TYPE_ALIASES.get(value, value)
    step_type = registry.lookup(name)
    if step_type is None:
        known = ", ".join(registry.names())
        problems.add(f"{path}.type", value, f"is not a step type (known: {known}; 'normal' = task)")
    return name, step_type


def _depends_on(
    fields: dict[str, object], path: str, step_id: str, first_index: dict[str, int],
    problems: Problems,
) -> tuple[str, ...]:  # fmt: skip
    value = fields.get("depends_on", MISSING)
    if value is MISSING or value is None:
        return ()
    path = f"{path}.depends_on"
    if not isinstance(value, list | tuple):
        problems.add(path, value, "must be an array of step ids")
        return ()
    if len(value) > limits.dependencies_per_step_max:
        rule = f"holds {len(value)} ids; the limit is {limits.dependencies_per_step_max}"
        problems.add_shown(path, f"[... {len(value)} ids]", rule)
        return ()
    names: list[str] = []
    for position, name in enumerate(value):
        item_path = f"{path}[{position}]"
        if not isinstance(name, str):
            problems.add(item_path, name, "must be a string naming a step")
        elif name in names:
            problems.add(item_path, name, f"repeats depends_on[{names.index(name)}]")
        elif name == step_id:
            problems.add(item_path, name, "names the step itself; a step cannot depend on itself")
            names.append(name)
        elif name not in first_index:
            rule = f"names no step of this workflow (known: {known_ids_text(first_index)})"
            problems.add(item_path, name, rule)
            names.append(name)
        else:
            names.append(name)
    return tuple(names)


def _reference(
    fields: dict[str, object], key: str, path: str, problems: Problems, *, step_id: str,
    first_index: dict[str, int],
) -> str | None:  # fmt: skip
    value = fields.get(key, MISSING)
    if value is MISSING or value is None:
        return None
    path = f"{path}.{key}"
    if not isinstance(value, str) or not value:
        problems.add(path, value, "must be a non-empty string naming another step")
        return None
    if value == step_id:
        problems.add(path, value, "names the step itself; it must name another step")
    elif value not in first_index:
        rule = f"names no step of this workflow (known: {known_ids_text(first_index)})"
        problems.add(path, value, rule)
    return value


def _skip_if(
    value: object, path: str, depends_on: tuple[str, ...], problems: Problems
) -> SkipIf | None:
    if value is MISSING or value is None:
        return None
    fields = read_object(value, path, SKIP_IF_FIELDS, problems)
    if fields is None:
        return None
    step_id = read_text(fields, "step_id", path, problems, required=True)
    if step_id and step_id not in depends_on:
        listed = ", ".join(depends_on[:DEPENDENCIES_SHOWN_MAX]) or "none"
        listed += ", ..." if len(depends_on) > DEPENDENCIES_SHOWN_MAX else ""
        problems.add(f"{path}.step_id", step_id, f"must be among this step's depends_on ({listed})")
    field = read_text(fields, "field", path, problems, required=True)
    if field and "" in field.split("."):
        rule = "must be a key or a dotted path of keys with no empty part ('result.count')"
        problems.add(f"{path}.field", field, rule)
    op_value = fields.get("op", MISSING)
    op = SKIP_OPS.get(op_value) if isinstance(op_value, str) else None
    if op is None:
        problems.add(f"{path}.op", op_value, f"must be one of {' '.join(SKIP_OPS)}")
        op = "=="
    raw = fields.get("value", MISSING)
    if raw is MISSING:
        problems.add(f"{path}.value", MISSING, "is required (any JSON value, null included)")
    elif op not in ("==", "!=") and not _is_ordered(raw):
        problems.add(f"{path}.value", raw, f"must be a number or a string for op {op!r}")
    encoded = canonical_json(None if raw is MISSING else raw, f"{path}.value", problems)
    return SkipIf(step_id=step_id, field=field, op=op, value=encoded or msgspec.Raw(b"null"))


def _is_ordered(value: object) -> bool:
    """Whether `<`, `>`, `<=`, `>=` apply to `value`: a finite number or a string."""
    if isinstance(value, str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _version(value: object, problems: Problems) -> str:
    if value is MISSING or value is None:
        return "1"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value) if abs(value) < 10**18 else ""
    if not isinstance(value, str) or not value:
        problems.add("version", value, "must be a non-empty string or an integer")
        return "1"
    if len(value) > limits.workflow_name_length_max:
        rule = f"is longer than {limits.workflow_name_length_max} characters"
        problems.add("version", value, rule)
    return value


def _concurrency(value: object, problems: Problems) -> int | None:
    if value is MISSING or value is None:
        return None
    fields = read_object(value, "concurrency", CONCURRENCY_FIELDS, problems)
    if fields is None or fields.get("max_steps") is None:
        return None  # max_runs is accepted for the Go files' sake and not used
    top = limits.steps_per_workflow_max
    return read_integer(fields, "max_steps", "concurrency", problems, low=1, high=top, default=1)


def read_cancel_on(value: object, problems: Problems) -> tuple[CancelOn, ...]:
    """The `cancel_on` of a workflow document (one object or an array), adding each problem."""
    if value is MISSING or value is None:
        return ()
    if not isinstance(value, list | tuple):
        item = _item(value, "cancel_on", problems)
        return (item,) if item is not None else ()
    if len(value) > limits.cancel_on_max:
        rule = f"holds {len(value)} conditions; the limit is {limits.cancel_on_max} (cancel_on_max)"
        problems.add_shown("cancel_on", f"[... {len(value)} items]", rule)
        return ()
    items = (_item(raw, f"cancel_on[{index}]", problems) for index, raw in enumerate(value))
    return tuple(item for item in items if item is not None)


def _item(value: object, path: str, problems: Problems) -> CancelOn | None:
    if not isinstance(value, dict):
        rule = 'must be an object {"event": name, "match": {"left", "op", "right"}}'
        problems.add(path, value, rule)
        return None
    fields = read_object(value, path, CANCEL_ON_FIELDS, problems)
    assert fields is not None
    name = fields.get("event", MISSING)
    bound = limits.event_name_length_max
    if not isinstance(name, str) or len(name) > bound or EVENT_NAME.fullmatch(name) is None:
        rule = f"is required: an event name, 1..{bound} of A-Z a-z 0-9 '_' '-' ('.' between)"
        problems.add(f"{path}.event", name, rule)
        name = ""
    match = fields.get("match")
    encoded = None
    if match is not None:
        found = condition_problems(match, f"{path}.match")
        problems.extend(found)
        if not found:
            encoded = canonical_json(match, f"{path}.match", problems)
    return CancelOn(event=name, match=encoded or NO_MATCH)


__all__ = ["decode_source", "parse_document", "parse_workflow"]
