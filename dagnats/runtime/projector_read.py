"""The projector's catch-up read: the history messages already in the stream, by the lean
push consumer of `dagnats.runtime.log_read` (about twice nats-py's ordered consumer, which
parses every message's headers), with each message's run id from its subject.

A `Projector` catching up (`catch_up`, or a live one behind) reads up to the stream's last
sequence as of its start this way, then tails on with the ordered consumer (`log.tail`).
This module only reads; it never writes.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator

from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.log_read import HistoryReader
from dagnats.runtime.resources import HISTORY_STREAM, HISTORY_SUBJECTS, run_id_of_history_subject
from kernel.errors import DagnatsError

Message = tuple[int, str, bytes]


class _SubjectReader(HistoryReader):
    """A HistoryReader that keeps each message's subject, in step with its items."""

    def __init__(self, js: JetStreamContext, after_seq: int, last_seq: int) -> None:
        super().__init__(js, HISTORY_STREAM, HISTORY_SUBJECTS, after_seq, last_seq)
        self.subjects: deque[bytes] = deque()

    async def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        held = len(self.items)
        await super()._on_message(subject, reply, data, headers)
        if len(self.items) > held:  # (it took the message)
            self.subjects.append(subject)


async def read_until(
    js: JetStreamContext, after_seq: int, last_seq: int
) -> AsyncGenerator[Message, None]:
    """Yield (seq, run id, payload) of every history message with after_seq < seq <= last_seq
    (fewer when the rest was deleted meanwhile), in order.

    Raises:
        DagnatsError: no message arrived within settings.read_idle_timeout_ms, twice.
    """
    if last_seq <= after_seq:
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

__all__ = ["read_until"]
