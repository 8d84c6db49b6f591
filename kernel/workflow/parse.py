"""Reading a user-written workflow document (JSON text or decoded dict) into a `WorkflowDef`.

The parser reads shapes: JSON types, unknown fields (the user-written form rejects them), the
syntax of durations, the legacy `retries` and the alias `"normal"` (= `"task"`). It builds the
typed definition and then runs the rules of `kernel.workflow.rules` on it, the same checks
`validate_workflow` runs on a value built in code, so a JSON file, the Python builder and a
typed value get the same problems with the same JSON paths. A value of the wrong shape is
reported here and replaced by a default (a step or a `cancel_on` item that is not an object, by
a placeholder that keeps the positions of the others); the rules do not judge it again
(`Problems.settled`). Every problem is reported, up to `limits.validation_problems_max`, each
naming its path, the bad value and the rule. Nothing here raises except
`WorkflowInvalidError`, whatever the input. Pure: no I/O.
"""

from __future__ import annotations

import heapq
import re
from typing import Final

import msgspec
from msgspec.structs import replace

from kernel import limits
from kernel.errors import Problem, WorkflowInvalidError
from kernel.workflow.admission import read_admission
from kernel.workflow.child_runs import read_child_runs
from kernel.workflow.fields import (
    canonical_json,
    join_path,
    read_config,
    read_metadata,
    read_object,
    read_retries,
    read_retry,
    read_text,
    read_timeout,
    read_whole,
    value_problem,
)
from kernel.workflow.model import NO_MATCH, CancelOn, SkipIf, StepDef, WorkflowDef
from kernel.workflow.problems import MISSING, Problems
from kernel.workflow.references import REFERENCE_RULE
from kernel.workflow.rules import (
    EVENT_RULE,
    MAX_STEPS_RULE,
    OP_RULE,
    SKIP_OPS,
    VERSION_RULE,
    check_cancel_on_count,
    check_step_count,
    check_workflow,
)
from kernel.workflow.trigger_model import with_triggers
from kernel.workflow.trigger_parse import read_triggers

TOP_FIELDS: Final = (
    "$schema", "name", "version", "steps", "default_retry", "timeout", "concurrency", "metadata",
    "cancel_on", "priority", "singleton", "input_schema", "triggers", "child_runs",
    "rate_limits", "max_task_concurrency",
)  # fmt: skip
STEP_FIELDS: Final = (
    "id", "type", "task", "depends_on", "retry", "retries", "timeout", "skip_if",
    "on_failure", "compensate", "metadata", "config", "group",
)  # fmt: skip
SKIP_IF_FIELDS: Final = ("step_id", "field", "op", "value")
CONCURRENCY_FIELDS: Final = ("max_steps", "max_runs", "key")
CANCEL_ON_FIELDS: Final = ("event", "match")
TYPE_ALIASES: Final = {"normal": "task"}
JSON_NULL: Final = msgspec.Raw(b"null")
GROUP_NAME: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{limits.worker_group_length_max}}}")
NOT_A_STEP: Final = StepDef(id="")  # in place of a step that is not an object
NOT_A_CANCEL_ON: Final = CancelOn(event="")  # in place of a cancel_on item that is not one
ONE_CANCEL_ON: Final = "cancel_on"  # the path of a cancel_on written as one object
FIRST_CANCEL_ON: Final = "cancel_on[0]"  # ... and of the same item in the typed tuple
STEP_PATH: Final = re.compile(r"steps\[(\d+)\]")


def parse_workflow(source: object) -> WorkflowDef:
    """The `WorkflowDef` of JSON text (bytes or str) or of an already-decoded dict.

    Args:
        source: JSON text, or the already-decoded document (a dict).

    Returns:
        The normalized definition (durations in ms, "normal" read as "task", defaults filled).

    Raises:
        WorkflowInvalidError: listing every problem found (at most
            `limits.validation_problems_max`), each with its JSON path, value and rule. Nothing
            else is raised, whatever the input.
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
        return _checked_values(source, problems)
    if len(data) > limits.workflow_bytes_max:
        _too_large(len(data), problems)
        return MISSING
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        shown = source if isinstance(source, str) else data
        problems.add("$", shown, f"is not valid JSON: {error}")
        return MISSING
    return _checked_values(document, problems)


def _checked_values(document: object, problems: Problems) -> object:
    """The document, or MISSING after a problem when it nests deeper than
    `limits.json_depth_max` or holds a number that is not finite (a dict built in code)."""
    found = value_problem(document)
    if found is None:
        return document
    path, shown, rule = found
    problems.add_shown(path or "$", shown, rule)
    return MISSING


def _too_large(size: int, problems: Problems) -> None:
    limit = limits.workflow_bytes_max
    problems.add_shown("$", f"{size} bytes", f"is larger than the limit of {limit} bytes")


def parse_document(document: object, problems: Problems) -> WorkflowDef | None:
    """The workflow of a decoded document, adding each problem found to `problems`: those of
    its shapes and those the rules find in the typed value read, merged in the order of the
    document (top-level fields, then step by step, then `cancel_on`)."""
    before = len(problems.found)
    fields = read_object(document, "", TOP_FIELDS, problems)
    if fields is None:
        return None
    cancel_on = fields.get("cancel_on")
    one_cancel_on = cancel_on is not None and not isinstance(cancel_on, list | tuple)
    workflow = _workflow(fields, problems)
    if problems.full:
        return workflow
    shapes = problems.found[before:]
    settled = {problem.path for problem in shapes}
    if one_cancel_on:  # the rules name it as the first of a tuple
        settled |= {_as_typed(path) for path in settled}
    checked = Problems(settled=frozenset(settled))
    check_workflow(workflow, checked)
    found = [_as_written(problem) for problem in checked.found] if one_cancel_on else checked.found
    del problems.found[before:]
    problems.extend(heapq.merge(shapes, found, key=_place))  # each list keeps its own order
    return workflow


def _place(problem: Problem) -> tuple[int, int]:
    """Where a problem is in the document: top-level fields, `steps` and each step, cancel_on."""
    step = STEP_PATH.match(problem.path)
    if step is not None:
        return (1, int(step.group(1)))
    if problem.path == "steps":
        return (1, -1)
    if problem.path.startswith("triggers"):
        return (3, 0)
    return (2, 0) if problem.path.startswith(ONE_CANCEL_ON) else (0, 0)


def _as_typed(path: str) -> str:
    if path == ONE_CANCEL_ON or path.startswith(ONE_CANCEL_ON + "."):
        return FIRST_CANCEL_ON + path[len(ONE_CANCEL_ON) :]
    return path


def _as_written(problem: Problem) -> Problem:
    path = problem.path
    if path == FIRST_CANCEL_ON or path.startswith(FIRST_CANCEL_ON + "."):
        return replace(problem, path=ONE_CANCEL_ON + path[len(FIRST_CANCEL_ON) :])
    return problem


def _workflow(fields: dict[str, object], problems: Problems) -> WorkflowDef:
    name = read_text(fields, "name", "", problems, required=True)
    version = _version(fields.get("version"), problems)
    default_retry = read_retry(fields, "default_retry", "", problems)
    timeout_ms = read_timeout(fields, "", problems)
    concurrency = _concurrency(fields.get("concurrency"), problems)
    max_steps = read_whole(
        (concurrency or {}).get("max_steps"), "concurrency.max_steps", MAX_STEPS_RULE, problems
    )
    metadata = read_metadata(fields.get("metadata"), "metadata", problems)
    steps = _steps(fields.get("steps"), problems)
    return WorkflowDef(
        name=name,
        version=version,
        steps=steps,
        default_retry=default_retry,
        timeout_ms=timeout_ms,
        max_concurrent_steps=max_steps,
        metadata=metadata,
        cancel_on=_cancel_on(fields.get("cancel_on"), problems),
        admission=read_admission(fields, concurrency, problems),
        triggers=with_triggers(read_triggers(fields.get("triggers"), problems)),
        child_runs=read_child_runs(fields.get("child_runs"), problems),
    )


def _steps(value: object, problems: Problems) -> tuple[StepDef, ...]:
    if value is None:
        problems.add("steps", MISSING, "is required: a workflow has at least one step")
        return ()
    if not isinstance(value, list | tuple):
        problems.add("steps", value, "must be an array of step objects")
        return ()
    if len(value) > limits.steps_per_workflow_max:  # read no further than the bound
        check_step_count(len(value), problems)
        return ()
    steps: list[StepDef] = []
    for index, raw in enumerate(value):
        if problems.full:
            break
        steps.append(_step(raw, f"steps[{index}]", problems))
    return tuple(steps)


def _step(raw: object, path: str, problems: Problems) -> StepDef:
    fields = read_object(raw, path, STEP_FIELDS, problems)
    if fields is None:
        return NOT_A_STEP
    step_id = read_text(fields, "id", path, problems, required=True)
    type_name = _step_type(fields.get("type"), f"{path}.type", problems)
    task = read_text(fields, "task", path, problems, required=False)
    depends_on = _depends_on(fields.get("depends_on"), f"{path}.depends_on", problems)
    retry = read_retry(fields, "retry", path, problems)
    if "retries" in fields:
        if retry is not None:
            problems.add(f"{path}.retries", fields["retries"], "use either retries or retry")
        retry = read_retries(fields["retries"], f"{path}.retries", problems)
    config = read_config(fields.get("config"), f"{path}.config", problems)
    return StepDef(
        id=step_id,
        type=type_name,
        task=task,
        depends_on=depends_on,
        retry=retry,
        timeout_ms=read_timeout(fields, path, problems),
        skip_if=_skip_if(fields.get("skip_if"), f"{path}.skip_if", problems),
        on_failure=_reference(fields.get("on_failure"), f"{path}.on_failure", problems),
        compensate=_reference(fields.get("compensate"), f"{path}.compensate", problems),
        metadata=read_metadata(fields.get("metadata"), f"{path}.metadata", problems),
        config=config,
        group=_group(fields.get("group"), f"{path}.group", problems),
    )


def _group(value: object, path: str, problems: Problems) -> str | msgspec.UnsetType:
    """A step's worker group: a subject token (it is part of its tasks' subject)."""
    if value is None:
        return msgspec.UNSET
    if not isinstance(value, str) or GROUP_NAME.fullmatch(value) is None:
        rule = (f"must be 1..{limits.worker_group_length_max} characters of A-Z a-z 0-9 "
                "'_' '-' (a worker group, served by `dagnats worker --group NAME`)")  # fmt: skip
        problems.add(path, value, rule)
        return msgspec.UNSET
    return value


def _step_type(value: object, path: str, problems: Problems) -> str:
    if value is None:
        return "task"
    if not isinstance(value, str):
        problems.add(path, value, "must be a string naming a step type")
        return ""  # no type: the rules of a type (its task, its config) are not applied
    return TYPE_ALIASES.get(value, value)


def _depends_on(value: object, path: str, problems: Problems) -> tuple[str, ...]:
    """The ids as written; an item that is not a string is kept as "" (positions stay)."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        problems.add(path, value, "must be an array of step ids")
        return ()
    for position, name in enumerate(value):
        if not isinstance(name, str):
            problems.add(f"{path}[{position}]", name, "must be a string naming a step")
    return tuple(name if isinstance(name, str) else "" for name in value)


def _reference(value: object, path: str, problems: Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(path, value, REFERENCE_RULE)
        return None
    return value


def _skip_if(value: object, path: str, problems: Problems) -> SkipIf | None:
    if value is None:
        return None
    fields = read_object(value, path, SKIP_IF_FIELDS, problems)
    if fields is None:
        return None
    step_id = read_text(fields, "step_id", path, problems, required=True)
    field = read_text(fields, "field", path, problems, required=True)
    op_value = fields.get("op", MISSING)
    op = SKIP_OPS.get(op_value) if isinstance(op_value, str) else None
    if op is None:
        problems.add(f"{path}.op", op_value, OP_RULE)
    raw = fields.get("value", MISSING)
    if raw is MISSING:
        problems.add(f"{path}.value", MISSING, "is required (any JSON value, null included)")
    encoded = canonical_json(None if raw is MISSING else raw, f"{path}.value", problems)
    return SkipIf(step_id=step_id, field=field, op=op or "==", value=encoded or JSON_NULL)


def _version(value: object, problems: Problems) -> str:
    if value is None:
        return "1"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**18 else ""  # "" breaks the rule: it is named
    if not isinstance(value, str):
        problems.add("version", value, VERSION_RULE)
        return "1"
    return value


def _concurrency(value: object, problems: Problems) -> dict[str, object] | None:
    if value is None:
        return None
    return read_object(value, "concurrency", CONCURRENCY_FIELDS, problems)


def _cancel_on(value: object, problems: Problems) -> tuple[CancelOn, ...]:
    """The `cancel_on` of a workflow document: one object, or an array of them."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        return (_cancel_on_item(value, ONE_CANCEL_ON, problems),)
    if len(value) > limits.cancel_on_max:  # read no further than the bound
        check_cancel_on_count(len(value), problems)
        return ()
    return tuple(
        _cancel_on_item(raw, f"cancel_on[{index}]", problems) for index, raw in enumerate(value)
    )


def _cancel_on_item(value: object, path: str, problems: Problems) -> CancelOn:
    if not isinstance(value, dict):
        rule = 'must be an object {"event": name, "match": {"left", "op", "right"}}'
        problems.add(path, value, rule)
        return NOT_A_CANCEL_ON
    fields = read_object(value, path, CANCEL_ON_FIELDS, problems)
    assert fields is not None
    name = fields.get("event", MISSING)
    if not isinstance(name, str):
        problems.add(join_path(path, "event"), name, EVENT_RULE)
        name = ""
    match = fields.get("match")
    encoded = None if match is None else canonical_json(match, f"{path}.match", problems)
    return CancelOn(event=name, match=encoded or NO_MATCH)


__all__ = ["decode_source", "parse_document", "parse_workflow"]
