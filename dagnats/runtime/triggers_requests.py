"""Fire requests: `dagnats trigger fire` (and `POST /v1/triggers/<wf>/<id>/fire`) under any role.

A manual fire must behave like any other fire of its trigger (join a debounced burst, be
recorded), but only serve's engine may write the trigger state and the fire records. So the
caller publishes a `FireRequest` on `dagnats.trigger.fire.<trigger key>` (the one subject of
this kind the client role may publish, `roles.TRIGGER_FIRE_PREFIX`), stored in the stream
`DAGNATS_TRIGGER_REQ` with the request's id as `Nats-Msg-Id` (a publish retried is one
request), and the header `Dagnats-Reply` naming the caller's own inbox subject.

The engine's trigger service consumes that stream durably (one durable shared by every
engine: each request goes to one), fires the trigger with the fire name `manual:<request
id>` (a request delivered again after a crash is the same fire: the same run, or a fire its
burst holds already), publishes the `FireReply` on the reply subject, then acks. A request
that no engine reads within `REQUEST_MAX_AGE_MS` expires unfired; the caller waits
`FIRE_REPLY_TIMEOUT_S` for the reply, then says it got none (`FireUnansweredError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Final, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.clock import now_ms
from dagnats.runtime.roles import TRIGGER_FIRE_PREFIX
from dagnats.runtime.triggers_plan import (
    Burst,
    burst_name,
    cron_fire_name,
    debounce_key,
    trigger_key,
)
from kernel.errors import DagnatsError
from kernel.workflow.trigger_model import Debounce

if TYPE_CHECKING:  # no import at run time: triggers.py imports this module
    from dagnats.runtime.triggers import Entry, TriggerService

log = logging.getLogger("dagnats.triggers")

REQUESTS_STREAM: Final = "DAGNATS_TRIGGER_REQ"
REQUESTS_DURABLE: Final = "trigger_fire_requests"
REPLY_HEADER: Final = "Dagnats-Reply"
REQUEST_MAX_AGE_MS: Final = settings.trigger_request_age_ms_max
REQUEST_ACK_WAIT_S: Final = settings.trigger_request_ack_wait_s
FIRE_REPLY_TIMEOUT_S: Final = settings.trigger_fire_reply_timeout_s
PUBLISH_TIMEOUT_S: Final = settings.trigger_request_publish_timeout_s
PUBLISH_RETRY_S: Final = settings.trigger_request_publish_retry_s
MANUAL_VALUE: Final = {"manual": True}  # a manual fire's input (beside `trigger`)


Outcome = Literal["started", "skipped", "failed", "debounced", "dropped"]


class FireRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One fire of a trigger: what it was, the run it started, or why none (kept here, beside
    the reply that carries it; `dagnats.runtime.triggers` exports it)."""

    workflow: str
    trigger_id: str
    fire: str  # the fire time (RFC 3339) or the message id
    run_id: str = ""
    outcome: Outcome
    reason: str = ""
    at_ms: int


class FireRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Fire `trigger_id` of `workflow` now (by hand); `request_id` names the fire."""

    workflow: str
    trigger_id: str
    request_id: str
    at_ms: int


class FireReply(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's answer: the fire's record, or why there is none (`error`: the trigger is
    unknown). `starts_by_ms`: a debounced fire's burst starts by then (unless more fires come
    and its rule has no timeout), 0 otherwise."""

    record: FireRecord | None = None
    error: str = ""
    starts_by_ms: int = 0


class FireUnansweredError(DagnatsError):
    """No engine answered a fire request within the bound."""

    hint = "is `dagnats serve` (its engine) running? see `dagnats trigger history WF ID`"

    def __init__(self, workflow: str, trigger_id: str, waited_s: float, stored: bool) -> None:
        self.workflow, self.trigger_id = workflow, trigger_id
        minutes = REQUEST_MAX_AGE_MS // 60_000
        where = (
            f"the request is stored and fires if an engine reads it within {minutes} min"
            if stored
            else "the request was not stored: no stream took it, or this role may not publish it"
        )
        super().__init__(
            f"trigger {workflow}/{trigger_id}: no engine answered the fire request within "
            f"{waited_s:g} s ({where})"
        )


class FireRequestRefusedError(DagnatsError):
    """The trigger engine refused the request (an unknown trigger) or NATS did not store it."""

    hint = "see `dagnats trigger list`"


def request_subject(workflow: str, trigger_id: str) -> str:
    return f"{TRIGGER_FIRE_PREFIX}.{trigger_key(workflow, trigger_id)}"


def burst_starts_by(rule: Debounce, burst: Burst) -> int:
    """When a burst's run starts if no other fire comes: `period` after its last fire, or
    `timeout` after its first when that is sooner."""
    quiet = burst.last_ms + rule.period_ms
    return min(quiet, burst.first_ms + rule.timeout_ms) if rule.timeout_ms else quiet


def fire_answer(reply: FireReply) -> dict[str, object]:
    """A reply as the CLI's `--json` and the HTTP API show it: the record's fields, and
    `starts_by` (RFC 3339, "" when not debounced)."""
    assert reply.record is not None
    found: dict[str, object] = msgspec.to_builtins(reply.record)
    starts_by = cron_fire_name(reply.starts_by_ms) if reply.starts_by_ms else ""
    return {**found, "starts_by": starts_by}


async def ensure_request_stream(js: JetStreamContext) -> None:
    """The requests' stream (idempotent; the engine makes it)."""
    config = api.StreamConfig(
        name=REQUESTS_STREAM, subjects=[f"{TRIGGER_FIRE_PREFIX}.>"],
        max_age=REQUEST_MAX_AGE_MS / 1000, duplicate_window=REQUEST_MAX_AGE_MS / 1000,
    )  # fmt: skip
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(config)


async def request_fire(
    js: JetStreamContext, workflow: str, trigger_id: str, timeout_s: float = FIRE_REPLY_TIMEOUT_S
) -> FireReply:
    """Ask the engine to fire a trigger now; its answer.

    Raises:
        FireUnansweredError: no answer within `timeout_s` (or the request was not stored).
        FireRequestRefusedError: the engine knows no such trigger.
    """
    request = FireRequest(workflow=workflow, trigger_id=trigger_id,
                          request_id=uuid.uuid4().hex, at_ms=now_ms())  # fmt: skip
    nc = js._nc  # the connection's own: its inbox prefix is the one the role may read
    reply_to = nc.new_inbox()
    sub = await nc.subscribe(reply_to, max_msgs=1)
    try:
        headers = {"Nats-Msg-Id": request.request_id, REPLY_HEADER: reply_to}
        deadline = asyncio.get_running_loop().time() + timeout_s
        await _publish(js, request, headers, deadline)
        left = max(deadline - asyncio.get_running_loop().time(), PUBLISH_RETRY_S)
        try:
            message = await sub.next_msg(timeout=left)
        except (nats.errors.TimeoutError, TimeoutError):
            raise FireUnansweredError(workflow, trigger_id, timeout_s, stored=True) from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    reply = msgspec.json.decode(message.data, type=FireReply)
    if reply.error:
        raise FireRequestRefusedError(reply.error)
    return reply


async def _publish(
    js: JetStreamContext, request: FireRequest, headers: dict[str, str], deadline: float
) -> None:
    """Store a request, again every `PUBLISH_RETRY_S` until `deadline` while no stream takes
    it (a serve just started makes it a moment after it is ready; the same message id makes
    the retries one request). A publish the server refuses (a role without the permission)
    gets no answer either, and is reported the same way."""
    loop = asyncio.get_running_loop()
    subject = request_subject(request.workflow, request.trigger_id)
    data = msgspec.json.encode(request)
    while True:
        wait_s = max(min(deadline - loop.time(), PUBLISH_TIMEOUT_S), PUBLISH_RETRY_S)
        try:
            await js.publish(subject, data, headers=dict(headers), timeout=wait_s)
            return
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
                nats.errors.TimeoutError, TimeoutError):  # fmt: skip
            if loop.time() + PUBLISH_RETRY_S >= deadline:
                waited = round((now_ms() - request.at_ms) / 1000, 1)
                raise FireUnansweredError(request.workflow, request.trigger_id, waited,
                                          stored=False) from None  # fmt: skip
            await asyncio.sleep(PUBLISH_RETRY_S)


async def serve_requests(service: TriggerService, stop: asyncio.Event) -> None:
    """Fire each requested trigger and answer, until stopped (the engine's side)."""
    js = service.js
    await ensure_request_stream(js)
    config = api.ConsumerConfig(ack_wait=REQUEST_ACK_WAIT_S, max_ack_pending=64)
    sub = await js.pull_subscribe(f"{TRIGGER_FIRE_PREFIX}.>", durable=REQUESTS_DURABLE,
                                  stream=REQUESTS_STREAM, config=config)  # fmt: skip
    while not stop.is_set():
        try:
            messages = await sub.fetch(settings.subject_fetch_batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        # The set of triggers is read again once per batch (a trigger created, enabled or
        # disabled just before a request is fired as it is now, not as the last tick saw it).
        await service.reload()
        for message in messages:
            try:
                reply = await answer(service, message.data)
            except (nats.errors.Error, TimeoutError) as error:
                log.warning("triggers: a fire request failed (%s); it comes again", error)
                await message.nak(delay=settings.retry_delay_ms / 1000)
                continue
            reply_to = (message.headers or {}).get(REPLY_HEADER, "")
            if reply_to:  # core NATS: a caller gone meanwhile misses it (the record stays)
                with contextlib.suppress(nats.errors.Error):
                    await service.js._nc.publish(reply_to, msgspec.json.encode(reply))
            await message.ack_sync()


async def answer(service: TriggerService, data: bytes) -> FireReply:
    """Fire the trigger a request names, as the service's set of triggers has it (read again
    by the caller before each batch); the reply."""
    try:
        request = msgspec.json.decode(data, type=FireRequest)
    except msgspec.DecodeError as error:
        return FireReply(error=f"fire request: not a FireRequest: {error}"[:500])
    entry = _find(service, request)
    if entry is None:
        return FireReply(error=f"no trigger {request.trigger_id!r} in workflow "
                               f"{request.workflow!r}")  # fmt: skip
    record = await service.fire(entry, f"manual:{request.request_id}", dict(MANUAL_VALUE))
    starts_by = 0
    rule = entry.trigger.debounce
    if record.outcome == "debounced" and rule is not None:
        kv = await service.state()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
            found = await kv.get(burst_name(entry.key, debounce_key(rule, dict(MANUAL_VALUE))))
            if found.value:
                starts_by = burst_starts_by(rule, msgspec.json.decode(found.value, type=Burst))
    return FireReply(record=record, starts_by_ms=starts_by)


def _find(service: TriggerService, request: FireRequest) -> Entry | None:
    wanted = (request.workflow, request.trigger_id)
    return next((e for e in service.entries if (e.workflow_name, e.trigger.id) == wanted), None)
