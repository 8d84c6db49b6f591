"""External events over JetStream: the DAGNATS_EVENTS stream, `dagnats.event.<name>`.

An external event is published by name (not to a run) with a JSON payload; runs wait for
names (steps that wait for events, a workflow's `cancel_on`). The stream keeps events for
`settings.events_age_ms_max`, so the engine can deliver again those published since a time
(after a restart, or when a run starts waiting). An event's identity is its stream sequence and
its time is the server's timestamp of the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncGenerator
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.runtime import settings
from dagnats.runtime.resources import check_token
from kernel import limits
from kernel.errors import DagnatsError, PayloadTooLargeError

EVENTS_STREAM: Final = "DAGNATS_EVENTS"
EVENT_PREFIX: Final = "dagnats.event"
EVENT_SUBJECTS: Final = f"{EVENT_PREFIX}.>"
MSG_ID_HEADER: Final = "Nats-Msg-Id"


class PublishedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One stored external event."""

    seq: int
    name: str
    payload: bytes
    at_ms: int


def check_event_name(name: str) -> str:
    """Return `name` if it is 1..event_name_length_max of A-Z a-z 0-9 '_' '-' ('.' between).

    Raises:
        SubjectTokenError: naming the field, the value and the rule.
    """
    return check_token("event name", name, limits.event_name_length_max, dotted=True)


def event_subject(name: str) -> str:
    return f"{EVENT_PREFIX}.{check_event_name(name)}"


def stream_config(replicas: int = 1) -> api.StreamConfig:
    """The events stream: kept by age, deduplicated on a publisher's event id."""
    return api.StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENT_SUBJECTS],
        retention=api.RetentionPolicy.LIMITS,
        allow_direct=True,
        max_age=settings.events_age_ms_max / 1000,
        duplicate_window=settings.command_duplicate_window_ms / 1000,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=settings.stream_message_bytes_max,
    )


def encode_payload(payload: object) -> bytes:
    """The JSON bytes of an event payload.

    Raises:
        PayloadTooLargeError: over `limits.event_bytes_max` (event_bytes_max).
        DagnatsError: not JSON-encodable.
    """
    try:
        data = msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError) as error:
        raise DagnatsError(f"event payload is not JSON-encodable: {error}") from None
    if len(data) > limits.event_bytes_max:
        raise PayloadTooLargeError("event payload", len(data), limits.event_bytes_max)
    return data


class JetStreamEvents:
    """Publish external events, read those since a time, and tail new ones."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, name: str, payload: object, *, event_id: str | None = None) -> int:
        """Publish an event; returns its sequence (the first one's for a repeated event_id).

        Raises:
            PayloadTooLargeError: the payload is over `limits.event_bytes_max`.
            SubjectTokenError: the name is not a valid event name.
        """
        data = encode_payload(payload)
        headers = {MSG_ID_HEADER: event_id} if event_id else None
        ack = await self.js.publish(
            event_subject(name), data, stream=EVENTS_STREAM, headers=headers
        )
        return ack.seq

    async def read_since(self, name: str, since_ms: int) -> AsyncGenerator[PublishedEvent, None]:
        """Events named `name` stored at or after `since_ms`, up to the last one when the read
        began (never waits for more)."""
        subject = event_subject(name)
        try:
            last = await self.js.get_last_msg(EVENTS_STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return
        assert last.seq is not None
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=_moment(since_ms),
        )
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        subscription = await self.js.subscribe(
            subject, stream=EVENTS_STREAM, cb=queue.put, ordered_consumer=True, config=config
        )
        try:
            while True:
                try:
                    message = await asyncio.wait_for(
                        queue.get(), settings.read_idle_timeout_ms / 1000
                    )
                except TimeoutError:
                    return  # nothing at or after since_ms
                event = _event(message)
                if event.seq > last.seq:
                    return
                yield event
                if event.seq == last.seq or message.metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def open_tail(self) -> EventTail:
        """Subscribe now to every event published from now on (read with `EventTail.next`)."""
        tail = EventTail()
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        tail.subscription = await self.js.subscribe(
            EVENT_SUBJECTS, stream=EVENTS_STREAM, cb=tail.queue.put, ordered_consumer=True,
            config=config,
        )  # fmt: skip
        return tail


class EventTail:
    """New events, live, in stream order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(settings.read_buffer_messages_max)
        self.subscription: JetStreamContext.PushSubscription | None = None

    async def next(self) -> PublishedEvent:
        return _event(await self.queue.get())

    async def close(self) -> None:
        if self.subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self.subscription.unsubscribe()
            self.subscription = None


def _event(message: Msg) -> PublishedEvent:
    metadata = message.metadata
    at_ms = int(metadata.timestamp.timestamp() * 1000)
    name = message.subject[len(EVENT_PREFIX) + 1 :]
    return PublishedEvent(
        seq=metadata.sequence.stream, name=name, payload=message.data, at_ms=at_ms
    )


def _moment(at_ms: int) -> datetime.datetime:
    """Epoch milliseconds as an aware UTC datetime (what nats-py's opt_start_time takes)."""
    return datetime.datetime.fromtimestamp(max(0, at_ms) / 1000, tz=datetime.UTC)
