"""Reads parsed where they arrive (runtime/inline_reads) against a real nats-server: messages
come whole and in order, large ones split across reads too; a parse that must wait pauses the
socket and the messages after it still come in order; a reconnect gets its own inline reader;
and nothing changes for a client the wire parser was not installed on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from dagnats.runtime import inline_reads
from dagnats.runtime.inline_reads import InlineReads
from dagnats.runtime.log_read import router
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.wire_parser import install as install_wire_parser
from tests.nats_fixtures import RestartableServer, unique, wait_for

WAIT_MS = 15_000


class Counting(InlineReads):
    """`InlineReads` that counts the reads it parsed itself, and the parses that waited."""

    parsed = 0
    finished = 0

    async def _finish(self, parse: Coroutine[Any, Any, None], waiting: object) -> None:
        Counting.finished += 1
        await super()._finish(parse, waiting)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader._waiter is not None and not reader._buffer and self._finishing is None:
            Counting.parsed += 1
        super().data_received(data)


async def inline_client(url: str, **options: object) -> Client:
    client = Client()
    assert install_wire_parser(client)
    assert inline_reads.install(client)
    await client.connect(url, **options)  # type: ignore[arg-type]
    await installed(client)
    return client


async def installed(client: Client) -> None:
    """Wait for the connection's read loop to install its reader (at its first step)."""
    await wait_for(lambda: isinstance(inline_reader_of(client), InlineReads),
                   timeout_ms=WAIT_MS, what="the inline reader")  # fmt: skip


def inline_reader_of(client: Client) -> object:
    protocol = client._transport._io_writer.transport.get_protocol()  # type: ignore[union-attr]
    return getattr(protocol.data_received, "__self__", None)


async def received_in_order(client: Client, sender: Client, count: int, size: int) -> None:
    subject = unique("tests.inline")
    got: list[bytes] = []
    done = asyncio.Event()

    async def on_message(message: Msg) -> None:
        got.append(message.data)
        if len(got) == count:
            done.set()

    await client.subscribe(subject, cb=on_message)
    await client.flush()
    for number in range(count):
        await sender.publish(subject, number.to_bytes(4, "big") * (size // 4))
    await sender.flush()
    await asyncio.wait_for(done.wait(), WAIT_MS / 1000)
    assert [int.from_bytes(data[:4], "big") for data in got] == list(range(count))
    assert all(len(data) == size // 4 * 4 for data in got)


async def test_messages_come_whole_and_in_order_small_and_split_across_reads(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_reads, "InlineReads", Counting)
    Counting.parsed = 0
    client = await inline_client(nats_server.url)
    sender = await nats.connect(nats_server.url)
    try:
        assert isinstance(inline_reader_of(client), Counting)
        await received_in_order(client, sender, 500, 16)
        await received_in_order(client, sender, 40, 300_000)  # (frames over many reads)
        assert Counting.parsed > 0, "no read was parsed where it arrived"
    finally:
        await sender.close()
        await client.close()


async def test_a_parse_that_waits_pauses_the_socket_and_the_order_holds(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_reads, "InlineReads", Counting)
    Counting.finished = 0
    client = await inline_client(nats_server.url)
    sender = await nats.connect(nats_server.url)
    subject = unique("tests.inline.wait")
    got: list[int] = []
    try:
        subscription = await client.subscribe(subject)

        async def slow(_subject: bytes, _reply: bytes, data: bytes, _headers: object) -> None:
            number = int(data)
            if number % 10 == 0:
                await asyncio.sleep(0.01)  # (the parse waits: finished by a task)
            got.append(number)

        router(client).handlers[subscription._id] = slow
        await client.flush()  # (subscribed before the first publish)
        for number in range(100):
            await sender.publish(subject, str(number).encode())
            if number % 7 == 0:
                await sender.flush()
        await sender.flush()
        await wait_for(lambda: len(got) == 100, timeout_ms=WAIT_MS, what="every message")
        assert got == list(range(100))
        reader = inline_reader_of(client)
        assert isinstance(reader, InlineReads) and reader._finishing is None
        assert Counting.finished > 0, "no parse waited where the read arrived"
    finally:
        await sender.close()
        await client.close()


async def test_a_reconnect_gets_its_own_inline_reader(tmp_path: Path) -> None:
    server = RestartableServer(tmp_path / "store")
    await server.start()
    client = await inline_client(
        server.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    try:
        first = inline_reader_of(client)
        assert isinstance(first, InlineReads)
        await server.restart()
        await wait_for(lambda: client.is_connected, timeout_ms=WAIT_MS, what="the reconnect")
        await wait_for(lambda: inline_reader_of(client) is not first, timeout_ms=WAIT_MS,
                       what="the reconnect's reader")  # fmt: skip
        second = inline_reader_of(client)
        assert isinstance(second, InlineReads) and second is not first
        sender = await nats.connect(server.server.url)
        try:
            await received_in_order(client, sender, 200, 64)
        finally:
            await sender.close()
    finally:
        await client.close()
        await server.close()


async def test_a_client_without_the_wire_parser_reads_as_nats_py_does(
    nats_server: EmbeddedNats,
) -> None:
    client = Client()
    assert not inline_reads.install(client)
    await client.connect(nats_server.url)
    sender = await nats.connect(nats_server.url)
    try:
        assert not isinstance(inline_reader_of(client), InlineReads)
        await received_in_order(client, sender, 50, 16)
    finally:
        await sender.close()
        await client.close()
