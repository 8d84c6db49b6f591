"""The admission fields of a workflow document: read, checked and written back.

`concurrency.max_runs` (with `concurrency.key`), `priority` (an integer or a path into the
input), `singleton` {key, mode} and `input_schema` (a JSON Schema object, draft 2020-12) become
one `Admission` value (kernel/workflow/model.py). What they mean at run time is
kernel/admission.py; this module only reads shapes and checks bounds. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import limits
from kernel.errors import Problem
from kernel.workflow.admission_rules import (
    KEY_RULE,
    MAX_RUNS_RULE,
    MODE_RULE,
    PRIORITY_RULE,
    RATE_RULE,
    TASK_CONCURRENCY_RULE,
)
from kernel.workflow.durations import format_duration, parse_duration
from kernel.workflow.fields import canonical_json, read_object, read_whole
from kernel.workflow.model import (
    SINGLETON_MODES,
    Admission,
    RateLimit,
    Singleton,
    TaskConcurrency,
)
from kernel.workflow.problems import MISSING, Problems

SINGLETON_FIELDS: Final = ("key", "mode")
RATE_LIMIT_FIELDS: Final = ("task", "step", "limit", "period", "key", "units")


def read_admission(
    fields: dict[str, object], concurrency: dict[str, object] | None, problems: Problems
) -> Admission | None:
    """The admission of a document's top-level fields (None when it sets none of them)."""
    max_runs = key = None
    if concurrency is not None:
        max_runs = read_whole(concurrency.get("max_runs"), "concurrency.max_runs",
                              MAX_RUNS_RULE, problems)  # fmt: skip
        key = _text(concurrency.get("key"), "concurrency.key", problems)
    priority, priority_key = _priority(fields.get("priority"), problems)
    singleton = _singleton(fields.get("singleton"), problems)
    schema = _schema(fields.get("input_schema"), problems)
    admission = Admission(
        max_runs=max_runs, key=key or "", priority=priority, priority_key=priority_key,
        singleton=singleton, input_schema=schema or msgspec.Raw(b"null"),
        rate_limits=_rate_limits(fields.get("rate_limits"), problems),
        max_task_concurrency=_task_concurrency(fields.get("max_task_concurrency"), problems),
    )  # fmt: skip
    return None if admission == Admission() else admission


def admission_document(admission: Admission) -> dict[str, object]:
    """The document fields of an admission (`parse(document(w)) == w`)."""
    document: dict[str, object] = {}
    if admission.priority_key:
        document["priority"] = admission.priority_key
    elif admission.priority:
        document["priority"] = admission.priority
    if admission.singleton is not None:
        singleton = admission.singleton
        document["singleton"] = {"key": singleton.key, "mode": singleton.mode}
    if admission.schema is not None:
        document["input_schema"] = msgspec.json.decode(bytes(admission.schema))
    if admission.rate_limits:
        document["rate_limits"] = [_rate_document(rate) for rate in admission.rate_limits]
    if admission.max_task_concurrency:
        document["max_task_concurrency"] = {
            each.task: each.limit for each in admission.max_task_concurrency
        }
    return document


def _rate_document(rate: RateLimit) -> dict[str, object]:
    document: dict[str, object] = {"task": rate.task} if rate.task else {"step": rate.step}
    document.update(limit=rate.limit, period=format_duration(rate.period_ms))
    if rate.key:
        document["key"] = rate.key
    if rate.units != 1:
        document["units"] = rate.units
    return document


def concurrency_runs_document(admission: Admission | None) -> dict[str, object]:
    """The `concurrency` fields an admission adds (max_runs, key)."""
    if admission is None or admission.max_runs is None:
        return {}
    document: dict[str, object] = {"max_runs": admission.max_runs}
    if admission.key:
        document["key"] = admission.key
    return document


def _text(value: object, path: str, problems: Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(path, value, KEY_RULE)
        return None
    return value


def _priority(value: object, problems: Problems) -> tuple[int, str]:
    if value is None:
        return 0, ""
    if isinstance(value, str):
        return 0, value
    if isinstance(value, int) and not isinstance(value, bool):
        return value, ""
    problems.add("priority", value, PRIORITY_RULE)
    return 0, ""


def _singleton(value: object, problems: Problems) -> Singleton | None:
    if value is None:
        return None
    fields = read_object(value, "singleton", SINGLETON_FIELDS, problems)
    if fields is None:
        return None
    key = fields.get("key", MISSING)
    if not isinstance(key, str):
        problems.add("singleton.key", key, KEY_RULE)
        key = "?"
    mode = fields.get("mode", "skip")
    if mode not in SINGLETON_MODES:
        problems.add("singleton.mode", mode, MODE_RULE)
        mode = "skip"
    assert mode in SINGLETON_MODES
    return Singleton(key=key, mode=mode)


def _schema(value: object, problems: Problems) -> msgspec.Raw | None:
    if value is None:
        return None
    if not isinstance(value, dict | bool):
        problems.add("input_schema", value, "must be a JSON Schema (an object or a boolean)")
        return None
    return canonical_json(value, "input_schema", problems)


def _rate_limits(value: object, problems: Problems) -> tuple[RateLimit, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limits.rate_limits_max:
        rule = f"must be a list of at most {limits.rate_limits_max} rate limits"
        problems.add("rate_limits", value, rule)
        return ()
    found: list[RateLimit] = []
    for index, item in enumerate(value):
        rate = _rate_limit(item, f"rate_limits[{index}]", problems)
        if rate is not None:
            found.append(rate)
    return tuple(found)


def _rate_limit(value: object, path: str, problems: Problems) -> RateLimit | None:
    fields = read_object(value, path, RATE_LIMIT_FIELDS, problems)
    if fields is None:
        return None
    task, step = fields.get("task", ""), fields.get("step", "")
    if not isinstance(task, str) or not isinstance(step, str) or bool(task) == bool(step):
        problems.add(path, value, "must name either a task type (task) or a step (step)")
        return None
    limit = read_whole(fields.get("limit", MISSING), f"{path}.limit", RATE_RULE, problems)
    units = read_whole(fields.get("units", 1), f"{path}.units", RATE_RULE, problems)
    period = parse_duration(fields.get("period", MISSING), f"{path}.period")
    if isinstance(period, Problem):
        problems.extend((period,))
        return None
    key = _text(fields.get("key"), f"{path}.key", problems)
    if limit is None or units is None:
        return None
    return RateLimit(
        task=task, step=step, limit=limit, period_ms=period, key=key or "", units=units
    )


def _task_concurrency(value: object, problems: Problems) -> tuple[TaskConcurrency, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.add("max_task_concurrency", value, "must be an object of task type -> limit")
        return ()
    found: list[TaskConcurrency] = []
    for task, limit in sorted(value.items(), key=lambda item: str(item[0])):
        path = f"max_task_concurrency.{task}"
        whole = read_whole(limit, path, TASK_CONCURRENCY_RULE, problems)
        if whole is not None and isinstance(task, str):
            found.append(TaskConcurrency(task=task, limit=whole))
    return tuple(found)
