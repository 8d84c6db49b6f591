"""Bounded history reads by batched direct gets (runtime/log_read.py) against a real
nats-server: several batches in order, other runs left out, memory within two batches, a
consistent prefix while the run grows, a lost batch asked for again, a refusal named."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import log as log_module
from dagnats.runtime import settings
from dagnats.runtime.log import HistoryReadError, JetStreamEventLog
from dagnats.runtime.log_read import BatchReader, HistoryBatchError
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from tests.nats_fixtures import unique, wait_for

BATCH = 5


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "read_batch_messages_max", BATCH)


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


async def test_a_batch_ends_at_its_byte_bound(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "read_batch_bytes_max", 1)  # one message per batch
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 7)
    assert await collect(JetStreamEventLog(js), run_id) == seqs


@pytest.mark.usefixtures("small_batches")
async def test_a_reader_holds_at_most_two_batches(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    most = 0

    class Watched(BatchReader):
        async def _on_message(self, subject: bytes, data: bytes, headers: bytes) -> None:
            nonlocal most
            await super()._on_message(subject, data, headers)
            most = max(most, len(self.items))

    monkeypatch.setattr(log_module, "BatchReader", Watched)
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 10 * BATCH)
    read: list[int] = []
    async for seq, _ in JetStreamEventLog(js).read(run_id):
        read.append(seq)
        if len(read) == 1:  # a slow fold: the next batch comes meanwhile, unasked
            await wait_for(lambda: most > BATCH, timeout_ms=20_000, what="the next batch")
        await asyncio.sleep(0.001)  # the batches wait for the fold, they do not pile up
    assert read == seqs
    assert most <= 2 * BATCH


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
async def test_a_read_ends_when_the_rest_is_deleted_meanwhile(js: JetStreamContext) -> None:
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 4 * BATCH)
    log = JetStreamEventLog(js, read_idle_timeout_ms=20_000)
    read: list[int] = []

    async def consume() -> None:
        async for seq, _ in log.read(run_id):
            read.append(seq)
            if len(read) == 1:
                await js.purge_stream(HISTORY_STREAM, subject=history_subject(run_id))

    await asyncio.wait_for(consume(), timeout=15)  # far sooner than the idle timeout
    assert read == seqs[: len(read)] and len(read) <= 2 * BATCH


@pytest.mark.usefixtures("small_batches")
async def test_a_lost_batch_is_asked_for_again(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Lossy(BatchReader):
        lost = 0

        async def request(self) -> None:
            if Lossy.lost == 0 and self.next_seq > 1:  # the second batch's answer goes nowhere
                Lossy.lost += 1
                self.wanted = False
                self._requests += 1
                self._reply = b"nobody"
                await self.client.publish(f"{self._inbox}.lost", b"")
                return
            await super().request()

    monkeypatch.setattr(log_module, "BatchReader", Lossy)
    run_id, other = unique("run"), unique("other")
    seqs = await publish_interleaved(js, run_id, other, 3 * BATCH)
    assert await collect(JetStreamEventLog(js, read_idle_timeout_ms=2_000), run_id) == seqs
    assert Lossy.lost == 1


async def test_a_read_that_never_gets_an_answer_names_run_and_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Deaf(BatchReader):
        async def request(self) -> None:
            self.wanted = False
            self._reply = b"nobody"

    monkeypatch.setattr(log_module, "BatchReader", Deaf)
    run_id, other = unique("run"), unique("other")
    await publish_interleaved(js, run_id, other, 2)
    with pytest.raises(HistoryReadError, match=rf"run {run_id!r}: history read stalled after"):
        await collect(JetStreamEventLog(js, read_idle_timeout_ms=200), run_id)


async def test_a_refused_batch_names_the_subject_and_status(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Misdirected(BatchReader):
        async def open(self) -> None:
            self.api_subject = "$JS.API.DIRECT.GET.NO_SUCH_STREAM"  # no responders: 503
            await super().open()

    monkeypatch.setattr(log_module, "BatchReader", Misdirected)
    run_id, other = unique("run"), unique("other")
    await publish_interleaved(js, run_id, other, 2)
    with pytest.raises(HistoryBatchError, match=r"answered '503"):
        await asyncio.wait_for(collect(JetStreamEventLog(js), run_id), timeout=20)


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
