"""Workflow definitions: the typed, normalized value every run carries in `run.started`.

Users write JSON in the field names of the DagNats workflow files (`depends_on`,
`retry.max_attempts`, durations as `"30s"` or integer nanoseconds) or use the Python builder;
both produce the same `WorkflowDef`. Parsing and validation (every problem at once, each naming
its JSON path, the bad value and the rule) live below the types. Pure: no I/O.

The stored form accepts unknown fields (an old reader skips what a newer writer added); the
user-written form rejects them, which the parser enforces by hand.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import msgspec

from kernel import registry
from kernel.durations import format_duration
from kernel.errors import Problem

RetryStrategy = Literal["fixed", "linear", "exponential"]
SkipOp = Literal["==", "!=", "<", ">", "<=", ">="]
EMPTY_OBJECT = msgspec.Raw(b"{}")


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how late a failed attempt is tried again.

    `max_attempts` counts every attempt, the first included (1 = no retry). Delays grow by
    `strategy` from `initial_delay_ms`, capped at `max_delay_ms` (0 = only the global cap), and
    are spread by `jitter`, a fraction in [0, 1] of the delay.
    """

    max_attempts: int = 1
    strategy: RetryStrategy = "exponential"
    initial_delay_ms: int = 1_000
    max_delay_ms: int = 0
    multiplier: float = 2.0
    jitter: float = 0.0


NO_RETRY = RetryPolicy()


class SkipIf(msgspec.Struct, frozen=True, kw_only=True):
    """Skip a step when a dependency's output field compares true against `value` (JSON)."""

    step_id: str
    field: str
    op: SkipOp
    value: msgspec.Raw


class StepDef(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One node of the DAG. `config` is the step type's own config, as JSON on the wire;
    `settings` is that config typed (the step type's frozen Struct), converted once per
    definition value and carried with it (not stored: the bytes stay `config`)."""

    id: str
    type: str = "task"
    task: str = ""
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy | None = None
    timeout_ms: int | None = None
    skip_if: SkipIf | None = None
    on_failure: str | None = None
    compensate: str | None = None
    metadata: msgspec.Raw = EMPTY_OBJECT
    config: msgspec.Raw = EMPTY_OBJECT

    @cached_property
    def settings(self) -> object:
        """The step type's typed config of this step (None for a type without config).

        Raises:
            KeyError: the type is not registered (definitions are validated before use).
        """
        return registry.get(self.type).read_config(self)


class CancelOn(msgspec.Struct, frozen=True, kw_only=True):
    """Cancel the run when an external event named `event` arrives whose payload meets `match`
    (a `kernel.conditions` condition, as JSON; `null`: any payload)."""

    event: str
    match: msgspec.Raw = msgspec.Raw(b"null")


class WorkflowDef(msgspec.Struct, frozen=True, kw_only=True):
    """A whole workflow: named, versioned, its steps in the order the user wrote them."""

    name: str
    version: str = "1"
    steps: tuple[StepDef, ...] = ()
    default_retry: RetryPolicy | None = None
    timeout_ms: int | None = None
    max_concurrent_steps: int | None = None
    metadata: msgspec.Raw = EMPTY_OBJECT
    cancel_on: tuple[CancelOn, ...] = ()


# Parsing, validation and the user's JSON form. The parser lives in `kernel.workflow_parse`
# (with `workflow_fields` and `workflow_rules`), which imports the types above; it is imported
# inside the two functions below, never at the top, so there is no import cycle.


def parse_workflow(source: bytes | str | object) -> WorkflowDef:
    """The `WorkflowDef` of a user-written workflow: JSON text (bytes or str) or a decoded dict.

    Args:
        source: JSON text, or the already-decoded document (a dict).

    Returns:
        The normalized definition (durations in ms, "normal" read as "task", defaults filled).

    Raises:
        WorkflowInvalidError: listing every problem found (at most
            `limits.validation_problems_max`), each with its JSON path, value and rule. Nothing
            else is raised, whatever the input.
    """
    from kernel.workflow_parse import parse_workflow as parse

    return parse(source)


def validate_workflow(workflow: WorkflowDef) -> tuple[Problem, ...]:
    """Every problem of an already-typed definition, by the same rules as `parse_workflow`.

    The value is checked through its user JSON form, so paths read as a user would write
    them (`steps[2].retry.initial_delay`). A typed `RetryPolicy` must also have
    `max_attempts >= 1` (only the JSON form reads 0 as 1).

    Returns:
        The problems found, `()` when the definition is valid.
    """
    from kernel.workflow_fields import Problems
    from kernel.workflow_parse import parse_document

    problems = Problems()
    parse_document(workflow_to_document(workflow), problems)
    policies = [("default_retry", workflow.default_retry)] + [
        (f"steps[{index}].retry", step.retry) for index, step in enumerate(workflow.steps)
    ]
    for path, policy in policies:
        if policy is not None and policy.max_attempts == 0:
            rule = "must be at least 1 in a RetryPolicy (it counts every attempt)"
            problems.add(f"{path}.max_attempts", 0, rule)
    return tuple(problems.found)


def workflow_to_document(workflow: WorkflowDef) -> dict[str, object]:
    """The user JSON form of a definition: `parse_workflow(workflow_to_document(w)) == w`.

    Durations become strings ("1m30s"); raw JSON fields become decoded values. A value no
    user document could hold (a negative duration, raw bytes that are not JSON) is passed
    through as it is, so that parsing the document names the problem.
    """
    document: dict[str, object] = {"name": workflow.name, "version": workflow.version}
    if workflow.timeout_ms is not None:
        document["timeout"] = _duration_text(workflow.timeout_ms)
    if workflow.max_concurrent_steps is not None:
        document["concurrency"] = {"max_steps": workflow.max_concurrent_steps}
    if workflow.default_retry is not None:
        document["default_retry"] = _retry_document(workflow.default_retry)
    if bytes(workflow.metadata) != bytes(EMPTY_OBJECT):
        document["metadata"] = _raw_value(workflow.metadata)
    if workflow.cancel_on:
        document["cancel_on"] = [_cancel_on_document(item) for item in workflow.cancel_on]
    document["steps"] = [_step_document(step) for step in workflow.steps]
    return document


def _cancel_on_document(item: CancelOn) -> dict[str, object]:
    document: dict[str, object] = {"event": item.event}
    if bytes(item.match) != b"null":
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
