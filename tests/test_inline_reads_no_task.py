"""A read parsed where it arrives (runtime/inline_reads) runs its first step in the socket's
`data_received`, where no task is current. From Python 3.12 `asyncio.wait_for` is
`asyncio.timeout`, which raises "Timeout should be used inside a task" there: nats-py's
forced flush (`_send_command` with its pending bytes over `pending_size`) awaits
`asyncio.wait_for`, so a PONG, a flow-control answer or a `nak` sent from such a parse would
end the connection's reading (until its pings call it stale). Here Python 3.12's `wait_for`
(the same two lines) is put in for the test on 3.11; against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client

from dagnats.runtime.log_read import router
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.wire_parser import install as install_wire_parser
from tests.nats_fixtures import unique, wait_for
from tests.test_inline_reads import inline_client

T = TypeVar("T")
WAIT_MS = 15_000


async def wait_for_as_in_python_3_12(future: Awaitable[T], timeout: float | None) -> T:
    """Python 3.12's `asyncio.wait_for` (for a timeout that is None or positive)."""
    async with asyncio.timeout(timeout):
        return await future


async def test_a_send_over_the_pending_bound_from_a_read_parsed_where_it_arrived(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio, "wait_for", wait_for_as_in_python_3_12)
    # (pending_size=1: every send is over the bound, as a worker's are while its socket
    # holds more than 2 MiB of results not yet written)
    client = await inline_client(nats_server.url, pending_size=1)
    sender = await nats.connect(nats_server.url)
    subject = unique("tests.inline.flush")
    answers = unique("tests.inline.answers")
    got: list[int] = []
    answered: list[bytes] = []
    try:
        listening = await sender.subscribe(answers)
        subscription = await client.subscribe(subject)

        async def answer(_subject: bytes, _reply: bytes, data: bytes, _headers: Any) -> None:
            got.append(int(data))
            await client.publish(answers, data)  # (as log_read answers a flow control)

        router(client).handlers[subscription._id] = answer
        await client.flush()
        await sender.flush()
        for number in range(20):
            await sender.publish(subject, str(number).encode())
            await sender.flush()

        async def collect() -> None:
            while len(answered) < 20:
                answered.append((await listening.next_msg(timeout=WAIT_MS / 1000)).data)

        collecting = asyncio.get_running_loop().create_task(collect())
        await wait_for(lambda: len(got) == 20, timeout_ms=WAIT_MS, what="every message read")
        await asyncio.wait((collecting,), timeout=WAIT_MS / 1000)
        assert got == list(range(20))
        assert [int(data) for data in answered] == list(range(20))
    finally:
        await sender.close()
        await client.close()


async def test_the_same_sends_from_nats_pys_read_loop_need_no_change(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The control: the read loop is a task, its forced flushes wait as they should.)"""
    monkeypatch.setattr(asyncio, "wait_for", wait_for_as_in_python_3_12)
    client = Client()
    assert install_wire_parser(client)
    await client.connect(nats_server.url, pending_size=1)
    sender = await nats.connect(nats_server.url)
    subject = unique("tests.inline.flush.loop")
    got: list[int] = []
    try:
        subscription = await client.subscribe(subject)

        async def answer(_subject: bytes, _reply: bytes, data: bytes, _headers: Any) -> None:
            got.append(int(data))
            await client.publish(subject + ".answer", data)

        router(client).handlers[subscription._id] = answer
        await client.flush()
        for number in range(20):
            await sender.publish(subject, str(number).encode())
            await sender.flush()
        await wait_for(lambda: len(got) == 20, timeout_ms=WAIT_MS, what="every message read")
        assert got == list(range(20))
    finally:
        await sender.close()
        await client.close()
