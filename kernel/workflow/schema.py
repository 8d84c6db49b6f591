"""The JSON Schema of the user-written workflow format, generated from the model.

`workflow_schema()` builds a JSON Schema (draft 2020-12) of what `parse_workflow` accepts, in
the user's field names (`depends_on`, `retry.max_attempts`, `timeout` as a duration string or
integer nanoseconds, `config` per step `type`). It is generated, never written by hand:
- the fields of each object are the parser's own tuples (`TOP_FIELDS`, `STEP_FIELDS`, ...), and
  every one of them must have a schema here (a new parser field without one fails loudly);
- bounds come from `kernel.limits` and the patterns from `kernel.workflow.rules`;
- each step type's `config` comes from the registry: its typed config Struct (`config_type`,
  with its `msgspec.Meta` bounds) and its user field names (`config_fields`). A Struct field
  `x_ms` is written by the user as the duration `x`; a field the Struct does not hold as a plain
  value (an alias, a structured value) accepts any JSON value here and is judged by the parser.

The schema helps editors and CI; it is looser than the parser in places (cycles, references
between steps, cross-field rules are the parser's alone), never stricter. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import inspect as mi

from kernel import limits, registry
from kernel.workflow.child_runs import child_runs_property
from kernel.workflow.durations import DURATION_NS_MAX, DURATION_TEXT_LENGTH_MAX
from kernel.workflow.fields import RETRY_FIELDS
from kernel.workflow.parse import (
    CANCEL_ON_FIELDS,
    CONCURRENCY_FIELDS,
    SKIP_IF_FIELDS,
    STEP_FIELDS,
    TOP_FIELDS,
    TYPE_ALIASES,
)
from kernel.workflow.rules import SKIP_OPS, STEP_ID, STRATEGIES, TASK_NAME, WORKFLOW_NAME
from kernel.workflow.trigger_schema import trigger_definitions, triggers_property

SCHEMA_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID: Final = "https://dagnats.dev/schema/workflow.schema.json"
SCHEMA_FILE_NAME: Final = "workflow.schema.json"  # the committed copy beside the examples
NANOSECONDS_PER_MS: Final = 1_000_000
DURATION_PATTERN: Final = (
    r"^\+?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"
)
MS_SUFFIX: Final = "_ms"
JSONSchema = dict[str, Any]


def workflow_schema() -> JSONSchema:
    """The JSON Schema of a workflow document (a fresh dict on every call)."""
    top: dict[str, JSONSchema] = {
        "$schema": {"type": "string", "description": "where this document's schema is"},
        "name": _pattern(WORKFLOW_NAME.pattern, limits.workflow_name_length_max),
        "version": {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": limits.workflow_name_length_max},
                {"type": "integer"},
            ]
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": limits.steps_per_workflow_max,
            "items": {"$ref": "#/$defs/step"},
        },
        "default_retry": {"$ref": "#/$defs/retry"},
        "timeout": _duration(limits.timeout_ms_max),
        "concurrency": _object(
            CONCURRENCY_FIELDS,
            {
                "max_steps": _integer(1, limits.steps_per_workflow_max),
                "max_runs": _integer(1, limits.max_runs_max, "at most this many running runs"),
                "key": {"type": "string", "description": "a path into the input: max_runs per key"},
            },
        ),
        "priority": {
            "anyOf": [
                _integer(-limits.priority_abs_max, limits.priority_abs_max),
                {"type": "string", "description": "a path into the input"},
            ]
        },
        "singleton": _object(
            ("key", "mode"),
            {"key": {"type": "string"}, "mode": {"enum": ["skip", "cancel_previous", "queue"]}},
            required=("key",),
        ),
        "input_schema": {
            "type": ["object", "boolean"],
            "description": "a JSON Schema (draft 2020-12) every start's input must meet",
        },
        **_flow_control(),
        "metadata": {"$ref": "#/$defs/metadata"},
        "cancel_on": {
            "anyOf": [
                {"$ref": "#/$defs/cancel_on"},
                {
                    "type": "array",
                    "maxItems": limits.cancel_on_max,
                    "items": {"$ref": "#/$defs/cancel_on"},
                },
            ]
        },
        "triggers": triggers_property(),
        "child_runs": child_runs_property(),
    }
    schema: JSONSchema = {
        "$schema": SCHEMA_DRAFT,
        "$id": SCHEMA_ID,
        "title": "DagNats workflow",
        "description": "A DagNats workflow file (see docs/workflow-format.md). Generated from "
        "the model by `dagnats workflow schema`; the parser (`dagnats workflow validate`) "
        "has the last word.",
        **_object(TOP_FIELDS, top, required=("name", "steps")),
        "$defs": _definitions(),
    }
    return schema


def _definitions() -> dict[str, JSONSchema]:
    retry: dict[str, JSONSchema] = {
        "max_attempts": _integer(0, limits.attempts_max, "every attempt, the first included"),
        "strategy": {"enum": list(STRATEGIES)},
        "initial_delay": _duration(limits.delay_ms_max),
        "max_delay": _duration(limits.delay_ms_max),
        "multiplier": {"type": "number", "minimum": 1, "maximum": limits.retry_multiplier_max},
        "jitter": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "boolean"}]},
    }
    skip_if: dict[str, JSONSchema] = {
        "step_id": _pattern(STEP_ID.pattern, limits.step_id_length_max),
        "field": {"type": "string", "minLength": 1},
        "op": {"enum": list(SKIP_OPS)},
        "value": {"description": "any JSON value"},
    }
    cancel_on: dict[str, JSONSchema] = {
        "event": _pattern(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", limits.event_name_length_max),
        "match": {"type": ["object", "null"], "description": "a condition {left, op, right}"},
    }
    return {
        "duration": {
            "description": 'a duration: "500ms", "30s", "1m30s", "2h", or integer nanoseconds',
            "anyOf": [
                {
                    "type": "string",
                    "pattern": DURATION_PATTERN,
                    "maxLength": DURATION_TEXT_LENGTH_MAX,
                },
                {"type": "integer", "minimum": 0, "maximum": DURATION_NS_MAX},
            ],
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "retry": _object(RETRY_FIELDS, retry),
        "skip_if": _object(SKIP_IF_FIELDS, skip_if, required=SKIP_IF_FIELDS),
        "cancel_on": _object(CANCEL_ON_FIELDS, cancel_on, required=("event",)),
        "step": _step(),
        **{f"config.{name}": _config(name) for name in registry.names()},
        **trigger_definitions(_object, _duration),
    }


def _step() -> JSONSchema:
    types = sorted({*registry.names(), *TYPE_ALIASES})
    fields: dict[str, JSONSchema] = {
        "id": _pattern(STEP_ID.pattern, limits.step_id_length_max),
        "type": {"enum": types, "default": "task", "description": "'normal' is 'task'"},
        "task": _pattern(TASK_NAME.pattern, limits.task_name_length_max),
        "depends_on": {
            "type": "array",
            "maxItems": limits.dependencies_per_step_max,
            "items": {"type": "string"},
        },
        "retry": {"$ref": "#/$defs/retry"},
        "retries": _integer(0, limits.attempts_max - 1, "retries after the first attempt"),
        "timeout": _duration(limits.timeout_ms_max),
        "skip_if": {"$ref": "#/$defs/skip_if"},
        "on_failure": {"type": "string"},
        "compensate": {"type": "string"},
        "metadata": {"$ref": "#/$defs/metadata"},
        "config": {"type": "object"},
        "group": {
            "type": "string",
            "pattern": f"^[A-Za-z0-9_-]{{1,{limits.worker_group_length_max}}}$",
            "description": "the worker group its tasks go to (dagnats worker --group NAME)",
        },
    }
    step = _object(STEP_FIELDS, fields, required=("id",))
    cases: list[JSONSchema] = []
    for name in registry.names():
        step_type = registry.get(name)
        names = [name, *(alias for alias, target in TYPE_ALIASES.items() if target == name)]
        then: JSONSchema = {"properties": {"config": {"$ref": f"#/$defs/config.{name}"}}}
        if step_type.needs_task:
            then["required"] = ["task"]
        cases.append({"if": _type_is(names), "then": then})
        if name == "task":  # a step without `type` is a task
            cases.append({"if": {"not": {"required": ["type"]}}, "then": then})
    step["allOf"] = cases
    return step


def _type_is(names: list[str]) -> JSONSchema:
    return {"required": ["type"], "properties": {"type": {"enum": names}}}


def _config(name: str) -> JSONSchema:
    """The schema of a step type's `config`: from its config Struct and its field names."""
    step_type = registry.get(name)
    user_fields: tuple[str, ...] = tuple(getattr(step_type, "config_fields", ()))
    config_type = getattr(step_type, "config_type", None)
    if not user_fields:
        return {"type": "object", "description": f"the config of a {name} step"}
    typed = _struct_fields(config_type) if config_type is not None else {}
    properties: dict[str, JSONSchema] = {}
    required: list[str] = []
    for field in user_fields:
        info = typed.get(field)
        duration = typed.get(field + MS_SUFFIX)
        if info is not None:
            properties[field] = _value_schema(info.type)
            required += [field] if info.required else []
        elif duration is not None:
            properties[field] = _duration(_upper_bound(duration.type))
            required += [field] if duration.required else []
        else:
            properties[field] = {"description": "judged by the parser"}
    return _object(user_fields, properties, required=tuple(required))


def _struct_fields(config_type: object) -> dict[str, mi.Field]:
    info = mi.type_info(config_type)
    assert isinstance(info, mi.StructType), f"{config_type!r} is a msgspec Struct"
    return {field.encode_name: field for field in info.fields}


def _value_schema(info: mi.Type) -> JSONSchema:
    """A plain value's schema with its bounds; any JSON value for a structured one."""
    if isinstance(info, mi.UnionType):
        parts = [_value_schema(t) for t in info.types]
        if any(not part for part in parts):
            return {}
        return {"anyOf": parts}
    if isinstance(info, mi.NoneType):
        return {"type": "null"}
    if isinstance(info, mi.BoolType):
        return {"type": "boolean"}
    if isinstance(info, mi.LiteralType):
        return {"enum": list(info.values)}
    if isinstance(info, mi.StrType):
        return _dropped_none({
            "type": "string", "minLength": info.min_length, "maxLength": info.max_length,
            "pattern": info.pattern,
        })  # fmt: skip
    if isinstance(info, mi.IntType | mi.FloatType):
        return _dropped_none({
            "type": "integer" if isinstance(info, mi.IntType) else "number",
            "minimum": info.ge, "maximum": info.le,
            "exclusiveMinimum": info.gt, "exclusiveMaximum": info.lt,
        })  # fmt: skip
    return {}


def _upper_bound(info: mi.Type) -> int:
    """The largest milliseconds a duration field's type allows (`timeout_ms_max` if none)."""
    options = info.types if isinstance(info, mi.UnionType) else (info,)
    for option in options:
        if isinstance(option, mi.IntType) and option.le is not None:
            return int(option.le)
    return limits.timeout_ms_max


def _duration(ms_max: int) -> JSONSchema:
    ns_max = min(DURATION_NS_MAX, (ms_max + 1) * NANOSECONDS_PER_MS - 1)
    return {
        "description": f'a duration ("30s", "1m30s", ...) or integer nanoseconds; '
        f"at most {ms_max} ms",
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN, "maxLength": DURATION_TEXT_LENGTH_MAX},
            {"type": "integer", "minimum": 0, "maximum": ns_max},
        ],
    }


def _flow_control() -> dict[str, JSONSchema]:
    """The flow control fields (kernel/workflow/admission.py)."""
    return {
        "rate_limits": {
            "type": "array",
            "maxItems": limits.rate_limits_max,
            "items": _object(
                ("task", "step", "limit", "period", "key", "units"),
                {
                    "task": {"type": "string", "description": "a task type (or step)"},
                    "step": {"type": "string", "description": "a step id (or task)"},
                    "limit": _integer(1, limits.rate_limit_max, "units per period"),
                    "period": _duration(limits.rate_limit_period_ms_max),
                    "key": {"type": "string", "description": "a path into the input"},
                    "units": _integer(1, limits.rate_limit_max, "units each task takes"),
                },
                required=("limit", "period"),
            ),
        },
        "max_task_concurrency": {
            "type": "object",
            "description": "task type -> at most this many running at once, across all runs",
            "additionalProperties": _integer(1, limits.task_concurrency_max),
        },
    }


def _integer(low: int, high: int, description: str = "") -> JSONSchema:
    schema: JSONSchema = {"type": "integer", "minimum": low, "maximum": high}
    if description:
        schema["description"] = description
    return schema


def _pattern(pattern: str, length_max: int) -> JSONSchema:
    return {"type": "string", "pattern": f"^(?:{pattern})$", "maxLength": length_max}


def _object(
    fields: tuple[str, ...], properties: dict[str, JSONSchema], required: tuple[str, ...] = ()
) -> JSONSchema:
    """An object of exactly `fields` (the parser's tuple), each with its schema."""
    missing = [field for field in fields if field not in properties]
    extra = [field for field in properties if field not in fields]
    assert not missing and not extra, f"schema fields differ: missing {missing}, extra {extra}"
    schema: JSONSchema = {
        "type": "object",
        "properties": {field: properties[field] for field in fields},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _dropped_none(schema: JSONSchema) -> JSONSchema:
    return {key: value for key, value in schema.items() if value is not None}


def schema_json(schema: JSONSchema | None = None) -> bytes:
    """The schema as stable, indented JSON text ending in a newline (the committed form)."""
    value = workflow_schema() if schema is None else schema
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"


__all__ = ["SCHEMA_FILE_NAME", "SCHEMA_ID", "schema_json", "workflow_schema"]
