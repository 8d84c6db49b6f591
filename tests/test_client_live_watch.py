"""A run's live watch (`RunWatch`, what `Client.start` and `Client.wait` read) on the lean push
consumer's live mode (runtime/log_read.LiveReader), against a real nats-server: messages
appended after it opened arrive in order and nothing else; a server restart mid-wait (same
port, same store) loses nothing and repeats nothing; a gap, a full buffer or a consumer gone
silent makes the consumer again from the next sequence; close deletes the consumer; a refused
consumer raises and leaves nothing behind; an undecodable message names run and sequence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from dagnats.client import watches as watches_module
from dagnats.client.watches import RunWatch
from dagnats.runtime import log_read, settings
from dagnats.runtime.log_read import ROUTER_ATTRIBUTE, LiveReader
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel import codec
from kernel.commands import CancelRun
from kernel.decide import decide
from kernel.events import Decision
from tests.nats_fixtures import RestartableServer, unique, wait_for
from tests.test_js_publish import start_run

WAIT_S = 20.0


def deadline() -> float:
    return time.monotonic() + WAIT_S


async def publish(js: JetStreamContext, run_id: str, data: bytes) -> int:
    ack = await js.publish(history_subject(run_id), data, stream=HISTORY_STREAM)
    return ack.seq


def cancel_decisions(run_id: str, count: int) -> list[bytes]:
    """`count` decodable decisions of the run, told apart by their command's `at_ms` (the
    watch decodes; it does not fold)."""
    _, state, _ = start_run(run_id)
    encoded = []
    for index in range(count):
        cancel = CancelRun(run_id=run_id, at_ms=100 + index, reason="test")
        events = decide(state, cancel)
        assert isinstance(events, tuple) and events
        encoded.append(codec.encode_decision(cancel, events))
    return encoded


def at_ms(decision: Decision) -> int:
    assert isinstance(decision.command, CancelRun), decision.command
    return decision.command.at_ms


async def consumers(js: JetStreamContext) -> int:
    info = await js.stream_info(HISTORY_STREAM)
    assert info.state.consumer_count is not None
    return info.state.consumer_count


async def test_messages_appended_after_open_arrive_in_order_and_no_others(
    js: JetStreamContext,
) -> None:
    run_id, other = unique("live"), unique("other")
    before = await publish(js, run_id, b"before")
    reader = LiveReader(js, HISTORY_STREAM, history_subject(run_id), after_seq=before)
    await reader.open()
    try:
        got: list[tuple[int, bytes] | None] = []
        published: list[tuple[int, bytes]] = []
        for index in range(6):
            waiting = asyncio.ensure_future(reader.next(deadline()))  # waits: nothing there
            await publish(js, other, b"other")
            data = b"%d" % index
            published.append((await publish(js, run_id, data), data))
            got.append(await asyncio.wait_for(waiting, WAIT_S))
        assert got == published
        assert await reader.next(time.monotonic() + 0.2) is None, "nothing more: the deadline"
        assert reader.restarts == 0 and reader.overflows == 0
    finally:
        await reader.close()


async def test_a_watch_reads_from_the_runs_first_message_whenever_it_opens(
    js: JetStreamContext,
) -> None:
    """`start` opens the watch while its StartRun goes out: what was appended before the
    consumer exists is read first, then what comes after."""
    run_id = unique("first")
    decisions = cancel_decisions(run_id, 4)
    early = [await publish(js, run_id, data) for data in decisions[:2]]
    watch = await RunWatch.open(js, run_id)
    try:
        late = [await publish(js, run_id, data) for data in decisions[2:]]
        seen = [await watch.next(deadline()) for _ in decisions]
        assert [item[0] for item in seen if item] == early + late
        assert [at_ms(item[1]) for item in seen if item] == [100, 101, 102, 103]
    finally:
        await watch.close()


async def test_a_server_restart_mid_wait_loses_nothing_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    restartable = RestartableServer(tmp_path / "nats")
    try:
        js = (await restartable.start()).jetstream()
        run_id = unique("restarted")
        decisions = cancel_decisions(run_id, 6)
        seqs = [await publish(js, run_id, data) for data in decisions[:3]]
        watch = await RunWatch.open(js, run_id)
        given = [await watch.next(deadline())]  # two more held or on their way
        await restartable.restart()
        seqs += [await publish(js, run_id, data) for data in decisions[3:5]]
        given += [await watch.next(deadline()) for _ in range(4)]
        waiting = asyncio.ensure_future(watch.next(deadline()))  # mid-wait: nothing there
        await asyncio.sleep(0)
        assert not waiting.done()
        await restartable.restart()
        seqs.append(await publish(js, run_id, decisions[5]))
        given.append(await asyncio.wait_for(waiting, WAIT_S))
        assert await watch.next(time.monotonic() + 0.5) is None, "nothing given twice"
        assert [item[0] for item in given if item] == seqs
        assert [at_ms(item[1]) for item in given if item] == list(range(100, 106))
        assert watch.reopened >= 2, "a consumer made again after each restart"
        await watch.close()
    finally:
        await restartable.close()


async def test_a_gap_makes_the_consumer_again_from_the_next_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[LiveReader] = []

    class Lossy(LiveReader):
        dropped = False
        target = b""  # the delivery that never arrives

        async def open(self) -> None:
            made.append(self)
            await super().open()

        async def _on_message(
            self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if not Lossy.dropped and data == Lossy.target:
                Lossy.dropped = True
                return
            await super()._on_message(subject, reply, data, headers)

    monkeypatch.setattr(watches_module, "LiveReader", Lossy)
    run_id = unique("gap")
    decisions = cancel_decisions(run_id, 6)
    Lossy.target = decisions[2]
    watch = await RunWatch.open(js, run_id)
    try:
        seqs = [await publish(js, run_id, data) for data in decisions]
        given = [await watch.next(deadline()) for _ in decisions]
        assert [item[0] for item in given if item] == seqs
        assert [at_ms(item[1]) for item in given if item] == list(range(100, 106))
        assert Lossy.dropped and made[0].restarts == 1 and watch.reopened == 1
    finally:
        await watch.close()


async def test_a_full_live_reader_drops_and_starts_again_from_the_next_sequence(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "read_pending_messages_max", 20)
    run_id = unique("full")
    reader = LiveReader(js, HISTORY_STREAM, history_subject(run_id), after_seq=0)
    most = 0
    original = reader._on_message

    async def counted(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        nonlocal most
        await original(subject, reply, data, headers)
        most = max(most, len(reader.items))

    monkeypatch.setattr(reader, "_on_message", counted)
    await reader.open()
    try:
        acks = [await js.publish_async(history_subject(run_id), b"%d" % i) for i in range(300)]
        await js.publish_async_completed()
        seqs = [(await ack).seq for ack in acks]
        read = [await reader.next(deadline())]
        await wait_for(lambda: reader._full, timeout_ms=20_000, what="a full reader")
        read += [await reader.next(deadline()) for _ in range(299)]
        assert [item[0] for item in read if item] == seqs
        assert [item[1] for item in read if item] == [b"%d" % i for i in range(300)]
        assert most <= 20
        assert reader.overflows > 0 and reader.restarts == 0
    finally:
        await reader.close()


async def test_a_consumer_gone_silent_is_made_again(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its consumer deleted behind its back (no reconnect: say its server left a cluster),
    no heartbeat comes: after live_silence_ms the reader makes it again."""
    monkeypatch.setattr(settings, "read_heartbeat_ms", 100)
    monkeypatch.setattr(log_read, "live_poll_ms", 100)
    monkeypatch.setattr(log_read, "live_silence_ms", 600)
    run_id = unique("silent")
    reader = LiveReader(js, HISTORY_STREAM, history_subject(run_id), after_seq=0)
    await reader.open()
    try:
        first = await publish(js, run_id, b"one")
        assert await reader.next(deadline()) == (first, b"one")
        assert await reader.next(time.monotonic() + 1.0) is None  # heartbeats: not silent
        assert reader.restarts == 0
        await js.delete_consumer(HISTORY_STREAM, reader._consumer)
        second = await publish(js, run_id, b"two")
        assert await reader.next(deadline()) == (second, b"two")
        assert reader.restarts == 1
    finally:
        await reader.close()


async def test_close_deletes_the_consumer(private_js: JetStreamContext) -> None:
    run_id = unique("closed")
    before = await consumers(private_js)
    watch = await RunWatch.open(private_js, run_id)
    assert await consumers(private_js) == before + 1
    await watch.close()
    assert await consumers(private_js) == before, "the delete's answer came before close ended"
    await watch.close()  # twice is once


async def test_a_refused_consumer_raises_and_leaves_no_subscription(
    js: JetStreamContext,
) -> None:
    router = getattr(js._nc, ROUTER_ATTRIBUTE, None)
    handlers = len(router.handlers) if router is not None else 0
    subscriptions = len(js._nc._subs)
    reader = LiveReader(js, "NO_SUCH_STREAM", "no.such.subject", after_seq=0)
    with pytest.raises(nats.js.errors.NotFoundError):
        await reader.open()
    await reader.close()
    assert len(getattr(js._nc, ROUTER_ATTRIBUTE).handlers) == handlers
    assert len(js._nc._subs) == subscriptions


async def test_an_undecodable_message_names_the_run_and_the_sequence(
    js: JetStreamContext,
) -> None:
    run_id = unique("garbled")
    watch = await RunWatch.open(js, run_id)
    try:
        seq = await publish(js, run_id, msgspec.json.encode({"not": "a decision"}))
        with pytest.raises(RunParkedError, match=rf"{run_id}.*sequence {seq} does not decode"):
            await watch.next(deadline())
    finally:
        await watch.close()


async def test_a_request_no_one_answers_raises_no_responders_at_once(js: JetStreamContext) -> None:
    """(JetStream not there: the server's 503 status comes to the reader's inbox.)"""
    reader = LiveReader(js, HISTORY_STREAM, history_subject(unique("alone")), after_seq=0)
    await reader.open()
    try:
        with pytest.raises(nats.errors.NoRespondersError):
            await reader._api(unique("nobody.listens"), b"", WAIT_S)
    finally:
        await reader.close()
