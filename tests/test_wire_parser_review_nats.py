"""Review of runtime/wire_parser end to end: a connection the project makes
(`Connection.open`) against a real nats-server, through the features whose messages carry
status lines and flow control: a KV watch, an ordered consumer (idle heartbeats, flow
control), a pull consumer's fetch past the stream's end (404/408 statuses), many requests at
once, and a reconnect while a publisher and a subscriber run, every payload checked whole.

Found beside the parser (nats-py 2.16.0's client, either parser): a flush whose wait is
cancelled (its caller's timeout, `asyncio.wait_for` around it, a cancelled task) leaves its
cancelled future in the client's PONG futures; the PONG that answers it raises
`InvalidStateError` in `_process_pong`, which ends the client's read loop: the connection
reads nothing more, silently, until the ping timer calls it stale. runtime/connection passes
over a future already done (`_keep_reading_after_cancelled_flush`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig

from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.wire_parser import WireParser
from tests.nats_fixtures import wait_for

WAIT_S = 10.0
YIELDS_MAX = 1000  # turns of the event loop a flush takes to send its PING


def body(index: int, size: int) -> bytes:
    """A payload whose content says which it is (a torn or mixed one fails `check`)."""
    seed = hashlib.sha256(b"%d" % index).digest()
    return (b"%d:" % index + seed * (size // 32 + 1))[:size]


def check(data: bytes) -> int:
    index = int(data.split(b":", 1)[0])
    assert data == body(index, len(data)), f"payload {index} torn"
    return index


async def test_kv_watch_ordered_consumer_and_pull_statuses(private_server: EmbeddedNats) -> None:
    connection = await Connection.open(private_server.url)
    nc, js = connection.nc, connection.js
    try:
        assert type(nc._ps) is WireParser
        kv = await js.create_key_value(bucket="review_kv", history=5)
        watcher = await kv.watchall()
        for index in range(20):
            await kv.put(f"k{index % 4}", body(index, 100 + index * 3000))
        seen: list[int] = []
        while len(seen) < 20:
            entry = await watcher.updates(timeout=WAIT_S)  # type: ignore[no-untyped-call]
            if entry is not None and entry.value:
                seen.append(check(entry.value))
        assert seen == list(range(20))
        await watcher.stop()  # type: ignore[no-untyped-call]

        await js.add_stream(StreamConfig(name="REVIEW", subjects=["review.>"]))
        sizes = [0, 1, 31, 4096, 40_000, 300_000, 1_000_000]
        for index, size in enumerate(sizes * 3):
            await js.publish("review.o", body(index, max(size, 4)))
        ordered = await js.subscribe(
            "review.o", ordered_consumer=True, idle_heartbeat=0.2, flow_control=True
        )
        got = [check((await ordered.next_msg(timeout=WAIT_S)).data) for _ in range(21)]
        assert got == list(range(21))
        await ordered.unsubscribe()

        pull = await js.pull_subscribe("review.o", durable="review_pull", stream="REVIEW")
        taken: list[Msg] = await pull.fetch(30, timeout=1)  # (asks past the end: a status ends it)
        while len(taken) < 21:
            taken += await pull.fetch(21 - len(taken), timeout=WAIT_S)
        assert [check(message.data) for message in taken] == list(range(21))
        with contextlib.suppress(NatsTimeoutError):
            await pull.fetch(1, timeout=0.5)  # (nothing left: 404/408 status, a timeout)
        for message in taken:
            await message.ack()
    finally:
        await connection.close()


async def test_many_requests_at_once_answered_each_its_own(private_server: EmbeddedNats) -> None:
    connection = await Connection.open(private_server.url)
    nc = connection.nc
    try:

        async def answer(message: Msg) -> None:
            await message.respond(message.data + b"!")

        service = await nc.subscribe("review.echo", cb=answer)
        replies = await asyncio.gather(
            *(
                nc.request("review.echo", body(index, 10 + index * 997), timeout=WAIT_S)
                for index in range(300)
            )
        )
        assert [check(reply.data[:-1]) for reply in replies] == list(range(300))
        await service.unsubscribe()
    finally:
        await connection.close()


async def test_a_reconnect_under_load_tears_no_payload(server_dir: Path) -> None:
    server = EmbeddedNats(server_dir)
    await server.start()
    connection = await Connection.open(server.url)
    nc = connection.nc
    received: list[int] = []

    async def on_message(message: Msg) -> None:
        received.append(check(message.data))
        assert message.headers == {"I": str(received[-1])}

    subscription = await nc.subscribe("review.load", cb=on_message)
    sent = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal sent
        while not stop.is_set():
            try:
                await nc.publish(
                    "review.load",
                    body(sent, 50 + (sent * 7919) % 90_000),
                    headers={"I": str(sent)},
                )
                sent += 1
            except Exception:  # (while disconnected the publish may be refused)
                pass
            await asyncio.sleep(0)

    publisher = asyncio.create_task(publish())
    try:
        await wait_for(lambda: len(received) > 200, timeout_ms=20_000, what="traffic")
        port = server.port
        await server.stop()
        await wait_for(lambda: not nc.is_connected, timeout_ms=20_000, what="the outage")
        server = EmbeddedNats(server_dir, port=port)
        await server.start()
        await wait_for(lambda: nc.is_connected, timeout_ms=20_000, what="the reconnect")
        before = len(received)
        await wait_for(lambda: len(received) > before + 200, timeout_ms=20_000, what="more")
        stop.set()
        await publisher
        assert received == sorted(received), "in order, each whole"
    finally:
        stop.set()
        await subscription.unsubscribe()
        await connection.close()
        if server.is_running():
            await server.stop()


async def test_a_cancelled_flush_leaves_the_connection_reading(
    private_server: EmbeddedNats,
) -> None:
    connection = await Connection.open(private_server.url)
    nc = connection.nc
    try:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: Msg) -> None:
            await received.put(message.data)

        await nc.subscribe("review.after", cb=on_message)
        flush = asyncio.create_task(nc.flush(timeout=5))
        for _ in range(YIELDS_MAX):  # (each turn of the loop: the PONG needs a read)
            if nc._pongs:
                break
            await asyncio.sleep(0)
        assert nc._pongs, "the flush's PING sent"
        flush.cancel()  # (before its PONG came)
        with contextlib.suppress(asyncio.CancelledError):
            await flush
        await nc.publish("review.after", b"still reading")
        assert await asyncio.wait_for(received.get(), WAIT_S) == b"still reading"
    finally:
        await connection.close()
