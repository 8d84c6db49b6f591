"""The trigger types: what starts runs of a workflow besides a program calling the client.

A workflow's `triggers` (its file's `"triggers": [...]`, or managed with `dagnats trigger`)
each have an `id`, `enabled`, and exactly one source: `cron`, `subject`, `webhook` or `http`;
`debounce` optionally folds bursts of fires into one run. The rules are in
`kernel.workflow.trigger_rules`, the reader of the JSON form in `kernel.workflow.trigger_parse`;
the shell runs them (`dagnats/runtime/triggers*.py`, `dagnats/api/triggers_routes.py`). This
module holds only the types and imports nothing of the project but `kernel.limits`. Pure.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

import msgspec

from kernel import limits

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
HTTP_METHODS: Final[tuple[HttpMethod, ...]] = ("GET", "POST", "PUT", "PATCH", "DELETE")
TriggerKind = Literal["cron", "subject", "webhook", "http"]
TRIGGER_KINDS: Final[tuple[TriggerKind, ...]] = ("cron", "subject", "webhook", "http")
WEBHOOK_METHOD: Final = "POST"
DEFAULT_TIMEZONE: Final = "UTC"


class CronSource(msgspec.Struct, frozen=True, kw_only=True):
    """Fire at the times of a 5-field cron `expression`, read in `timezone` (IANA name).
    `backfill`: how many fires missed while no engine ran are run when one is back."""

    expression: str
    timezone: str = DEFAULT_TIMEZONE
    backfill: int = 0


class SubjectSource(msgspec.Struct, frozen=True, kw_only=True):
    """One run per message on `subject`, read through a JetStream consumer on `stream` (one
    the user names, or DagNats's own trigger stream when empty)."""

    subject: str
    stream: str = ""


class WebhookSource(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /hooks<path>` starts a run and answers 202 with its id; with a `secret`, the
    body must carry its HMAC-SHA256 signature."""

    path: str
    secret: str = ""


class HttpSource(msgspec.Struct, frozen=True, kw_only=True):
    """`<method> /hooks<path>` starts a run with the request as input and answers what the
    run's first `respond` step says (within `timeout_ms`)."""

    path: str
    method: HttpMethod = "POST"
    timeout_ms: int = limits.http_trigger_timeout_ms_default
    max_body_bytes: int = limits.trigger_body_bytes_default
    secret: str = ""
    idempotency_header: str = ""


class Debounce(msgspec.Struct, frozen=True, kw_only=True):
    """Fires with the same `key` (a dotted path into the fire's input; "" = one key) within
    `period_ms` of each other start one run with the last input, `timeout_ms` after the first
    at the latest."""

    period_ms: int
    timeout_ms: int = 0  # 0: no cap beyond the quiet period
    key: str = ""


class TriggerDef(msgspec.Struct, frozen=True, kw_only=True):
    """One trigger of a workflow: exactly one of its sources is set."""

    id: str
    enabled: bool = True
    cron: CronSource | None = None
    subject: SubjectSource | None = None
    webhook: WebhookSource | None = None
    http: HttpSource | None = None
    debounce: Debounce | None = None

    @property
    def kind(self) -> TriggerKind | None:
        """The one source set (None when none or several are: a rule's problem)."""
        kinds = [kind for kind in TRIGGER_KINDS if getattr(self, kind) is not None]
        return kinds[0] if len(kinds) == 1 else None

    def route(self) -> tuple[str, str] | None:
        """(method, path) for a webhook or http trigger, else None."""
        if self.webhook is not None:
            return (WEBHOOK_METHOD, self.webhook.path)
        if self.http is not None:
            return (self.http.method, self.http.path)
        return None


def triggers_of(workflow: HasTriggers) -> tuple[TriggerDef, ...]:
    """A workflow's triggers (`()` when it has none: the field is then left unset)."""
    triggers = workflow.triggers
    return () if isinstance(triggers, msgspec.UnsetType) else triggers


def with_triggers(triggers: tuple[TriggerDef, ...]) -> tuple[TriggerDef, ...] | msgspec.UnsetType:
    """The value of a workflow's `triggers` field for `triggers` (unset when empty)."""
    return triggers if triggers else msgspec.UNSET


class HasTriggers(Protocol):
    @property
    def triggers(self) -> tuple[TriggerDef, ...] | msgspec.UnsetType: ...


__all__ = [
    "DEFAULT_TIMEZONE",
    "HTTP_METHODS",
    "TRIGGER_KINDS",
    "WEBHOOK_METHOD",
    "CronSource",
    "Debounce",
    "HasTriggers",
    "HttpMethod",
    "HttpSource",
    "SubjectSource",
    "TriggerDef",
    "TriggerKind",
    "WebhookSource",
    "triggers_of",
    "with_triggers",
]
