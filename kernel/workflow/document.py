"""The user JSON form of a typed definition: `workflow_to_document`, the parser's inverse.

The CLI renders a stored definition with it, and the round trip
`parse_workflow(workflow_to_document(w)) == w` holds for every valid `w`. This module only
writes a document; it checks nothing and never raises on a value it cannot write (it passes
such a value through as it is). Pure: no I/O.
"""

from __future__ import annotations

import msgspec

from kernel.workflow.admission import admission_document, concurrency_runs_document
from kernel.workflow.child_runs import child_runs_document
from kernel.workflow.durations import format_duration
from kernel.workflow.model import (
    EMPTY_OBJECT,
    NO_MATCH,
    CancelOn,
    RetryPolicy,
    StepDef,
    WorkflowDef,
)
from kernel.workflow.trigger_model import triggers_of
from kernel.workflow.trigger_parse import trigger_document


def workflow_to_document(workflow: WorkflowDef) -> dict[str, object]:
    """The user JSON form of a definition: `parse_workflow(workflow_to_document(w)) == w`.

    Durations become strings ("1m30s"); raw JSON fields become decoded values. A value no
    user document could hold (a negative duration, raw bytes that are not JSON) is passed
    through as it is, so that parsing the document names the problem.
    """
    document: dict[str, object] = {"name": workflow.name, "version": workflow.version}
    if workflow.timeout_ms is not None:
        document["timeout"] = _duration_text(workflow.timeout_ms)
    concurrency = concurrency_runs_document(workflow.admission)
    if workflow.max_concurrent_steps is not None:
        concurrency = {"max_steps": workflow.max_concurrent_steps, **concurrency}
    if concurrency:
        document["concurrency"] = concurrency
    if workflow.admission is not None:
        document.update(admission_document(workflow.admission))
    if workflow.default_retry is not None:
        document["default_retry"] = _retry_document(workflow.default_retry)
    if bytes(workflow.metadata) != bytes(EMPTY_OBJECT):
        document["metadata"] = _raw_value(workflow.metadata)
    if workflow.cancel_on:
        document["cancel_on"] = [_cancel_on_document(item) for item in workflow.cancel_on]
    document["steps"] = [_step_document(step) for step in workflow.steps]
    if triggers_of(workflow):
        document["triggers"] = [trigger_document(item) for item in triggers_of(workflow)]
    child_runs = child_runs_document(workflow)
    if child_runs is not None:
        document["child_runs"] = child_runs
    return document


def _cancel_on_document(item: CancelOn) -> dict[str, object]:
    document: dict[str, object] = {"event": item.event}
    if item.match != NO_MATCH:
        document["match"] = _raw_value(item.match)
    return document


def _step_document(step: StepDef) -> dict[str, object]:
    document: dict[str, object] = {"id": step.id, "type": step.type}
    if step.task:
        document["task"] = step.task
    if step.depends_on:
        document["depends_on"] = list(step.depends_on)
    if step.retry is not None:
        document["retry"] = _retry_document(step.retry)
    if step.timeout_ms is not None:
        document["timeout"] = _duration_text(step.timeout_ms)
    if step.skip_if is not None:
        document["skip_if"] = {
            "step_id": step.skip_if.step_id,
            "field": step.skip_if.field,
            "op": step.skip_if.op,
            "value": _raw_value(step.skip_if.value),
        }
    if step.on_failure is not None:
        document["on_failure"] = step.on_failure
    if step.compensate is not None:
        document["compensate"] = step.compensate
    if bytes(step.metadata) != bytes(EMPTY_OBJECT):
        document["metadata"] = _raw_value(step.metadata)
    if bytes(step.config) != bytes(EMPTY_OBJECT):
        document["config"] = _raw_value(step.config)
    if step.worker_group:
        document["group"] = step.worker_group
    return document


def _retry_document(policy: RetryPolicy) -> dict[str, object]:
    return {
        "max_attempts": policy.max_attempts,
        "strategy": policy.strategy,
        "initial_delay": _duration_text(policy.initial_delay_ms),
        "max_delay": _duration_text(policy.max_delay_ms),
        "multiplier": policy.multiplier,
        "jitter": policy.jitter,
    }


def _duration_text(milliseconds: int) -> object:
    valid = isinstance(milliseconds, int) and not isinstance(milliseconds, bool)
    return format_duration(milliseconds) if valid and milliseconds >= 0 else milliseconds


def _raw_value(raw: msgspec.Raw) -> object:
    try:
        return msgspec.json.decode(bytes(raw))
    except (msgspec.DecodeError, RecursionError):
        return raw  # not JSON: parsing the document reports it
