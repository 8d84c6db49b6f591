"""Bounded history reads by a lean push consumer (runtime/log_read.py) against a real
nats-server: in order, other runs left out, flow control held back while the caller is
behind, a consistent prefix while the run grows, a gap or a silence recovered by a new
consumer, a stall named, other subscriptions untouched."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import log as log_module
from dagnats.runtime import settings
from dagnats.runtime.log import HistoryReadError, JetStreamEventLog
from dagnats.runtime.log_read import STALLED_HEADER, HistoryReader
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from tests.nats_fixtures import unique, wait_for

BATCH = 5


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "read_buffer_messages_max", BATCH)


async def publish_interleaved(
    js: JetStreamContext, run_id: str, other: str, count: int
) -> list[int]:
    """`count` messages of run_id, each followed by one of `other`; run_id's sequences."""
    seqs: list[int] = []
    for index in range(count):
        ack = await js.publish(history_subject(run_id), b"%d" % index, stream=HISTORY_STREAM)
        await js.publish(history_subject(other), b"other", stream=HISTORY_STREAM)
        seqs.append(ack.seq)
    return seqs


async def collect(log: JetStreamEventLog, run_id: str, after_seq: int = 0) -> list[int]:
    return [seq async for seq, _ in log.read(run_id, after_seq=after_seq)]


@pytest.mark.usefixtures("small_batches")
async def test_many_batches_read_in_order_without_other_runs(js: JetStreamContext) -> None:
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 4 * BATCH + 3)
    log = JetStreamEventLog(js)
    read = [item async for item in log.read(run_id)]
    assert [seq for seq, _ in read] == seqs
    assert [data for _, data in read] == [b"%d" % index for index in range(len(seqs))]
    assert await collect(log, run_id, after_seq=seqs[BATCH]) == seqs[BATCH + 1 :]


@pytest.mark.usefixtures("small_batches")
async def test_a_read_while_the_run_grows_is_the_prefix_at_its_start(js: JetStreamContext) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    last = 0
    seqs: list[int] = []
    for index in range(3 * BATCH):
        last = await log.append(
            run_id, b"m%d" % index, msg_id=f"{run_id}:{index}", expected_last_seq=last
        )
        seqs.append(last)
    read: list[int] = []
    async for seq, _ in log.read(run_id):
        read.append(seq)
        last = await log.append(
            run_id, b"late", msg_id=f"{run_id}:late{seq}", expected_last_seq=last
        )
    assert read == seqs
    assert len(await collect(log, run_id)) == 2 * len(seqs)


@pytest.mark.usefixtures("small_batches")
async def test_a_read_ends_when_the_rest_is_deleted_meanwhile(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last messages go after the read took the run's last sequence and before its
    consumer exists: the read ends at what is left, not after its idle timeout."""
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 4 * BATCH)

    class Trimmed(HistoryReader):
        trimmed = False

        async def open(self) -> None:
            if not Trimmed.trimmed:
                Trimmed.trimmed = True
                for seq in seqs[-3:]:
                    await js.delete_msg(HISTORY_STREAM, seq)
            await super().open()

    monkeypatch.setattr(log_module, "HistoryReader", Trimmed)
    log = JetStreamEventLog(js, read_idle_timeout_ms=20_000)
    read = await asyncio.wait_for(collect(log, run_id), timeout=15)  # sooner than the idle one
    assert Trimmed.trimmed
    assert read == seqs[:-3]


async def test_a_read_that_never_gets_an_answer_names_run_and_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Deaf(HistoryReader):
        async def _on_message(self, *_: bytes | None) -> None:
            pass  # every delivery lost

    monkeypatch.setattr(log_module, "HistoryReader", Deaf)
    run_id, other = unique("run"), unique("other")
    await publish_interleaved(js, run_id, other, 2)
    with pytest.raises(HistoryReadError, match=rf"run {run_id!r}: history read stalled after"):
        await collect(JetStreamEventLog(js, read_idle_timeout_ms=200), run_id)


async def test_other_subscriptions_on_the_connection_still_get_their_messages(
    js: JetStreamContext,
) -> None:
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 3)
    client = js._nc
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: object) -> None:
        await got.put(getattr(message, "data", b""))

    subject = unique("plain")
    subscription = await client.subscribe(subject, cb=on_message)
    try:
        assert await collect(JetStreamEventLog(js), run_id) == seqs
        await client.publish(subject, b"hello", headers={"X-Test": "1"})
        assert await asyncio.wait_for(got.get(), timeout=20) == b"hello"
    finally:
        await subscription.unsubscribe()


async def test_a_lost_delivery_makes_the_consumer_again_from_the_next_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[HistoryReader] = []

    class Lossy(HistoryReader):
        dropped = False

        async def _on_message(
            self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            made.append(self)
            if not Lossy.dropped and data == b"3":  # the 4th message never arrives
                Lossy.dropped = True
                return
            await super()._on_message(subject, reply, data, headers)

    monkeypatch.setattr(log_module, "HistoryReader", Lossy)
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 12)
    read = [item async for item in JetStreamEventLog(js).read(run_id)]
    assert [seq for seq, _ in read] == seqs
    assert [data for _, data in read] == [b"%d" % index for index in range(12)]
    assert Lossy.dropped and made[0].restarts == 1


async def test_a_silent_consumer_is_made_again(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Deafened(HistoryReader):
        async def _on_message(
            self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if self.restarts:  # the first consumer's deliveries are all lost
                await super()._on_message(subject, reply, data, headers)

    monkeypatch.setattr(log_module, "HistoryReader", Deafened)
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 4)
    assert await collect(JetStreamEventLog(js, read_idle_timeout_ms=2_000), run_id) == seqs


@pytest.mark.usefixtures("small_batches")
async def test_flow_control_waits_while_the_caller_is_behind(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[int] = []  # what the reader held when it held a flow control back
    stalled: list[int] = []  # what it held at each heartbeat naming that flow control

    class Watched(HistoryReader):
        async def _on_status(self, reply: bytes, headers: bytes) -> None:
            await super()._on_status(reply, headers)
            if reply and self.wanted:
                held.append(len(self.items))
            elif not reply and self.wanted and STALLED_HEADER in headers:
                stalled.append(len(self.items))  # (still held back: not answered by it)

    monkeypatch.setattr(log_module, "HistoryReader", Watched)
    monkeypatch.setattr(settings, "read_heartbeat_ms", 200)  # heartbeats while the caller waits
    run_id = unique("run")
    payload = b"x" * 8_192
    acks = [await js.publish_async(history_subject(run_id), payload) for _ in range(2_000)]
    await js.publish_async_completed()
    seqs = [(await ack).seq for ack in acks]
    read: list[int] = []
    async for seq, _ in JetStreamEventLog(js).read(run_id):
        read.append(seq)
        if len(read) == 1:  # a slow caller: the server asks for flow control meanwhile
            await wait_for(lambda: bool(held), timeout_ms=20_000, what="a held flow control")
            await wait_for(lambda: len(stalled) >= 3, timeout_ms=20_000,
                           what="heartbeats naming the held flow control")  # fmt: skip
    assert read == seqs
    assert all(BATCH < count <= settings.read_pending_messages_max for count in held)
    # a stalled heartbeat is not an answer: the server sent nothing more meanwhile
    assert stalled[:3] == [stalled[0]] * 3, (held, stalled)


async def test_a_full_reader_drops_and_starts_again_from_the_next_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "read_pending_messages_max", 20)
    made: list[HistoryReader] = []
    most = 0

    class Watched(HistoryReader):
        async def open(self) -> None:
            made.append(self)
            await super().open()

        async def _on_message(
            self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            nonlocal most
            await super()._on_message(subject, reply, data, headers)
            most = max(most, len(self.items))

    monkeypatch.setattr(log_module, "HistoryReader", Watched)
    run_id = unique("run")
    acks = [await js.publish_async(history_subject(run_id), b"%d" % i) for i in range(300)]
    await js.publish_async_completed()
    seqs = [(await ack).seq for ack in acks]
    read: list[tuple[int, bytes]] = []
    async for item in JetStreamEventLog(js).read(run_id):
        read.append(item)
        if len(read) == 1:  # a slow caller: the reader fills up meanwhile
            await wait_for(lambda: made[0]._full, timeout_ms=20_000, what="a full reader")
    assert [seq for seq, _ in read] == seqs
    assert [data for _, data in read] == [b"%d" % i for i in range(300)]
    assert most <= 20
    assert made[0].overflows > 0 and made[0].restarts == 0


async def test_a_read_ends_when_its_whole_range_goes_meanwhile(
    private_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's messages are the stream's last, and all go (retention purged the run) after
    the read took its last sequence: no message ever comes to say the rest is gone, so only a
    look at what is left (after a silence) ends the read; it used to stall twice, then fail."""
    run_id = unique("run")
    seqs = [(await private_js.publish(history_subject(run_id), b"m", stream=HISTORY_STREAM)).seq
            for _ in range(6)]  # fmt: skip

    class Purged(HistoryReader):
        async def open(self) -> None:
            if not self.restarts:
                await private_js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id))
            await super().open()

    monkeypatch.setattr(log_module, "HistoryReader", Purged)
    log = JetStreamEventLog(private_js, read_idle_timeout_ms=1_000)
    assert seqs and await asyncio.wait_for(collect(log, run_id), timeout=15) == []
