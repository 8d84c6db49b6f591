"""The EventLog on JetStream: run histories on `dagnats.history.<run_id>` in DAGNATS_HISTORY.

Appends are conditional and deduplicated (STYLE 11): one publish per decision with
`Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence`. A bounded read of a run is a lean push
consumer (runtime/log_read.py: about 2x nats-py's ordered consumer, which costs more per
message than the decode and fold of it), bounded by the run's last sequence when the read
began; the live tail of all runs is the same consumer's live mode (runtime/projector_read
`tail`), each message's run read from its subject.

Behaviour verified on nats-server 2.15.1 (tests/test_runtime_log.py):
- expected last subject sequence 0 means "the subject has no message yet";
- a conflict is a JetStream API error with err_code 10071 ("wrong last sequence: N");
- the sequence check runs BEFORE deduplication: re-publishing a stored message with its
  original (now stale) expected sequence is answered 10071, not as a duplicate. So on 10071
  `append` looks at the subject's last message: if it carries our msg id, the earlier append
  did land (say its ack was lost) and its sequence is returned; otherwise the conflict is
  real. A duplicate whose expected sequence matches (PubAck.duplicate) also returns the
  sequence of the original, which the ack carries.
- the duplicate window is per STREAM, not per subject: a msg id must name its run (the
  engine's `<run_id>:<last_seq>:<digest>` does), or another run's append swallows it.

This module may publish to and read the history stream only; it does not decode payloads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Final

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dagnats.runtime import projector_read, settings
from dagnats.runtime.js_publish import JetStreamPublisher
from dagnats.runtime.log_read import HistoryReader, header_value
from dagnats.runtime.raw_get import StoredMessage, history_message
from dagnats.runtime.resources import (
    HISTORY_STREAM,
    HISTORY_SUBJECTS,
    history_subject,
    run_id_of_history_subject,
)
from kernel.errors import AppendConflictError, DagnatsError, PayloadTooLargeError

WRONG_LAST_SEQUENCE: Final = 10071
MSG_ID_HEADER: Final = "Nats-Msg-Id"
MSG_ID_AT: Final = b"\r\nNats-Msg-Id: "  # in a raw header block
EXPECTED_LAST_SUBJECT_SEQ_HEADER: Final = "Nats-Expected-Last-Subject-Sequence"
V1_ACK_TOKENS: Final = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>
V2_ACK_TOKENS: Final = 12  # $JS.ACK.<domain>.<account hash>.<stream>... (nats-py accepts 11)


class HistoryReadError(DagnatsError):
    """A bounded read of a run's history stalled (the server stopped delivering)."""

    def __init__(self, run_id: str, seq: int, last_seq: int, timeout_ms: int) -> None:
        self.run_id = run_id
        self.seq = seq
        self.last_seq = last_seq
        super().__init__(
            f"run {run_id!r}: history read stalled after sequence {seq} of {last_seq} "
            f"(nothing for {timeout_ms} ms)"
        )


class JetStreamEventLog:
    """`protocols.EventLog` over the DAGNATS_HISTORY stream."""

    def __init__(
        self, js: JetStreamContext, *, read_idle_timeout_ms: int = settings.read_idle_timeout_ms
    ) -> None:
        assert read_idle_timeout_ms > 0
        self.js = js
        self.read_idle_timeout_ms = read_idle_timeout_ms
        self.publisher = JetStreamPublisher(js)

    async def append(
        self, run_id: str, payload: bytes, *, msg_id: str, expected_last_seq: int
    ) -> int:
        """Append one message if the run's last sequence is `expected_last_seq` (0: none).

        Returns:
            The new message's stream sequence, or the original's for a duplicate msg_id.
        Raises:
            AppendConflictError: the run's history moved past expected_last_seq.
            PayloadTooLargeError: payload over settings.history_message_bytes_max.
        """
        assert expected_last_seq >= 0, expected_last_seq
        assert msg_id, "an append needs a msg id"
        if len(payload) > settings.history_message_bytes_max:
            raise PayloadTooLargeError(
                "history message", len(payload), settings.history_message_bytes_max
            )
        subject = history_subject(run_id)
        headers = {
            **self.append_headers(run_id),
            MSG_ID_HEADER: msg_id,
            EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(expected_last_seq),
        }
        try:
            ack = await self.publisher.publish(
                subject, payload, stream=HISTORY_STREAM, headers=headers
            )
        except nats.js.errors.APIError as error:
            if error.err_code != WRONG_LAST_SEQUENCE:
                raise
            landed = await self._seq_if_last_is(run_id, msg_id)
            if landed is None:
                raise AppendConflictError(run_id, expected_last_seq) from None
            return landed
        # A duplicate's original may be the very message expected_last_seq names.
        assert ack.seq > expected_last_seq or ack.duplicate, (ack.seq, expected_last_seq)
        return ack.seq

    def append_headers(self, run_id: str) -> dict[str, str]:
        """Headers each append of `run_id` adds (none here; a partitioned engine's log adds
        its owner, runtime/partitions.OwnedEventLog, and may refuse by raising)."""
        return {}

    async def _seq_if_last_is(self, run_id: str, msg_id: str) -> int | None:
        """The sequence of the run's last message if it carries msg_id, else None."""
        last = await self._last_message(run_id)
        if last is None or last.hdrs is None:
            return None
        return last.seq if header_value(last.hdrs, MSG_ID_AT) == msg_id.encode() else None

    async def _last_message(self, run_id: str) -> StoredMessage | None:
        """The run's last message (raw_get.history_message: a direct get, asked again of the
        leader on a replicated stream's miss)."""
        return await history_message(self.js, {"last_by_subj": history_subject(run_id)})

    async def last_seq(self, run_id: str) -> int:
        """The stream sequence of the run's last history message; 0 if it has none."""
        last = await self._last_message(run_id)
        if last is None:
            return 0
        assert last.seq > 0, last.seq
        return last.seq

    async def last(self, run_id: str) -> tuple[int, bytes] | None:
        """The run's last message as (seq, payload); None when it has none (one direct get)."""
        last = await self._last_message(run_id)
        if last is None:
            return None
        assert last.seq > 0, last.seq
        return last.seq, last.data

    async def read(
        self, run_id: str, *, after_seq: int = 0
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Yield (seq, payload) of each run message with seq > after_seq, in order, up to the
        run's last sequence when the read began, by a lean push consumer (runtime/log_read.py).
        Memory is bounded (flow control); each wait by read_idle_timeout_ms, the consumer made
        again after a gap or a silence.

        Raises:
            HistoryReadError: no message arrived within read_idle_timeout_ms, twice.
        """
        assert after_seq >= 0, after_seq
        last_seq = await self.last_seq(run_id)
        if last_seq <= after_seq:
            return
        subject = history_subject(run_id)
        reader = HistoryReader(self.js, HISTORY_STREAM, subject, after_seq, last_seq)
        messages = reader.messages(self.read_idle_timeout_ms / 1000)
        try:
            async with contextlib.aclosing(messages) as read:
                async for item in read:
                    yield item
        except TimeoutError:
            seq = reader.next_seq - 1
            raise HistoryReadError(run_id, seq, last_seq, self.read_idle_timeout_ms) from None

    def tail(self, after_seq: int) -> AsyncGenerator[tuple[int, str, bytes], None]:
        """Yield (seq, run_id, payload) of every history message with seq > after_seq, live
        (waits for new messages forever; close the iterator to stop): the projections' lean
        live read (runtime/projector_read.tail).

        Raises:
            nats.errors.Error, nats.js.errors.Error: the consumer was not made at first.
        """
        return projector_read.tail(self.js, after_seq)

    async def list_runs(self, limit: int) -> list[str]:
        """Ids of runs with history (sorted), at most min(limit, settings.runs_listed_max)."""
        assert limit > 0, limit
        bound = min(limit, settings.runs_listed_max)
        info = await self.js.stream_info(HISTORY_STREAM, subjects_filter=HISTORY_SUBJECTS)
        subjects = info.state.subjects or {}
        runs = sorted(run_id_of_history_subject(subject) for subject in subjects)
        return runs[:bound]


def position(message: Msg) -> tuple[int, int]:
    """(stream sequence, messages pending after it) of a delivered JetStream message, read
    from its reply subject without building nats-py's `Metadata` (a dataclass and a datetime
    per message: a tenth of a replay's time)."""
    tokens = (message.reply or "").split(".")
    if tokens[0] == "$JS" and tokens[1:2] == ["ACK"]:
        if len(tokens) == V1_ACK_TOKENS:
            return int(tokens[5]), int(tokens[8])
        if len(tokens) >= V2_ACK_TOKENS - 1:
            return int(tokens[7]), int(tokens[10])
    metadata = message.metadata  # raises NotJSMessageError as before
    return metadata.sequence.stream, metadata.num_pending



