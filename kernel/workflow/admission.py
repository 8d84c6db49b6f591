"""The admission fields of a workflow document: read, checked and written back.

`concurrency.max_runs` (with `concurrency.key`), `priority` (an integer or a path into the
input), `singleton` {key, mode} and `input_schema` (a JSON Schema object, draft 2020-12) become
one `Admission` value (kernel/workflow/model.py). What they mean at run time is
kernel/admission.py; this module only reads shapes and checks bounds. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel.workflow.admission_rules import KEY_RULE, MAX_RUNS_RULE, MODE_RULE, PRIORITY_RULE
from kernel.workflow.fields import canonical_json, read_object, read_whole
from kernel.workflow.model import SINGLETON_MODES, Admission, Singleton
from kernel.workflow.problems import MISSING, Problems

SINGLETON_FIELDS: Final = ("key", "mode")


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
        singleton=singleton, input_schema=schema,
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
    if admission.input_schema is not None:
        document["input_schema"] = msgspec.json.decode(bytes(admission.input_schema))
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
