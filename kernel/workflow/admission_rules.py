"""The rules of a workflow's admission fields, over the typed `Admission` (parse and
`validate_workflow` share them; kernel/workflow/admission.py reads the document). Pure."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from kernel import limits
from kernel.workflow.model import SINGLETON_MODES, Admission
from kernel.workflow.problems import Problems

KEY_PATH: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
KEY_RULE: Final = (
    "must be a dotted path into the input (letters, digits, _ and -; e.g. customer.id), "
    f"at most {limits.admission_key_path_length_max} characters"
)
MAX_RUNS_RULE: Final = f"must be an integer from 1 to {limits.max_runs_max}"
PRIORITY_RULE: Final = (
    f"must be an integer from -{limits.priority_abs_max} to {limits.priority_abs_max}, "
    "or a path into the input"
)
MODE_RULE: Final = f"must be one of {', '.join(SINGLETON_MODES)}"
RATE_RULE: Final = f"must be an integer from 1 to {limits.rate_limit_max}"
TASK_CONCURRENCY_RULE: Final = f"must be an integer from 1 to {limits.task_concurrency_max}"
PERIOD_RULE: Final = f"must be a duration from 1ms to {limits.rate_limit_period_ms_max} ms"
EXCLUSIVE_RULE: Final = "use either singleton or concurrency.max_runs (a singleton is one slot)"


def check_admission(admission: Admission | None, problems: Problems) -> None:
    """Every problem of a typed admission (the rules parse and validate_workflow share)."""
    if admission is None:
        return
    if admission.max_runs is not None and not 1 <= admission.max_runs <= limits.max_runs_max:
        problems.add("concurrency.max_runs", admission.max_runs, MAX_RUNS_RULE)
    if admission.key and not _is_path(admission.key):
        problems.add("concurrency.key", admission.key, KEY_RULE)
    if admission.key and admission.max_runs is None:
        problems.add("concurrency.key", admission.key, "needs concurrency.max_runs")
    if abs(admission.priority) > limits.priority_abs_max:
        problems.add("priority", admission.priority, PRIORITY_RULE)
    if admission.priority_key and not _is_path(admission.priority_key):
        problems.add("priority", admission.priority_key, KEY_RULE)
    singleton = admission.singleton
    if singleton is not None:
        if not _is_path(singleton.key):
            problems.add("singleton.key", singleton.key, KEY_RULE)
        if singleton.mode not in SINGLETON_MODES:
            problems.add("singleton.mode", singleton.mode, MODE_RULE)
        if admission.max_runs is not None:
            problems.add("singleton", "(set)", EXCLUSIVE_RULE)
    schema = admission.schema
    if schema is not None:
        _check_schema(schema, problems)
    _check_flow(admission, problems)


def check_flow_steps(admission: Admission | None, step_ids: set[str], problems: Problems) -> None:
    """A rate limit per step names a step of the workflow."""
    if admission is None:
        return
    for index, rate in enumerate(admission.rate_limits):
        if rate.step and rate.step not in step_ids:
            problems.add(f"rate_limits[{index}].step", rate.step, "must name a step")


def _check_flow(admission: Admission, problems: Problems) -> None:
    if len(admission.rate_limits) > limits.rate_limits_max:
        rule = f"must hold at most {limits.rate_limits_max} rate limits"
        problems.add("rate_limits", len(admission.rate_limits), rule)
    for index, rate in enumerate(admission.rate_limits):
        path = f"rate_limits[{index}]"
        if bool(rate.task) == bool(rate.step):
            problems.add(path, "(task and step)", "must name either a task type or a step")
        if not 1 <= rate.limit <= limits.rate_limit_max:
            problems.add(f"{path}.limit", rate.limit, RATE_RULE)
        if not 1 <= rate.units <= rate.limit:
            problems.add(f"{path}.units", rate.units, f"must be from 1 to the limit {rate.limit}")
        if not 1 <= rate.period_ms <= limits.rate_limit_period_ms_max:
            problems.add(f"{path}.period", rate.period_ms, PERIOD_RULE)
        if rate.key and not _is_path(rate.key):
            problems.add(f"{path}.key", rate.key, KEY_RULE)
    for each in admission.max_task_concurrency:
        if not 1 <= each.limit <= limits.task_concurrency_max:
            problems.add(f"max_task_concurrency.{each.task}", each.limit, TASK_CONCURRENCY_RULE)


def _is_path(path: str) -> bool:
    short = len(path) <= limits.admission_key_path_length_max
    return short and KEY_PATH.fullmatch(path) is not None


def _check_schema(schema: msgspec.Raw, problems: Problems) -> None:
    size = len(schema)
    if size > limits.input_schema_bytes_max:
        rule = f"is larger than the limit of {limits.input_schema_bytes_max} bytes"
        problems.add_shown("input_schema", f"{size} bytes", rule)
        return
    try:
        decoded = msgspec.json.decode(bytes(schema))
    except msgspec.DecodeError:
        problems.add_shown("input_schema", "(not JSON)", "must be a JSON Schema object")
        return
    if not isinstance(decoded, dict | bool):
        problems.add("input_schema", decoded, "must be a JSON Schema (an object or a boolean)")
