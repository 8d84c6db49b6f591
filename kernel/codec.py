"""Encoding and decoding of commands, events and decisions (JSON, via reused msgspec codecs).

Every event carries its schema version `v`. Decoding takes a fast typed path; when an event is
of an older version, it takes the slow path: decode to plain values, upcast each old event with
pure `dict -> dict` functions keyed by (tag, version) until it reaches the current version,
then decode typed. Old bytes are never rewritten. Undecodable bytes, an unknown tag or an
unknown version raise typed errors naming what was found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from kernel.commands import AnyCommand, StoredCommand
from kernel.errors import DecodeError, UnknownEventTypeError, UnknownEventVersionError
from kernel.events import EVENT_TYPES, AnyEvent, Decision, current_version, event_tag
from kernel.state import RunState

Document = dict[str, object]
Upcaster = Callable[[Document], Document]

CURRENT_VERSIONS: dict[str, int] = {event_tag(t): current_version(t) for t in EVENT_TYPES}
_VERSION_BY_TYPE: dict[type, int] = {t: current_version(t) for t in EVENT_TYPES}

_encoder = msgspec.json.Encoder()
_decision_decoder = msgspec.json.Decoder(Decision)


class _EventsOnly(msgspec.Struct, frozen=True, kw_only=True):
    """A history message with its command left undecoded (loading a run needs the events)."""

    command: msgspec.Raw
    events: tuple[AnyEvent, ...]


_events_decoder = msgspec.json.Decoder(_EventsOnly)
_Decoded = TypeVar("_Decoded", Decision, _EventsOnly)
_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_command_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)
_state_decoder = msgspec.json.Decoder(RunState)


def _step_failed_v1_to_v2(doc: Document) -> Document:
    """step.failed v1 carried `error: str` and `retryable: bool`; v2 a structured error."""
    retryable = bool(doc.get("retryable", True))
    upgraded = {key: value for key, value in doc.items() if key != "retryable"}
    upgraded["error"] = {
        "message": str(doc.get("error", "")),
        "kind": "error" if retryable else "non_retryable",
    }
    upgraded["v"] = 2
    return upgraded


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("step.failed", 1): _step_failed_v1_to_v2,
}


def encode(value: msgspec.Struct) -> bytes:
    """JSON bytes of a decision, command, event, effect or state."""
    return _encoder.encode(value)


def encode_decision(command: StoredCommand, events: tuple[AnyEvent, ...]) -> bytes:
    """The bytes of one history message: a command and the events decided from it."""
    assert events, "a decision appends at least one event"
    return _encoder.encode(Decision(command=command, events=events))


def decode_command(data: bytes) -> AnyCommand:
    """A command from its bytes.

    Raises:
        DecodeError: the bytes are not a valid command (the message says why).
    """
    try:
        return _command_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid command: {error}") from None


def decode_state(data: bytes) -> RunState:
    """A run state (a snapshot) from its bytes.

    Raises:
        DecodeError: the bytes are not a valid run state.
    """
    try:
        return _state_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid run state: {error}") from None


def decode_decision(data: bytes) -> Decision:
    """A history message from its bytes, upcasting old event versions.

    Raises:
        DecodeError: the bytes are not a decision.
        UnknownEventTypeError: an event's tag is unknown to this code.
        UnknownEventVersionError: an event's version is newer than this code or has no upcaster.
    """
    decision = _current(_decision_decoder, data)
    return decision if decision is not None else _decode_decision_slowly(data)


def decode_events(data: bytes) -> tuple[AnyEvent, ...]:
    """The events of a history message, its command left undecoded (a run's load needs only
    the events); old event versions are upcast as by `decode_decision`.

    Raises:
        DecodeError, UnknownEventTypeError, UnknownEventVersionError: as `decode_decision`.
    """
    events_only = _current(_events_decoder, data)
    return events_only.events if events_only is not None else _decode_decision_slowly(data).events


def _current(decoder: msgspec.json.Decoder[_Decoded], data: bytes) -> _Decoded | None:
    """`data` decoded on the fast path, when every event is of its current version; None when
    perhaps an old version is in it (the slow path upcasts it or names the problem).

    Raises:
        DecodeError: the bytes are not a history message.
    """
    try:
        decoded = decoder.decode(data)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid history message: {error}") from None
    versions = _VERSION_BY_TYPE  # (inline: every history message read passes here)
    for event in decoded.events:
        if event.v != versions[type(event)]:
            return None
    return decoded


def _decode_decision_slowly(data: bytes) -> Decision:
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid history message: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise DecodeError("not a valid history message: expected an object with `events`")
    events = document["events"]
    assert isinstance(events, list)
    upgraded = [upcast(event) for event in events]
    try:
        return _decision_decoder.decode(_encoder.encode({**document, "events": upgraded}))
    except msgspec.ValidationError as error:
        raise DecodeError(f"not a valid history message: {error}") from None


def decode_event(data: bytes) -> AnyEvent:
    """One event from its bytes, upcasting an old version."""
    try:
        event = _event_decoder.decode(data)
        if event.v == _VERSION_BY_TYPE[type(event)]:
            return event
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid event: {error}") from None
    try:
        return _event_decoder.decode(_encoder.encode(upcast(msgspec.json.decode(data))))
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid event: {error}") from None


def upcast(document: object) -> Document:
    """Bring one event document to the current version of its tag.

    Raises:
        DecodeError: not an object with a string `type`.
        UnknownEventTypeError: the tag is unknown.
        UnknownEventVersionError: the version is newer than this code, or has no upcaster.
    """
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        found = repr(document)[:80]
        raise DecodeError(f"not a valid event: expected an object with a `type`, got {found}")
    tag = document["type"]
    assert isinstance(tag, str)
    current = CURRENT_VERSIONS.get(tag)
    if current is None:
        raise UnknownEventTypeError(tag)
    version = document.get("v", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(f"event {tag!r} has a version that is not an integer: {version!r}")
    if version > current or version < 1:
        raise UnknownEventVersionError(tag, version, current)
    upgraded: Document = dict(document)
    for step in range(version, current):
        upcaster = UPCASTERS.get((tag, step))
        if upcaster is None:
            raise UnknownEventVersionError(tag, step, current)
        upgraded = upcaster(upgraded)
        assert upgraded.get("v") == step + 1, f"upcaster {tag} v{step} must produce v{step + 1}"
    return upgraded
