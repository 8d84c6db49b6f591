"""The projector's reads of the history stream, by the lean push consumer of
`dagnats.runtime.log_read` (about twice nats-py's ordered consumer, which parses every
message's headers), with each message's run id from its subject: `read_until`, what the
stream holds up to a sequence (catching up), and `tail`, every message after a sequence as
it is appended (a live projection; `log_read.LiveReader`, which makes its consumer again after
a gap, a reconnect or a silence, from the message after the last it received).

A `Projector` catching up (`catch_up`, or a live one behind) reads up to the stream's last
sequence as of its start with `read_until`, then tails on with `tail`.
This module only reads; it never writes.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Final

from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.log_read import HistoryReader, LiveReader, PushReader, holds_any
from dagnats.runtime.resources import HISTORY_STREAM, HISTORY_SUBJECTS, run_id_of_history_subject
from kernel.errors import DagnatsError

Message = tuple[int, str, bytes]
# How long a tail waits for the next message before it looks again (a bound on one wait; the
# reader itself makes its consumer again when it hears nothing, not even a heartbeat).
tail_wait_ms: Final = 60_000
tail_batch_messages_max: Final = 1_024  # messages `tail_batches` gives at once


class _KeepsSubjects(PushReader):
    """A reader that keeps each message's subject (its run), in step with its items."""

    subjects: deque[bytes]

    async def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        held = len(self.items)
        await super()._on_message(subject, reply, data, headers)
        if len(self.items) > held:  # (it took the message)
            self.subjects.append(subject)


class _SubjectReader(_KeepsSubjects, HistoryReader):
    """Every history subject up to `last_seq`, with each message's subject."""

    def __init__(self, js: JetStreamContext, after_seq: int, last_seq: int) -> None:
        super().__init__(js, HISTORY_STREAM, HISTORY_SUBJECTS, after_seq, last_seq)
        self.subjects = deque()


async def read_until(
    js: JetStreamContext, after_seq: int, last_seq: int
) -> AsyncGenerator[Message, None]:
    """Yield (seq, run id, payload) of every history message with after_seq < seq <= last_seq
    (fewer when the rest was deleted meanwhile), in order.

    Raises:
        DagnatsError: no message arrived within settings.read_idle_timeout_ms, twice.
    """
    # (a range purged whole ends at once, not after a silence of read_idle_timeout_ms)
    if last_seq <= after_seq or not await holds_any(
        js, HISTORY_STREAM, HISTORY_SUBJECTS, after_seq + 1, last_seq
    ):
        return
    reader = _SubjectReader(js, after_seq, last_seq)
    subjects = reader.subjects
    messages = reader.messages(settings.read_idle_timeout_ms / 1000)
    try:
        async with contextlib.aclosing(messages) as read:
            async for seq, data in read:
                yield seq, run_id_of_history_subject(subjects.popleft().decode()), data
    except TimeoutError:
        raise DagnatsError(
            f"history read stalled after sequence {reader.next_seq - 1} of {last_seq}: "
            f"no message within read_idle_timeout_ms={settings.read_idle_timeout_ms}, "
            "twice (is nats-server up?)"
        ) from None


class _LiveSubjectReader(_KeepsSubjects, LiveReader):
    """Every history subject as it is appended, with each message's subject."""

    def __init__(self, js: JetStreamContext, after_seq: int) -> None:
        super().__init__(js, HISTORY_STREAM, HISTORY_SUBJECTS, after_seq)
        self.subjects = deque()


async def tail(js: JetStreamContext, after_seq: int) -> AsyncGenerator[Message, None]:
    """Yield (seq, run id, payload) of every history message with seq > after_seq, in order,
    as it is appended (forever; close the generator to stop).

    Raises:
        nats.errors.Error, nats.js.errors.Error: the first consumer was not made.
    """
    async with contextlib.aclosing(tail_batches(js, after_seq)) as batches:
        async for batch in batches:
            for message in batch:
                yield message


async def tail_batches(js: JetStreamContext, after_seq: int) -> AsyncGenerator[list[Message], None]:
    """`tail`, a list at a time: what came since the caller last asked (at least one message,
    at most `tail_batch_messages_max`), so a caller that asks now and then is not woken per
    message.

    Raises:
        nats.errors.Error, nats.js.errors.Error: the first consumer was not made.
    """
    assert after_seq >= 0, after_seq
    reader = _LiveSubjectReader(js, after_seq)
    subjects = reader.subjects
    try:
        await reader.open()
        while True:
            deadline = time.monotonic() + tail_wait_ms / 1000
            item = await reader.next(deadline)
            if item is None:
                continue  # (nothing came: wait again)
            batch = [(item[0], run_id_of_history_subject(subjects.popleft().decode()), item[1])]
            while reader.items and len(batch) < tail_batch_messages_max:
                item = await reader.next(deadline)  # (at once: it holds one)
                assert item is not None
                batch.append(
                    (item[0], run_id_of_history_subject(subjects.popleft().decode()), item[1])
                )
            yield batch
    finally:
        await reader.close()


__all__ = ["read_until", "tail", "tail_batch_messages_max", "tail_batches"]
