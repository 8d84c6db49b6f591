"""A connection the project makes (`Connection.open`) reads the wire with runtime/wire_parser,
and everything works through it against a real nats-server: core publish and subscribe with
headers and with a payload larger than a read, a request, flushes (PING/PONG), JetStream
publish acknowledgements, a pull consumer's fetch and acks, and all of it again after the
server restarted (a reconnect resets the parser mid-stream)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.wire_parser import WireParser
from tests.nats_fixtures import wait_for

WAIT_S = 10.0
BIG = bytes(range(256)) * 300  # 75 KiB: several of the client's 32 KiB reads


async def exchange(nc: Client, round_: int) -> None:
    """Core messages through the parser: headers, a large payload, a reply, a flush."""
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_message(message: Msg) -> None:
        await received.put(message)

    async def answer(message: Msg) -> None:
        await message.respond(b"answer:" + message.data)

    subscription = await nc.subscribe(f"wire.core.{round_}", cb=on_message)
    service = await nc.subscribe(f"wire.service.{round_}", cb=answer)
    try:
        await nc.publish(f"wire.core.{round_}", b"plain")
        await nc.publish(f"wire.core.{round_}", BIG, headers={"Kind": "big", "Round": str(round_)})
        await nc.publish(f"wire.core.{round_}", b"", headers={"Empty": "yes"})
        await nc.flush(timeout=int(WAIT_S))
        got = [await asyncio.wait_for(received.get(), WAIT_S) for _ in range(3)]
        assert [message.data for message in got] == [b"plain", BIG, b""]
        assert got[0].headers is None
        assert got[1].headers == {"Kind": "big", "Round": str(round_)}
        assert got[2].headers == {"Empty": "yes"}
        reply = await nc.request(f"wire.service.{round_}", b"question", timeout=WAIT_S)
        assert reply.data == b"answer:question"
    finally:
        await subscription.unsubscribe()
        await service.unsubscribe()


async def jetstream(connection: Connection, round_: int) -> None:
    """Publish acknowledgements and a pull fetch through the parser."""
    js = connection.js
    acks = [
        await js.publish(
            f"wire.js.{round_}", b"m%d" % index, headers={"Nats-Msg-Id": f"{round_}-{index}"}
        )
        for index in range(5)
    ]
    assert [ack.stream for ack in acks] == ["WIRE"] * 5
    assert [ack.seq for ack in acks] == sorted({ack.seq for ack in acks})
    duplicate = await js.publish(f"wire.js.{round_}", b"m0", headers={"Nats-Msg-Id": f"{round_}-0"})
    assert duplicate.duplicate and duplicate.seq == acks[0].seq
    pull = await js.pull_subscribe(f"wire.js.{round_}", durable=f"wire{round_}", stream="WIRE")
    taken: list[Msg] = []
    while len(taken) < 5:
        taken += await pull.fetch(5 - len(taken), timeout=WAIT_S)
    assert [message.data for message in taken] == [b"m%d" % index for index in range(5)]
    assert [message.metadata.sequence.stream for message in taken] == [ack.seq for ack in acks]
    assert taken[0].headers == {"Nats-Msg-Id": f"{round_}-0"}
    for message in taken:
        await message.ack_sync(timeout=WAIT_S)
    await pull.unsubscribe()


async def test_a_connection_reads_through_the_wire_parser_before_and_after_a_reconnect(
    server_dir: Path,
) -> None:
    server = EmbeddedNats(server_dir)
    await server.start()
    connection = await Connection.open(server.url)
    nc = connection.nc
    try:
        assert type(nc._ps) is WireParser
        await connection.js.add_stream(StreamConfig(name="WIRE", subjects=["wire.js.>"]))
        await exchange(nc, 0)
        await jetstream(connection, 0)
        port = server.port
        await server.stop()
        await wait_for(lambda: not nc.is_connected, timeout_ms=20_000, what="the outage seen")
        server = EmbeddedNats(server_dir, port=port)
        await server.start()
        await wait_for(lambda: nc.is_connected, timeout_ms=20_000, what="the reconnect")
        assert type(nc._ps) is WireParser, "the same parser, reset by the client"
        await exchange(nc, 1)
        await jetstream(connection, 1)
    finally:
        await connection.close()
        if server.is_running():
            await server.stop()
