"""A run's live watch (client/live_watch.py): a core subscription to what the history stream
republishes, against a real nats-server. It gives every stored message of the run once, in
order, and nothing the stream refused; what its subscription missed (messages stored before
it existed, a gap, a reconnect, a lost last message) it reads from the stream. Where the
history stream does not republish, `open_watch` gives an ordered consumer as before, and
serve's admin gives an older stream its republish."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dagnats.client import Client, live_watch
from dagnats.client.live_watch import LiveWatch, open_watch, republishing
from dagnats.client.watches import RunWatch, Seen
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import (
    HISTORY_STREAM,
    ensure_history_republish,
    ensure_resources,
    history_subject,
    republishes,
)
from kernel import codec
from kernel.commands import AnyCommand, CancelRun, SendSignal
from kernel.decide import decide
from kernel.reducer import evolve
from kernel.state import RunState
from tests.nats_fixtures import unique, wait_for
from tests.test_client_start_wait import NAP
from tests.test_js_publish import start_run

WAIT_S = 20.0
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


@pytest.fixture
def js(private_js: JetStreamContext) -> JetStreamContext:
    """This module's tests run on a server of their own."""
    return private_js


class History:
    """A run's history written as the engine writes it: each append under the run's last
    sequence (so the stream refuses an append on a stale one)."""

    def __init__(self, js: JetStreamContext, run_id: str) -> None:
        self.js = js
        self.run_id = run_id
        self.last_seq = 0
        self.state: RunState | None = None
        self.commands: list[AnyCommand] = []

    async def start(self) -> int:
        command, self.state, data = start_run(self.run_id)
        return await self._append(command, data)

    async def signal(self, name: str) -> int:
        return await self.decide(SendSignal(run_id=self.run_id, at_ms=2, name=name))

    async def cancel(self) -> int:
        return await self.decide(CancelRun(run_id=self.run_id, at_ms=3, reason="test"))

    async def decide(self, command: SendSignal | CancelRun) -> int:
        assert self.state is not None
        events = decide(self.state, command)
        assert isinstance(events, tuple) and events, events
        for event in events:
            self.state = evolve(self.state, event)
        return await self._append(command, codec.encode_decision(command, events))

    async def _append(self, command: AnyCommand, data: bytes) -> int:
        headers = {EXPECTED_LAST: str(self.last_seq)}
        ack = await self.js.publish(history_subject(self.run_id), data, headers=headers)
        self.last_seq = ack.seq
        self.commands.append(command)
        return ack.seq


async def given(watch: LiveWatch | RunWatch, count: int) -> list[Seen]:
    items: list[Seen] = []
    deadline = time.monotonic() + WAIT_S
    for _ in range(count):
        item = await watch.next(deadline)
        assert item is not None, f"{len(items)} of {count} given"
        items.append(item)
    return items


async def test_a_live_watch_gives_each_stored_message_once_and_none_the_stream_refused(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("live"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        first = await run.start()
        with pytest.raises(nats.js.errors.APIError):  # an append on a stale sequence: refused
            await js.publish(
                history_subject(run.run_id), b'{"refused":true}', headers={EXPECTED_LAST: "0"}
            )
        second = await run.signal("go")
        items = await given(watch, 2)
        assert [seq for seq, _ in items] == [first, second]
        assert [decision.command for _, decision in items] == run.commands
        assert watch.reads == 0, "everything came live: the stream was never read"
    finally:
        await watch.close()


async def test_a_watch_of_a_run_with_history_reads_it_first_then_goes_on_live(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("before"))
    stored = [await run.start(), await run.signal("a")]
    watch = await LiveWatch.open(js, run.run_id)  # stored=True: reads what the run holds
    try:
        assert [seq for seq, _ in await given(watch, 2)] == stored
        third = await run.cancel()
        assert [seq for seq, _ in await given(watch, 1)] == [third]
        assert watch.reads == 1
    finally:
        await watch.close()


async def test_a_gap_is_read_from_the_stream_before_the_message_after_it(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("gap"))
    first = await run.start()  # stored before the watch exists; the watch is told nothing
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        second = await run.signal("b")  # names `first` as the run's message before it
        items = await given(watch, 2)
        assert [seq for seq, _ in items] == [first, second], "the missed one first, in order"
        assert watch.reads == 1
    finally:
        await watch.close()


async def test_a_watch_holding_its_bound_drops_the_rest_and_reads_it_from_the_stream(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a watch holds unread is bounded (live_pending_messages_max): messages beyond
    it are dropped on arrival and read from the stream when their turn comes, in order,
    each once."""
    monkeypatch.setattr(live_watch, "live_pending_messages_max", 2)
    run = History(js, unique("bound"))
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        stored = [await run.start()]
        stored += [await run.signal(f"s{n}") for n in range(4)]
        await wait_for(lambda: watch._read_now, timeout_ms=int(WAIT_S * 1000), what="a drop")
        assert len(watch._incoming) == 2  # the bound held
        items = await given(watch, len(stored))
        assert [seq for seq, _ in items] == stored
        assert watch.reads >= 1
    finally:
        await watch.close()


async def test_a_missed_last_message_is_found_when_the_watch_hears_nothing(
    js: JetStreamContext,
) -> None:
    run = History(js, unique("quiet"))
    stored = [await run.start(), await run.cancel()]  # the run ended before the watch opened
    watch = await LiveWatch.open(js, run.run_id, stored=False)
    try:
        items = await given(watch, 2)  # after live_check_s without a message
        assert [seq for seq, _ in items] == stored
        assert watch.reads == 1
        assert await watch.next(time.monotonic() + live_watch.live_check_s) is None
    finally:
        await watch.close()


async def test_a_live_watch_finds_what_was_stored_while_its_connection_was_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No read after a silence within the test: only the reconnect can make the watch read.
    monkeypatch.setattr(live_watch, "live_check_s", WAIT_S * 10)
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    port = int(server.url.rsplit(":", 1)[1])
    # The watch's connection comes back slowly; another one, quick, appends meanwhile.
    slow = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=1.0)
    quick: NatsClient | None = None
    try:
        js = slow.jetstream()
        await ensure_resources(js)
        run = History(js, unique("outage"))
        watch = await LiveWatch.open(js, run.run_id, stored=False)
        first = await run.start()
        assert [seq for seq, _ in await given(watch, 1)] == [first]
        assert watch.reads == 0
        waiting = asyncio.create_task(given(watch, 1))  # waits through the outage
        await server.stop()
        server = EmbeddedNats(tmp_path / "nats", port=port)
        await server.start()
        quick = await nats.connect(server.url)
        run.js = quick.jetstream()
        second = await run.signal("during")  # the watch's subscription is not back yet
        assert not slow.is_connected
        assert not waiting.done()
        items = await asyncio.wait_for(waiting, WAIT_S)
        assert [seq for seq, _ in items] == [second]
        assert watch.reads == 1, "the reconnect made the watch read the stream"
        await watch.close()
    finally:
        await slow.close()
        if quick is not None:
            await quick.close()
        await server.stop()


async def test_without_republish_a_watch_is_an_ordered_consumer_and_serve_adds_it(
    private_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(private_server.url)
    try:
        js = nc.jetstream()
        await ensure_resources(js)
        info = await js.stream_info(HISTORY_STREAM)
        assert republishes(info.config)
        await js.update_stream(info.config.evolve(republish=None))  # as an older version made it
        older = await nats.connect(private_server.url)
        try:
            older_js = older.jetstream()
            assert not await republishing(older_js)
            run = History(older_js, unique("older"))
            first = await run.start()
            watch = await open_watch(older_js, run.run_id)
            assert isinstance(watch, RunWatch)
            assert [seq for seq, _ in await given(watch, 1)] == [first]
            await watch.close()
        finally:
            await older.close()
        assert await ensure_history_republish(js)  # serve's admin, at its start
        assert republishes((await js.stream_info(HISTORY_STREAM)).config)
        newer = await nats.connect(private_server.url)
        try:
            watch = await open_watch(newer.jetstream(), unique("newer"))
            assert isinstance(watch, LiveWatch)
            await watch.close()
        finally:
            await newer.close()
    finally:
        await nc.close()


OUTAGE_S = 6.5  # longer than a JetStream request's timeout (5 s): a read tried meanwhile fails


async def restarted(server: EmbeddedNats, tmp_path: Path, port: int) -> EmbeddedNats:
    """The server stopped for OUTAGE_S, then started again on its port and store."""
    await server.stop()
    await asyncio.sleep(OUTAGE_S)  # (the outage itself, not a wait for a condition)
    again = EmbeddedNats(tmp_path / "nats", port=port)
    await again.start()
    return again


async def test_a_wait_and_a_start_go_on_across_an_outage_longer_than_a_request(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    port = int(server.url.rsplit(":", 1)[1])
    client = await Client.connect(server.url)
    try:
        js = client.connection.js
        await ensure_resources(js)
        run = History(js, unique("across"))
        await run.start()
        waiting = asyncio.create_task(client.wait(run.run_id, timeout_s=WAIT_S * 3))
        quiet = unique("started")  # no engine: its start waits for a first decision
        starting = asyncio.create_task(client.start(NAP, run_id=quiet, wait_started_s=WAIT_S))
        await wait_for(lambda: quiet in client._started, timeout_ms=int(WAIT_S * 1000),
                       what="the StartRun sent")  # fmt: skip
        server = await restarted(server, tmp_path, port)
        await wait_for(lambda: client.connection.nc.is_connected, timeout_ms=20_000,
                       what="the reconnect")  # fmt: skip
        await run.cancel()
        state = await asyncio.wait_for(waiting, WAIT_S * 3)
        assert state.status == "cancelled", state.status
        assert await asyncio.wait_for(starting, WAIT_S * 2) == quiet, "the start went out"
    finally:
        await client.close()
        await server.stop()


async def test_a_history_longer_than_one_read_is_read_at_once_not_a_silence_each(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_watch, "live_read_messages_max", 4)
    monkeypatch.setattr(live_watch, "live_check_s", WAIT_S * 10)  # a silence never ends here
    run = History(js, unique("long"))
    stored = [await run.start()]
    stored += [await run.signal(f"s{index}") for index in range(9)]
    stored.append(await run.cancel())
    watch = await LiveWatch.open(js, run.run_id)
    try:
        assert [seq for seq, _ in await given(watch, len(stored))] == stored
        assert watch.reads == 3, "11 messages, 4 a read"
    finally:
        await watch.close()
