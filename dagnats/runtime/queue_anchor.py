"""One message each work-queue stream keeps, so its last file block is never dropped.

DAGNATS_TASKS and DAGNATS_COMMANDS are work queues that are empty almost all the time: each
message is removed when its consumer acks it. When the last message of a file stream goes,
nats-server deletes its message block and creates a new one for the next message, two file
creations and two unlinks per workflow step (measured with strace; README "Benchmarks",
"Queue anchors"). One message that nobody consumes (an anchor) keeps the block alive.

The anchors lie inside the streams' subjects (a stream's subject list is checked at every
start, `resources.ensure_stream`) on subjects no consumer filter ever matches:
`dagnats.task.@anchor` (a task type's first token never starts with '@', so no
`task_subject` is it) and `dagnats.sched.@anchor` (the engine consumers filter `dagnats.cmd.`
subjects; a timer's schedule subject has two tokens after `dagnats.sched`, and a plain message
without `Nats-Schedule` headers is never scheduled). Placing them is an optimization only:
nothing depends on them for correctness, so a refusal is logged once and the start goes on.

This module may publish on the two anchor subjects and read the streams' info and last
messages; nothing else.
"""

from __future__ import annotations

import logging
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime.queue import MSG_ID_HEADER
from dagnats.runtime.resources import (
    COMMANDS_ANCHOR_SUBJECT,
    COMMANDS_STREAM,
    TASKS_ANCHOR_SUBJECT,
    TASKS_STREAM,
)

log = logging.getLogger("dagnats.queue_anchor")
ANCHORS: Final = ((TASKS_STREAM, TASKS_ANCHOR_SUBJECT), (COMMANDS_STREAM, COMMANDS_ANCHOR_SUBJECT))
ANCHOR_PAYLOAD: Final = b"dagnats queue anchor: keeps the stream's block (never consumed)"
anchor_timeout_s: Final = 10.0  # the anchor's publish (a loaded server answers within it)
_warned: set[str] = set()


def anchor_subject(stream: str) -> str:
    """The anchor subject of a work-queue stream (TASKS or COMMANDS)."""
    for name, subject in ANCHORS:
        if name == stream:
            return subject
    raise AssertionError(f"{stream!r} has no anchor")


def msg_id(stream: str) -> str:
    """The fixed message id of a stream's anchor: concurrent starts store it once."""
    return f"dagnats-anchor-{stream}"


async def ensure_anchors(js: JetStreamContext) -> int:
    """Publish each work-queue stream's anchor when the stream holds none.

    Returns:
        How many anchors this call published (0 when both were there, or on a refusal).
    Never raises for a refusal of the server (logged once as a warning).
    """
    placed = 0
    for stream, subject in ANCHORS:
        try:
            placed += await _ensure_one(js, stream, subject)
        except (nats.errors.Error, TimeoutError) as error:
            if stream not in _warned:
                _warned.add(stream)
                reason = str(error) or type(error).__name__
                log.warning("could not place the queue anchor of %s on %s (%s); the stream "
                            "works without it", stream, subject, reason)  # fmt: skip
    return placed


async def _ensure_one(js: JetStreamContext, stream: str, subject: str) -> int:
    try:
        await js.get_last_msg(stream, subject)
        return 0
    except nats.js.errors.NotFoundError:
        pass
    if not await _publish(js, stream, subject, msg_id(stream)):
        return 1
    try:  # its id was seen within the duplicate window: a concurrent start stored it ...
        await js.get_last_msg(stream, subject)
        return 0
    except nats.js.errors.NotFoundError:  # ... or it was purged by hand since: again, anew
        last_seq = (await js.stream_info(stream)).state.last_seq
        return 0 if await _publish(js, stream, subject, f"{msg_id(stream)}-{last_seq}") else 1


async def _publish(js: JetStreamContext, stream: str, subject: str, message_id: str) -> bool:
    """Publish the anchor under `message_id`; whether the stream dropped it as a duplicate."""
    headers = {MSG_ID_HEADER: message_id}
    ack = await js.publish(
        subject, ANCHOR_PAYLOAD, stream=stream, headers=headers, timeout=anchor_timeout_s
    )
    return bool(ack.duplicate)


async def queued(js: JetStreamContext, stream: str) -> int:
    """The stream's messages but its anchor: what waits or is in flight (one stream info,
    which the client role may read)."""
    subject = anchor_subject(stream)
    info = await js.stream_info(stream, subjects_filter=subject)
    return int(info.state.messages) - int((info.state.subjects or {}).get(subject, 0))


async def only_anchor_stored(js: JetStreamContext, stream: str) -> bool:
    """Whether the one message the stream ever stored is its anchor (a deployment that
    started but ran nothing); False for a stream without an anchor."""
    if stream not in dict(ANCHORS):
        return False
    info = await js.stream_info(stream)
    if info.state.last_seq != 1:
        return False
    try:
        anchor = await js.get_last_msg(stream, anchor_subject(stream))
    except nats.js.errors.NotFoundError:
        return False
    return anchor.seq == 1
