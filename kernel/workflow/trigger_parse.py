"""Reading a workflow document's `triggers` (JSON) into `TriggerDef`s, and writing them back.

Shapes only (types, unknown fields, duration syntax); a value of the wrong shape is reported
here and replaced by a default the rules then do not judge again. The rules are
`kernel.workflow.trigger_rules`. Durations are written as in the rest of the format (`"30s"`
or integer nanoseconds). Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

from kernel import limits
from kernel.errors import Problem
from kernel.workflow.durations import format_duration, parse_duration
from kernel.workflow.fields import join_path, read_object, read_text, read_whole
from kernel.workflow.problems import Problems
from kernel.workflow.trigger_model import (
    DEFAULT_TIMEZONE,
    HTTP_METHODS,
    CronSource,
    Debounce,
    HttpMethod,
    HttpSource,
    SubjectSource,
    TriggerDef,
    WebhookSource,
)
from kernel.workflow.trigger_rules import BACKFILL_RULE, BODY_RULE, METHOD_RULE

TRIGGER_FIELDS: Final = ("id", "enabled", "cron", "subject", "webhook", "http", "debounce")
CRON_FIELDS: Final = ("expression", "timezone", "backfill")
SUBJECT_FIELDS: Final = ("subject", "stream")
WEBHOOK_FIELDS: Final = ("path", "secret")
HTTP_FIELDS: Final = (
    "path", "method", "timeout", "max_body_bytes", "secret", "idempotency_header",
)  # fmt: skip
DEBOUNCE_FIELDS: Final = ("period", "timeout", "key")
NOT_A_TRIGGER: Final = TriggerDef(id="", cron=CronSource(expression="* * * * *"))


def read_triggers(value: object, problems: Problems) -> tuple[TriggerDef, ...]:
    """The `triggers` of a workflow document (an array of trigger objects)."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        problems.add("triggers", value, "must be an array of trigger objects")
        return ()
    if len(value) > limits.triggers_per_workflow_max:  # the rules name the bound
        bound = limits.triggers_per_workflow_max
        rule = f"holds {len(value)} triggers; the limit is {bound} (triggers_per_workflow_max)"
        problems.add_shown("triggers", f"[... {len(value)} items]", rule)
        return ()
    return tuple(
        read_trigger(raw, f"triggers[{index}]", problems) for index, raw in enumerate(value)
    )


def read_trigger(raw: object, path: str, problems: Problems) -> TriggerDef:
    """One trigger object (`path` names it in problems)."""
    fields = read_object(raw, path, TRIGGER_FIELDS, problems)
    if fields is None:
        return NOT_A_TRIGGER
    enabled = fields.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.add(join_path(path, "enabled"), enabled, "must be true or false")
        enabled = True
    return TriggerDef(
        id=read_text(fields, "id", path, problems, required=True),
        enabled=enabled,
        cron=_cron(fields.get("cron"), f"{path}.cron", problems),
        subject=_subject(fields.get("subject"), f"{path}.subject", problems),
        webhook=_webhook(fields.get("webhook"), f"{path}.webhook", problems),
        http=_http(fields.get("http"), f"{path}.http", problems),
        debounce=_debounce(fields.get("debounce"), f"{path}.debounce", problems),
    )


def _cron(value: object, path: str, problems: Problems) -> CronSource | None:
    if value is None:
        return None
    fields = read_object(value, path, CRON_FIELDS, problems)
    if fields is None:
        return CronSource(expression="* * * * *")  # reported; the rules need not judge it
    expression = read_text(fields, "expression", path, problems, required=True)
    timezone = read_text(fields, "timezone", path, problems, required=False)
    backfill = read_whole(fields.get("backfill"), f"{path}.backfill", BACKFILL_RULE, problems)
    return CronSource(
        expression=expression or ("* * * * *" if "expression" not in fields else expression),
        timezone=timezone or DEFAULT_TIMEZONE,
        backfill=0 if backfill is None else backfill,
    )


def _subject(value: object, path: str, problems: Problems) -> SubjectSource | None:
    if value is None:
        return None
    if isinstance(value, str):  # the short form: "subject": "orders.created"
        return SubjectSource(subject=value)
    fields = read_object(value, path, SUBJECT_FIELDS, problems)
    if fields is None:
        return SubjectSource(subject="x")
    subject = read_text(fields, "subject", path, problems, required=True)
    stream = read_text(fields, "stream", path, problems, required=False)
    return SubjectSource(subject=subject or "x", stream=stream)


def _webhook(value: object, path: str, problems: Problems) -> WebhookSource | None:
    if value is None:
        return None
    fields = read_object(value, path, WEBHOOK_FIELDS, problems)
    if fields is None:
        return WebhookSource(path="/")
    route = read_text(fields, "path", path, problems, required=True)
    secret = read_text(fields, "secret", path, problems, required=False)
    return WebhookSource(path=route or "/", secret=secret)


def _http(value: object, path: str, problems: Problems) -> HttpSource | None:
    if value is None:
        return None
    fields = read_object(value, path, HTTP_FIELDS, problems)
    if fields is None:
        return HttpSource(path="/")
    route = read_text(fields, "path", path, problems, required=True)
    method = _method(fields.get("method"), f"{path}.method", problems)
    timeout = _duration(fields.get("timeout"), f"{path}.timeout", problems)
    body = read_whole(fields.get("max_body_bytes"), f"{path}.max_body_bytes", BODY_RULE, problems)
    return HttpSource(
        path=route or "/",
        method=method,
        timeout_ms=limits.http_trigger_timeout_ms_default if timeout is None else timeout,
        max_body_bytes=limits.trigger_body_bytes_default if body is None else body,
        secret=read_text(fields, "secret", path, problems, required=False),
        idempotency_header=read_text(fields, "idempotency_header", path, problems, required=False),
    )


def _method(value: object, path: str, problems: Problems) -> HttpMethod:
    if value is None:
        return "POST"
    upper = value.upper() if isinstance(value, str) else None
    for method in HTTP_METHODS:
        if method == upper:
            return method
    problems.add(path, value, METHOD_RULE)
    return "POST"


def _debounce(value: object, path: str, problems: Problems) -> Debounce | None:
    if value is None:
        return None
    fields = read_object(value, path, DEBOUNCE_FIELDS, problems)
    if fields is None:
        return None
    if "period" not in fields:
        problems.add(f"{path}.period", None, "is required: a duration such as '5s'")
    period = _duration(fields.get("period"), f"{path}.period", problems)
    timeout = _duration(fields.get("timeout"), f"{path}.timeout", problems)
    key = read_text(fields, "key", path, problems, required=False)
    return Debounce(period_ms=period or 1, timeout_ms=timeout or 0, key=key)


def _duration(value: object, path: str, problems: Problems) -> int | None:
    if value is None:
        return None
    milliseconds = parse_duration(value, path)
    if isinstance(milliseconds, Problem):
        problems.extend((milliseconds,))
        return None
    return milliseconds


def trigger_document(trigger: TriggerDef) -> dict[str, object]:
    """The trigger in the user's JSON form (defaults left out)."""
    document: dict[str, object] = {"id": trigger.id}
    if not trigger.enabled:
        document["enabled"] = False
    if trigger.cron is not None:
        cron: dict[str, object] = {"expression": trigger.cron.expression}
        if trigger.cron.timezone != DEFAULT_TIMEZONE:
            cron["timezone"] = trigger.cron.timezone
        if trigger.cron.backfill:
            cron["backfill"] = trigger.cron.backfill
        document["cron"] = cron
    if trigger.subject is not None:
        subject: dict[str, object] = {"subject": trigger.subject.subject}
        if trigger.subject.stream:
            subject["stream"] = trigger.subject.stream
        document["subject"] = subject
    if trigger.webhook is not None:
        document["webhook"] = _dropped_empty(
            {"path": trigger.webhook.path, "secret": trigger.webhook.secret}
        )
    if trigger.http is not None:
        document["http"] = _http_document(trigger.http)
    if trigger.debounce is not None:
        debounce = trigger.debounce
        document["debounce"] = _dropped_empty({
            "period": format_duration(debounce.period_ms),
            "timeout": format_duration(debounce.timeout_ms) if debounce.timeout_ms else "",
            "key": debounce.key,
        })  # fmt: skip
    return document


def _http_document(http: HttpSource) -> dict[str, object]:
    return _dropped_empty({
        "path": http.path,
        "method": http.method,
        "timeout": format_duration(http.timeout_ms),
        "max_body_bytes": http.max_body_bytes,
        "secret": http.secret,
        "idempotency_header": http.idempotency_header,
    })  # fmt: skip


def _dropped_empty(document: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in document.items() if value != ""}


__all__ = ["read_trigger", "read_triggers", "trigger_document"]
