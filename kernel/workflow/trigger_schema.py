"""The JSON Schema of a workflow's `triggers`, generated beside `kernel.workflow.schema` (which
passes its own helpers in, so both write objects and durations the same way). Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernel import limits
from kernel.workflow.trigger_model import HTTP_METHODS
from kernel.workflow.trigger_parse import (
    CRON_FIELDS,
    DEBOUNCE_FIELDS,
    HTTP_FIELDS,
    SUBJECT_FIELDS,
    TRIGGER_FIELDS,
    WEBHOOK_FIELDS,
)
from kernel.workflow.trigger_rules import ROUTE_PATH, TRIGGER_ID

JSONSchema = dict[str, Any]
ObjectOf = Callable[..., JSONSchema]
DurationOf = Callable[[int], JSONSchema]


def triggers_property() -> JSONSchema:
    """The schema of the top-level `triggers` field."""
    return {
        "type": "array",
        "maxItems": limits.triggers_per_workflow_max,
        "items": {"$ref": "#/$defs/trigger"},
    }


def trigger_definitions(object_of: ObjectOf, duration_of: DurationOf) -> dict[str, JSONSchema]:
    """The `$defs` entries of a trigger and its sources."""
    path = _text(f"^(?:{ROUTE_PATH.pattern})$", limits.trigger_path_length_max)
    secret = {
        "type": "string",
        "minLength": limits.trigger_secret_length_min,
        "maxLength": limits.trigger_secret_length_max,
    }
    cron = object_of(
        CRON_FIELDS,
        {
            "expression": {"type": "string", "description": "5 fields: m h dom mon dow"},
            "timezone": {"type": "string", "description": "an IANA name; default UTC"},
            "backfill": {"type": "integer", "minimum": 0, "maximum": limits.cron_backfill_max},
        },
        required=("expression",),
    )
    subject_fields = {
        "subject": _text("", limits.trigger_subject_length_max),
        "stream": {"type": "string"},
    }
    http = {
        "path": path,
        "method": {"enum": list(HTTP_METHODS)},
        "timeout": duration_of(limits.http_trigger_timeout_ms_max),
        "max_body_bytes": {
            "type": "integer", "minimum": 1, "maximum": limits.trigger_body_bytes_max,
        },
        "secret": secret,
        "idempotency_header": {"type": "string"},
    }  # fmt: skip
    debounce = {
        "period": duration_of(limits.debounce_ms_max),
        "timeout": duration_of(limits.debounce_ms_max),
        "key": {"type": "string", "description": "a dotted path into the fire's input"},
    }
    trigger = {
        "id": _text(f"^(?:{TRIGGER_ID.pattern})$", limits.trigger_id_length_max),
        "enabled": {"type": "boolean"},
        "cron": {"$ref": "#/$defs/trigger.cron"},
        "subject": {
            "anyOf": [
                {"type": "string"},
                object_of(SUBJECT_FIELDS, subject_fields, required=("subject",)),
            ]
        },
        "webhook": object_of(WEBHOOK_FIELDS, {"path": path, "secret": secret}, required=("path",)),
        "http": object_of(HTTP_FIELDS, http, required=("path",)),
        "debounce": object_of(DEBOUNCE_FIELDS, debounce, required=("period",)),
    }
    return {
        "trigger": object_of(TRIGGER_FIELDS, trigger, required=("id",)),
        "trigger.cron": cron,
    }


def _text(pattern: str, length_max: int) -> JSONSchema:
    schema: JSONSchema = {"type": "string", "minLength": 1, "maxLength": length_max}
    if pattern:
        schema["pattern"] = pattern
    return schema


__all__ = ["trigger_definitions", "triggers_property"]
