"""The rules of a workflow, written once as checks over the typed `WorkflowDef`.

`parse_workflow` reads the JSON shapes (types, unknown fields, duration syntax) into a
`WorkflowDef`, then runs `check_workflow` on it; `validate_workflow` runs the same checks on a
value built in code, with no JSON round trip. Either way a problem is named by the JSON path a
user would write (`steps[2].retry.initial_delay`), with the bad value and the rule. The rules
between steps (ids, references, handlers, cycles) are in `kernel.workflow.references`; each
step type checks its own config (`StepType.validate`). This module reads no JSON document and
raises nothing. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Final

import msgspec

from kernel import limits, registry
from kernel.conditions import condition_problems
from kernel.errors import Problem
from kernel.registry import StepType
from kernel.workflow.admission_rules import check_admission, check_flow_steps
from kernel.workflow.durations import format_duration
from kernel.workflow.model import (
    EMPTY_OBJECT,
    NO_MATCH,
    CancelOn,
    RetryPolicy,
    RetryStrategy,
    SkipIf,
    SkipOp,
    StepDef,
    WorkflowDef,
)
from kernel.workflow.problems import MISSING, Problems
from kernel.workflow.references import (
    KnownSteps,
    check_between_steps,
    check_depends_on,
    check_reference,
    check_unique_id,
)
from kernel.workflow.trigger_model import triggers_of
from kernel.workflow.trigger_rules import check_triggers

WORKFLOW_NAME: Final = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*(?<!\.)")
TASK_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
STEP_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
EVENT_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
STRATEGIES: Final[dict[str, RetryStrategy]] = {
    "fixed": "fixed", "linear": "linear", "exponential": "exponential"
}  # fmt: skip
SKIP_OPS: Final[dict[str, SkipOp]] = {
    "==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="
}  # fmt: skip
DEPENDENCIES_SHOWN_MAX: Final = 10

# Rules the JSON readers also name, when a value has the wrong shape to be read at all.
ATTEMPTS_RULE: Final = f"must be an integer from 0 to {limits.attempts_max}"
STRATEGY_RULE: Final = f"must be one of {', '.join(STRATEGIES)}"
MULTIPLIER_RULE: Final = f"must be a number from 1 to {limits.retry_multiplier_max:g}"
JITTER_RULE: Final = "must be a fraction from 0 to 1, or true (0.2) or false (0)"
OP_RULE: Final = f"must be one of {' '.join(SKIP_OPS)}"
VERSION_RULE: Final = "must be a non-empty string or an integer"
MAX_STEPS_RULE: Final = f"must be an integer from 1 to {limits.steps_per_workflow_max}"
METADATA_RULE: Final = "must be a JSON object of string values"
CONFIG_RULE: Final = "must be a JSON object"
EVENT_RULE: Final = (
    f"is required: an event name, 1..{limits.event_name_length_max} of A-Z a-z 0-9 '_' '-' "
    "('.' between)"
)


def validate_workflow(workflow: WorkflowDef) -> tuple[Problem, ...]:
    """Every problem of an already-typed definition, by the same rules as `parse_workflow`.

    Paths read as a user would write them (`steps[2].retry.initial_delay`). A typed
    `RetryPolicy` must also have `max_attempts >= 1` (only the JSON form reads 0 as 1).

    Returns:
        The problems found (at most `limits.validation_problems_max`), `()` when valid.
    """
    problems = Problems()
    check_workflow(workflow, problems)
    policies = [("default_retry", workflow.default_retry)] + [
        (f"steps[{index}].retry", step.retry) for index, step in enumerate(workflow.steps)
    ]
    for path, policy in policies:  # after the shared rules: only a typed value can hold 0
        if policy is not None and policy.max_attempts == 0:
            rule = "must be at least 1 in a RetryPolicy (it counts every attempt)"
            problems.add(f"{path}.max_attempts", 0, rule)
    return tuple(problems.found)


def check_workflow(workflow: WorkflowDef, problems: Problems) -> None:
    """Add every problem of a typed definition, in the order of the user's document."""
    _check_name(workflow.name, problems)
    if not workflow.version:
        problems.add("version", workflow.version, VERSION_RULE)
    elif len(workflow.version) > limits.workflow_name_length_max:
        rule = f"is longer than {limits.workflow_name_length_max} characters"
        problems.add("version", workflow.version, rule)
    if workflow.default_retry is not None:
        _check_retry(workflow.default_retry, "default_retry", problems)
    _check_timeout(workflow.timeout_ms, "timeout", problems)
    top = limits.steps_per_workflow_max
    max_steps = workflow.max_concurrent_steps
    if max_steps is not None and not 1 <= max_steps <= top:
        problems.add("concurrency.max_steps", max_steps, MAX_STEPS_RULE)
    _check_metadata(workflow.metadata, "metadata", problems)
    if check_step_count(len(workflow.steps), problems):
        known = KnownSteps(workflow.steps)
        for index, step in enumerate(workflow.steps):
            if problems.full:
                break
            _check_step(step, index, known, problems)
        check_between_steps(workflow.steps, known, problems)
    _check_cancel_on(workflow.cancel_on, problems)
    check_admission(workflow.admission, problems)
    check_flow_steps(workflow.admission, {step.id for step in workflow.steps}, problems)
    check_triggers(triggers_of(workflow), problems)


def check_step_count(count: int, problems: Problems) -> bool:
    """Whether a workflow may hold `count` steps; when not, a problem at `steps`."""
    if count == 0:
        problems.add("steps", [], "must hold at least one step")
        return False
    if count > limits.steps_per_workflow_max:
        rule = f"holds {count} steps; the limit is {limits.steps_per_workflow_max}"
        problems.add_shown("steps", f"[... {count} steps]", rule)
        return False
    return True


def check_cancel_on_count(count: int, problems: Problems) -> bool:
    """Whether a workflow may hold `count` cancel_on conditions; when not, a problem."""
    if count > limits.cancel_on_max:
        rule = f"holds {count} conditions; the limit is {limits.cancel_on_max} (cancel_on_max)"
        problems.add_shown("cancel_on", f"[... {count} items]", rule)
        return False
    return True


def check_metadata_values(document: dict[object, object], path: str, problems: Problems) -> bool:
    """Whether every value of a metadata object is a string; a problem for each that is not."""
    bad = [key for key, item in document.items() if not isinstance(item, str)]
    for key in bad[: limits.validation_problems_max]:
        rule = "must be a string (metadata values are strings)"
        problems.add(f"{path}.{key}", document[key], rule)
    return not bad


def _check_name(name: str, problems: Problems) -> None:
    if not name:
        problems.add("name", name, "must not be empty")
    elif len(name) > limits.workflow_name_length_max:
        problems.add("name", name, f"is longer than {limits.workflow_name_length_max} characters")
    elif not WORKFLOW_NAME.fullmatch(name):
        problems.add("name", name, "may hold only A-Z a-z 0-9 _ - . = (it is a key of the store)")


def _check_step(step: StepDef, index: int, known: KnownSteps, problems: Problems) -> None:
    path = f"steps[{index}]"
    _check_step_id(step.id, path, problems)
    check_unique_id(step, index, known, problems)
    step_type = registry.lookup(step.type)
    if step_type is None:
        rule = f"is not a step type (known: {', '.join(registry.names())}; 'normal' = task)"
        problems.add(f"{path}.type", step.type, rule)
    _check_task(step, step_type, path, problems)
    check_depends_on(step, path, known, problems)
    if step.retry is not None:
        _check_retry(step.retry, f"{path}.retry", problems)
    _check_timeout(step.timeout_ms, f"{path}.timeout", problems)
    if step.skip_if is not None:
        _check_skip_if(step.skip_if, step.depends_on, f"{path}.skip_if", problems)
    check_reference(step.on_failure, step.id, f"{path}.on_failure", known, problems)
    check_reference(step.compensate, step.id, f"{path}.compensate", known, problems)
    _check_metadata(step.metadata, f"{path}.metadata", problems)
    if _config_readable(step.config, f"{path}.config", problems) and step_type is not None:
        problems.extend(step_type.validate(step, path))


def _check_step_id(step_id: str, path: str, problems: Problems) -> None:
    path = f"{path}.id"
    if not step_id:
        problems.add(path, step_id, "must not be empty")
    elif len(step_id) > limits.step_id_length_max:
        problems.add(path, step_id, f"is longer than {limits.step_id_length_max} characters")
    elif STEP_ID.fullmatch(step_id) is None:
        rule = (
            "must use only letters, digits, '_' and '-' "
            "('.' is reserved for planner namespaces and ':' for message ids)"
        )
        problems.add(path, step_id, rule)


def _check_task(step: StepDef, step_type: StepType | None, path: str, problems: Problems) -> None:
    path = f"{path}.task"
    if not step.task:
        if step_type is not None and step_type.needs_task:
            rule = f"is required for a step of type {step.type!r}: the worker task it runs"
            problems.add(path, MISSING, rule)
    elif len(step.task) > limits.task_name_length_max:
        problems.add(path, step.task, f"is longer than {limits.task_name_length_max} characters")
    elif not TASK_NAME.fullmatch(step.task):
        rule = "must be words of A-Z a-z 0-9 _ - joined by single dots, e.g. 'payments.charge'"
        problems.add(path, step.task, rule)


def _check_retry(policy: RetryPolicy, path: str, problems: Problems) -> None:
    if not 0 <= policy.max_attempts <= limits.attempts_max:
        problems.add(f"{path}.max_attempts", policy.max_attempts, ATTEMPTS_RULE)
    if policy.strategy not in STRATEGIES:
        problems.add(f"{path}.strategy", policy.strategy, STRATEGY_RULE)
    initial, maximum = policy.initial_delay_ms, policy.max_delay_ms
    initial_valid = _delay_valid(initial, f"{path}.initial_delay", problems)
    maximum_valid = _delay_valid(maximum, f"{path}.max_delay", problems)
    if initial_valid and maximum_valid and 0 < maximum < initial:
        rule = f"must be 0 (uncapped) or at least initial_delay ({format_duration(initial)})"
        problems.add(f"{path}.max_delay", format_duration(maximum), rule)
    if not 1.0 <= policy.multiplier <= limits.retry_multiplier_max:
        problems.add(f"{path}.multiplier", policy.multiplier, MULTIPLIER_RULE)
    if not 0.0 <= policy.jitter <= 1.0:
        problems.add(f"{path}.jitter", policy.jitter, JITTER_RULE)


def _delay_valid(milliseconds: int, path: str, problems: Problems) -> bool:
    if milliseconds < 0:
        problems.add(path, milliseconds, "must not be negative")
        return False
    if milliseconds > limits.delay_ms_max:
        rule = f"is longer than the limit of {limits.delay_ms_max} ms (one week)"
        problems.add(path, format_duration(milliseconds), rule)
        return False
    return True


def _check_timeout(milliseconds: int | None, path: str, problems: Problems) -> None:
    if milliseconds is None:
        return
    if milliseconds < 0:
        problems.add(path, milliseconds, "must not be negative")
    elif milliseconds == 0:
        problems.add(path, "0s", "must be longer than zero (leave it out for no timeout)")
    elif milliseconds > limits.timeout_ms_max:
        rule = f"is longer than the limit of {limits.timeout_ms_max} ms (a year)"
        problems.add(path, format_duration(milliseconds), rule)


def _check_skip_if(
    skip: SkipIf, depends_on: tuple[str, ...], path: str, problems: Problems
) -> None:
    if not skip.step_id:
        problems.add(f"{path}.step_id", skip.step_id, "must not be empty")
    elif skip.step_id not in depends_on:
        listed = ", ".join(name for name in depends_on[:DEPENDENCIES_SHOWN_MAX] if name)
        listed = (listed or "none") + (", ..." if len(depends_on) > DEPENDENCIES_SHOWN_MAX else "")
        rule = f"must be among this step's depends_on ({listed})"
        problems.add(f"{path}.step_id", skip.step_id, rule)
    if not skip.field:
        problems.add(f"{path}.field", skip.field, "must not be empty")
    elif "" in skip.field.split("."):
        rule = "must be a key or a dotted path of keys with no empty part ('result.count')"
        problems.add(f"{path}.field", skip.field, rule)
    if skip.op not in SKIP_OPS:
        problems.add(f"{path}.op", skip.op, OP_RULE)
    value = _decoded(skip.value, f"{path}.value", None, problems)
    if value is not MISSING and skip.op in ("<", ">", "<=", ">=") and not _is_ordered(value):
        problems.add(f"{path}.value", value, f"must be a number or a string for op {skip.op!r}")


def _is_ordered(value: object) -> bool:
    """Whether `<`, `>`, `<=`, `>=` apply to `value`: a finite number or a string."""
    if isinstance(value, str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _check_metadata(raw: msgspec.Raw, path: str, problems: Problems) -> None:
    if raw == EMPTY_OBJECT:
        return
    document = _decoded(raw, path, METADATA_RULE, problems)
    if document is MISSING:
        return
    if not isinstance(document, dict):
        problems.add(path, document, METADATA_RULE)
    elif check_metadata_values(document, path, problems) and len(raw) > limits.metadata_bytes_max:
        rule = f"is {len(raw)} bytes of JSON; the limit is {limits.metadata_bytes_max}"
        problems.add_shown(path, f"{{... {len(document)} keys}}", rule)


def _config_readable(raw: msgspec.Raw, path: str, problems: Problems) -> bool:
    """Whether a step's config is a JSON object within the bound (its type may read it)."""
    if raw == EMPTY_OBJECT:
        return True
    document = _decoded(raw, path, CONFIG_RULE, problems)
    if document is MISSING:
        return False
    if not isinstance(document, dict):
        problems.add(path, document, CONFIG_RULE)
        return False
    if len(raw) > limits.workflow_bytes_max:
        rule = f"is {len(raw)} bytes of JSON; the limit is {limits.workflow_bytes_max}"
        problems.add_shown(path, f"{{... {len(document)} keys}}", rule)
        return False
    return True


def _check_cancel_on(items: tuple[CancelOn, ...], problems: Problems) -> None:
    if not check_cancel_on_count(len(items), problems):
        return
    bound = limits.event_name_length_max
    for index, item in enumerate(items):
        path = f"cancel_on[{index}]"
        name = item.event
        if not name or len(name) > bound or EVENT_NAME.fullmatch(name) is None:
            problems.add(f"{path}.event", name, EVENT_RULE)
        if item.match != NO_MATCH:
            condition = _decoded(item.match, f"{path}.match", None, problems)
            if condition is not MISSING:
                problems.extend(condition_problems(condition, f"{path}.match"))


def _decoded(raw: msgspec.Raw, path: str, rule: str | None, problems: Problems) -> object:
    """The value of raw JSON; `MISSING`, with a problem (`rule`, or the decoder's error), when
    the bytes are not JSON (only a value built in code can hold such bytes)."""
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as error:
        text = bytes(raw).decode("utf-8", "replace")
        problems.add(path, text, rule or f"must be JSON: {error}")
        return MISSING
