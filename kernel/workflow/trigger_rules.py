"""The rules of a workflow's triggers, written once over the typed `TriggerDef`s.

`kernel.workflow.rules.check_workflow` runs them, so a JSON file, the builder and a value built
in code get the same problems, at the paths a user writes (`triggers[1].cron.expression`).
The time zone's name is checked for shape here; whether the zone exists is the shell's check
(the zone database is a file: `dagnats.runtime.triggers_plan.zone_problems`). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from kernel import limits
from kernel.cron import parse_cron
from kernel.workflow.problems import Problems
from kernel.workflow.trigger_model import HTTP_METHODS, TRIGGER_KINDS, Debounce, TriggerDef

TRIGGER_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
ROUTE_PATH: Final = re.compile(r"/[A-Za-z0-9._~/-]*")
SUBJECT: Final = re.compile(r"[A-Za-z0-9_-]+|\*|>")
STREAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
TIMEZONE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,3}")
HEADER_NAME: Final = re.compile(r"[A-Za-z0-9-]+")
KEY_PATH: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
TIMEZONE_LENGTH_MAX: Final = 64
HEADER_NAME_LENGTH_MAX: Final = 64
RESERVED_SUBJECTS: Final = ("dagnats", "$JS", "$KV", "$SYS", "_INBOX")

ID_RULE: Final = (
    f"is required: 1..{limits.trigger_id_length_max} of A-Z a-z 0-9 '_' '-', unique in the workflow"
)
KIND_RULE: Final = f"must have exactly one of {', '.join(TRIGGER_KINDS)}"
PATH_RULE: Final = (
    f"must start with '/' and hold only A-Z a-z 0-9 . _ ~ / - "
    f"(at most {limits.trigger_path_length_max} characters)"
)
SECRET_RULE: Final = (
    f"must be {limits.trigger_secret_length_min}..{limits.trigger_secret_length_max} "
    "characters (or left out: no signature check)"
)
BACKFILL_RULE: Final = (
    f"must be an integer from 0 to {limits.cron_backfill_max} (cron_backfill_max)"
)
TIMEZONE_RULE: Final = "must be an IANA time zone name such as 'UTC' or 'Europe/Paris'"
SUBJECT_RULE: Final = (
    "must be a NATS subject (tokens of A-Z a-z 0-9 _ - split by '.', '*' and a last '>' "
    f"allowed), at most {limits.trigger_subject_length_max} characters, not under "
    f"{', '.join(RESERVED_SUBJECTS)}"
)
STREAM_RULE: Final = "must be a stream name of A-Z a-z 0-9 _ - (or left out: DagNats's own)"
METHOD_RULE: Final = f"must be one of {', '.join(HTTP_METHODS)}"
HTTP_TIMEOUT_RULE: Final = (
    f"must be a duration from 1ms to {limits.http_trigger_timeout_ms_max // 1000}s "
    "(http_trigger_timeout_ms_max)"
)
BODY_RULE: Final = (
    f"must be an integer from 1 to {limits.trigger_body_bytes_max} (trigger_body_bytes_max)"
)
HEADER_RULE: Final = (
    f"must be an HTTP header name (A-Z a-z 0-9 -, at most {HEADER_NAME_LENGTH_MAX}), or left out"
)
DEBOUNCE_PERIOD_RULE: Final = (
    f"must be a duration from 1ms to {limits.debounce_ms_max // 3_600_000}h (debounce_ms_max)"
)
DEBOUNCE_TIMEOUT_RULE: Final = (
    "must be a duration at least the period and at most "
    f"{limits.debounce_ms_max // 3_600_000}h, or left out"
)
KEY_RULE: Final = "must be a dotted path into the fire's input (a.b.c), or left out"
DEBOUNCE_KIND_RULE: Final = (
    "applies to cron, subject and webhook triggers; an http request waits for its own run"
)


def check_triggers(triggers: tuple[TriggerDef, ...], problems: Problems) -> None:
    """Add every problem of a workflow's triggers, in order; then route conflicts."""
    if len(triggers) > limits.triggers_per_workflow_max:
        bound = limits.triggers_per_workflow_max
        rule = f"holds {len(triggers)} triggers; the limit is {bound} (triggers_per_workflow_max)"
        problems.add_shown("triggers", f"[... {len(triggers)} items]", rule)
        return
    seen_ids: set[str] = set()
    routes: dict[tuple[str, str], int] = {}
    for index, trigger in enumerate(triggers):
        if problems.full:
            return
        path = f"triggers[{index}]"
        _check_id(trigger.id, seen_ids, f"{path}.id", problems)
        _check_source(trigger, path, problems)
        route = trigger.route()
        if route is not None and route in routes:
            first = routes[route]
            rule = f"conflicts with triggers[{first}]: the same method and path ({route[0]})"
            problems.add(f"{path}.{trigger.kind}.path", route[1], rule)
        elif route is not None:
            routes[route] = index
        if trigger.debounce is not None:
            _check_debounce(trigger, f"{path}.debounce", problems)


def _check_id(trigger_id: str, seen: set[str], path: str, problems: Problems) -> None:
    long = len(trigger_id) > limits.trigger_id_length_max
    if long or TRIGGER_ID.fullmatch(trigger_id) is None:
        problems.add(path, trigger_id, ID_RULE)
    elif trigger_id in seen:
        problems.add(path, trigger_id, "is used by an earlier trigger: ids are unique")
    seen.add(trigger_id)


def _check_source(trigger: TriggerDef, path: str, problems: Problems) -> None:
    if trigger.kind is None:
        problems.add_shown(path, _sources_shown(trigger), KIND_RULE)
        return
    if trigger.cron is not None:
        cron = trigger.cron
        found = parse_cron(cron.expression)
        if isinstance(found, str):
            problems.add(f"{path}.cron.expression", cron.expression, found)
        if len(cron.timezone) > TIMEZONE_LENGTH_MAX or not TIMEZONE.fullmatch(cron.timezone):
            problems.add(f"{path}.cron.timezone", cron.timezone, TIMEZONE_RULE)
        if not 0 <= cron.backfill <= limits.cron_backfill_max:
            problems.add(f"{path}.cron.backfill", cron.backfill, BACKFILL_RULE)
    elif trigger.subject is not None:
        _check_subject(trigger.subject.subject, f"{path}.subject.subject", problems)
        stream = trigger.subject.stream
        if stream and (len(stream) > 64 or STREAM_NAME.fullmatch(stream) is None):
            problems.add(f"{path}.subject.stream", stream, STREAM_RULE)
    elif trigger.webhook is not None:
        _check_path(trigger.webhook.path, f"{path}.webhook.path", problems)
        _check_secret(trigger.webhook.secret, f"{path}.webhook.secret", problems)
    elif trigger.http is not None:
        _check_http(trigger, f"{path}.http", problems)


def _sources_shown(trigger: TriggerDef) -> str:
    given = [kind for kind in TRIGGER_KINDS if getattr(trigger, kind) is not None]
    return f"sources: {', '.join(given)}" if given else "no source"


def _check_http(trigger: TriggerDef, path: str, problems: Problems) -> None:
    http = trigger.http
    assert http is not None
    _check_path(http.path, f"{path}.path", problems)
    if http.method not in HTTP_METHODS:
        problems.add(f"{path}.method", http.method, METHOD_RULE)
    if not 1 <= http.timeout_ms <= limits.http_trigger_timeout_ms_max:
        problems.add(f"{path}.timeout", http.timeout_ms, HTTP_TIMEOUT_RULE)
    if not 1 <= http.max_body_bytes <= limits.trigger_body_bytes_max:
        problems.add(f"{path}.max_body_bytes", http.max_body_bytes, BODY_RULE)
    _check_secret(http.secret, f"{path}.secret", problems)
    header = http.idempotency_header
    if header and (len(header) > HEADER_NAME_LENGTH_MAX or not HEADER_NAME.fullmatch(header)):
        problems.add(f"{path}.idempotency_header", header, HEADER_RULE)


def _check_path(route_path: str, path: str, problems: Problems) -> None:
    long = len(route_path) > limits.trigger_path_length_max
    if long or ROUTE_PATH.fullmatch(route_path) is None:
        problems.add(path, route_path, PATH_RULE)


def _check_secret(secret: str, path: str, problems: Problems) -> None:
    if secret and not (
        limits.trigger_secret_length_min <= len(secret) <= limits.trigger_secret_length_max
    ):
        problems.add_shown(path, f"({len(secret)} characters)", SECRET_RULE)  # never shown


def _check_subject(subject: str, path: str, problems: Problems) -> None:
    tokens = subject.split(".")
    valid = (
        0 < len(subject) <= limits.trigger_subject_length_max
        and all(SUBJECT.fullmatch(token) for token in tokens)
        and ">" not in tokens[:-1]
        and tokens[0] not in RESERVED_SUBJECTS
    )
    if not valid:
        problems.add(path, subject, SUBJECT_RULE)


def _check_debounce(trigger: TriggerDef, path: str, problems: Problems) -> None:
    debounce: Debounce | None = trigger.debounce
    assert debounce is not None
    if trigger.http is not None:
        problems.add_shown(path, "(debounce)", DEBOUNCE_KIND_RULE)
        return
    if not 1 <= debounce.period_ms <= limits.debounce_ms_max:
        problems.add(f"{path}.period", debounce.period_ms, DEBOUNCE_PERIOD_RULE)
    timeout = debounce.timeout_ms
    if timeout and not debounce.period_ms <= timeout <= limits.debounce_ms_max:
        problems.add(f"{path}.timeout", timeout, DEBOUNCE_TIMEOUT_RULE)
    if debounce.key and KEY_PATH.fullmatch(debounce.key) is None:
        problems.add(f"{path}.key", debounce.key, KEY_RULE)


__all__ = ["check_triggers"]
