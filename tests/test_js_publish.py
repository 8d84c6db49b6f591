"""The engine's lean JetStream paths against a real nats-server: publishes acknowledged through
one reply subscription (runtime/js_publish), the position read from a delivered message's reply
subject (runtime/log.position), the run's last message (EventLog.last) and the engine's load
through it (a current snapshot, a run of one message)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext, api

from dagnats.runtime import raw_get
from dagnats.runtime.engine import Engine
from dagnats.runtime.js_publish import JetStreamPublisher, publish_raw
from dagnats.runtime.log import WRONG_LAST_SEQUENCE, JetStreamEventLog, position
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamCommandQueue, JetStreamTaskQueue
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from dagnats.runtime.timers import JetStreamTimers
from kernel import codec
from kernel.commands import StartRun
from kernel.decide import decide
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from kernel.workflow.builder import Workflow
from projections.snapshot import SCHEMA, Snapshot
from tests.nats_fixtures import connect, unique

READ_TIMEOUT_S = 10.0


async def test_publishes_are_acknowledged_with_their_sequences_in_order(
    js: JetStreamContext,
) -> None:
    publisher = JetStreamPublisher(js)
    subject = history_subject(unique("run"))
    acks = await asyncio.gather(
        *(
            publisher.publish(subject, b"m%d" % index, stream=HISTORY_STREAM, headers={})
            for index in range(50)
        )
    )
    seqs = [ack.seq for ack in acks]
    assert len(set(seqs)) == 50 and all(ack.stream == HISTORY_STREAM for ack in acks)
    assert not any(ack.duplicate for ack in acks)
    assert publisher.pending() == 0
    last = await js.get_last_msg(HISTORY_STREAM, subject, direct=True)
    assert last.seq == max(seqs)


async def test_a_duplicate_msg_id_is_acknowledged_as_a_duplicate_of_the_original(
    js: JetStreamContext,
) -> None:
    publisher = JetStreamPublisher(js)
    subject = history_subject(unique("run"))
    first = await publisher.publish(
        subject, b"x", stream=HISTORY_STREAM, headers={"Nats-Msg-Id": subject}
    )
    again = await publisher.publish(
        subject, b"x", stream=HISTORY_STREAM, headers={"Nats-Msg-Id": subject}
    )
    assert again.duplicate and again.seq == first.seq and not first.duplicate


async def test_a_refused_publish_raises_the_api_error_js_publish_raises(
    js: JetStreamContext,
) -> None:
    publisher = JetStreamPublisher(js)
    subject = history_subject(unique("run"))
    await publisher.publish(subject, b"a", stream=HISTORY_STREAM, headers={})
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
    with pytest.raises(nats.js.errors.APIError) as caught:
        await publisher.publish(subject, b"b", stream=HISTORY_STREAM, headers=headers)
    assert caught.value.err_code == WRONG_LAST_SEQUENCE
    with pytest.raises(nats.js.errors.APIError):  # a subject of another stream
        await publisher.publish(subject, b"c", stream="NOT_THIS_STREAM", headers={})
    assert publisher.pending() == 0


async def test_a_subject_no_stream_holds_raises_no_stream_response(
    js: JetStreamContext,
) -> None:
    publisher = JetStreamPublisher(js)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await publisher.publish(unique("nowhere"), b"x", stream=HISTORY_STREAM, headers={})


async def test_waits_without_an_answer_fail_at_their_deadline_in_order(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """A publish nobody acknowledges (a core subscriber that never replies) fails with the
    timeout at its own deadline; the answered ones beside it are not touched; one timer
    serves them all and none is left once every wait ended. A timeout lowered meanwhile
    (a deadline out of order) still ends its wait on time."""
    silent = await connect(nats_server.url)
    subject = unique("silent").replace("-", "_")
    await silent.subscribe(f"{subject}.>")  # takes the messages, never answers
    await silent.flush()
    quiet = await connect(nats_server.url)
    try:
        context = quiet.jetstream(timeout=0.6)
        publisher = JetStreamPublisher(context)
        loop = asyncio.get_running_loop()
        started = loop.time()
        unanswered = [
            asyncio.ensure_future(
                publisher.publish(f"{subject}.{n}", b"x", stream=HISTORY_STREAM, headers={})
            )
            for n in range(3)
        ]
        answered = await publisher.publish(
            history_subject(unique("run")), b"y", stream=HISTORY_STREAM, headers={}
        )
        assert answered.seq > 0
        context._timeout = 0.2  # (lowered: the next deadline is before the others)
        lowered = asyncio.ensure_future(
            publisher.publish(f"{subject}.low", b"x", stream=HISTORY_STREAM, headers={})
        )
        with pytest.raises(nats.errors.TimeoutError):
            await lowered
        assert loop.time() - started < 0.6, "the lowered deadline did not wait for the others"
        for wait in unanswered:
            with pytest.raises(nats.errors.TimeoutError):
                await wait
        assert loop.time() - started >= 0.6
        assert publisher.pending() == 0 and not publisher._deadlines
        assert publisher._timer is None
    finally:
        await quiet.close()
        await silent.close()


async def test_the_position_from_the_reply_subject_is_the_metadata_s(
    js: JetStreamContext,
) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    last = 0
    for index in range(5):
        msg_id = f"{run_id}:{index}"
        last = await log.append(run_id, b"%d" % index, msg_id=msg_id, expected_last_seq=last)
    subscription = await js.subscribe(
        history_subject(run_id), stream=HISTORY_STREAM, ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
    )  # fmt: skip
    try:
        for _ in range(5):
            message = await subscription.next_msg(timeout=READ_TIMEOUT_S)
            metadata = message.metadata
            assert position(message) == (metadata.sequence.stream, metadata.num_pending)
    finally:
        await subscription.unsubscribe()


def start_run(run_id: str) -> tuple[StartRun, RunState, bytes]:
    workflow = Workflow("one", timeout="1h").task("a", task="t").build()
    command = StartRun(
        run_id=run_id, workflow=workflow, input=msgspec.Raw(b"null"), at_ms=1, seed=1
    )
    events = decide(INITIAL_STATE, command)
    assert isinstance(events, tuple) and events
    state = INITIAL_STATE
    for event in events:
        state = evolve(state, event)
    return command, state, codec.encode_decision(command, events)


def snapshot(run_id: str, last_seq: int, state: RunState) -> Snapshot:
    return Snapshot(schema=SCHEMA, run_id=run_id, last_seq=last_seq, state=state)


class OneSnapshot:
    """A snapshot store holding one snapshot (the engine's SnapshotReader)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def get(self, run_id: str) -> Snapshot | None:
        return self.snapshot if run_id == self.snapshot.run_id else None


async def test_the_engine_loads_a_run_from_its_one_message_and_a_current_snapshot(
    js: JetStreamContext,
) -> None:
    log = JetStreamEventLog(js)
    run_id = unique("run")
    assert await log.last(run_id) is None
    _command, state, payload = start_run(run_id)
    seq = await log.append(run_id, payload, msg_id=f"{run_id}:0", expected_last_seq=0)
    assert await log.last(run_id) == (seq, payload)
    commands = JetStreamCommandQueue(js)
    engine = Engine(log, JetStreamTaskQueue(js), JetStreamTimers(js), commands)
    loaded = await engine.fold_history(run_id)
    assert loaded.last_seq == seq and loaded.state == state
    # A snapshot as recent as the history is used as it is (marked to tell it from a fold).
    marked = msgspec.structs.replace(state, event_count=state.event_count + 100)
    engine.snapshots = OneSnapshot(snapshot(run_id, seq, marked))
    assert (await engine.fold_history(run_id)).state == marked
    # One that is not (ahead of the history) is ignored: the history is folded.
    engine.snapshots = OneSnapshot(snapshot(run_id, seq + 1, marked))
    assert (await engine.fold_history(run_id)).state == state


async def test_a_missing_run_is_asked_of_the_leader_only_where_history_is_replicated(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct get may be answered by a follower of a replicated history stream before it
    has the message: there a miss is asked again of the stream's leader; on one replica a
    miss is a miss, and whether the stream is replicated is asked once per connection."""
    raw_get._replicated.pop(js._nc, None)
    infos: list[str] = []
    stream_info = js.stream_info

    async def counted(name: str, *args: Any, **kwargs: Any) -> api.StreamInfo:
        infos.append(name)
        return await stream_info(name, *args, **kwargs)

    monkeypatch.setattr(js, "stream_info", counted)
    history = JetStreamEventLog(js)
    run_id = unique("lagging")
    assert await history.last_seq(run_id) == 0
    assert await history.last_seq(unique("other")) == 0
    assert infos == [HISTORY_STREAM]  # (one replica here: the miss stands)
    seq = await history.append(run_id, b"x", msg_id=f"{run_id}:1", expected_last_seq=0)

    async def lagging(*_: object) -> None:
        return None  # (a follower that has not the message yet answers every direct get)

    monkeypatch.setattr(raw_get, "direct_get", lagging)
    assert await history.last_seq(run_id) == 0  # one replica: a follower cannot answer
    monkeypatch.setitem(raw_get._replicated, js._nc, True)  # (as an R3 stream reports)
    assert await history.last_seq(run_id) == seq
    assert await history.last_seq(unique("none")) == 0


async def test_a_publish_while_connected_is_written_before_the_loop_turns(
    js: JetStreamContext,
) -> None:
    """Connected with nothing pending: a lone publish of a loop iteration is on the socket
    when `publish_raw` returns, not in the client's pending buffer waiting for the flusher's
    turn; the ones after it in that iteration, those of the next iteration with publishes
    (the client is busy), and any behind something pending go through the flusher, in
    order."""
    nc = js._nc
    subject = unique("direct")
    seen: list[bytes] = []
    got_all = asyncio.Event()

    async def on_message(message: Any) -> None:
        seen.append(message.data)
        if len(seen) == 6:
            got_all.set()

    def sent_now() -> bool:
        return nc._pending_data_size == 0 and nc._pending == []

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    await publish_raw(nc, subject, "", b"first")
    assert sent_now(), nc._pending
    await publish_raw(nc, subject, "", b"second")  # (the same iteration: the flusher's)
    assert nc._pending[-1].endswith(b"second\r\n"), nc._pending
    await nc.flush()  # (the next iterations)
    await publish_raw(nc, subject, "", b"third")  # (busy: two publishes in its last turn)
    assert nc._pending[-1].endswith(b"third\r\n"), nc._pending
    await nc.flush()
    await publish_raw(nc, subject, "", b"fourth")  # (one in its last turn: not busy)
    assert sent_now(), nc._pending
    await nc.flush()
    await nc._send_command(b"PUB %b 6\r\nbefore\r\n" % subject.encode())  # (held: pending)
    await publish_raw(nc, subject, "", b"after")
    assert nc._pending[-1].endswith(b"after\r\n"), nc._pending
    await nc._flush_pending()
    await asyncio.wait_for(got_all.wait(), READ_TIMEOUT_S)
    assert seen == [b"first", b"second", b"third", b"fourth", b"before", b"after"], seen
