"""Bounded reads of one run's history by batched direct gets (nats-server >= 2.11).

One request `$JS.API.DIRECT.GET.DAGNATS_HISTORY` with `{"seq", "next_by_subj", "batch",
"max_bytes", "up_to_seq"}` brings up to a batch of the run's messages, each with its
`Nats-Sequence` header, then an end-of-batch status (`NATS/1.0 204 EOB`, with
`Nats-Num-Pending`: how many more match up to `up_to_seq`). No consumer is created or deleted,
and a request is stateless: a lost answer is asked for again from the next sequence.

The messages of a reader's inbox reach it before nats-py parses their headers (a `Msg`, a
header dict and an ordered consumer's checks per message cost more than the decode and fold
of the message together): a per-connection router hands them over by subscription id and
passes every other message to nats-py unchanged. A reader reads only the `Nats-Sequence`
header of a message, and the status line and `Nats-Num-Pending` of an end of batch.

Memory is bounded: a reader holds at most two batches (settings.read_batch_messages_max
messages and settings.read_batch_bytes_max bytes each, plus one message); the next batch is
asked for while the reader's caller folds the current one (the server works meanwhile).
"""

from __future__ import annotations

import asyncio
import collections
import json
import weakref
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from dagnats.runtime import settings
from kernel.errors import DagnatsError

SEQUENCE_HEADER: Final = b"\r\nNats-Sequence: "
PENDING_HEADER: Final = b"\r\nNats-Num-Pending: "
STATUS_AT: Final = len(b"NATS/1.0 ")  # headers `NATS/1.0 204 EOB\r\n...`: the status's offset
END_OF_BATCH: Final = b"204"
NOT_FOUND: Final = b"404"

Handler = Callable[[bytes, bytes, bytes], Awaitable[None]]


class HistoryBatchError(DagnatsError):
    """The server refused a batched direct get (a status other than end of batch)."""

    def __init__(self, subject: str, status: str) -> None:
        self.subject = subject
        self.status = status
        super().__init__(f"direct get of {subject!r} answered {status!r}")


class _Router:
    """Hands the messages of registered subscriptions to their handler, raw (subject, data,
    headers bytes); passes every other message to the client's own processing."""

    def __init__(self, client: Client) -> None:
        self.handlers: dict[int, Handler] = {}
        self.process_next = client._process_msg

    async def process(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self.process_next(sid, subject, reply, data, headers)
        else:
            await handler(subject, data, headers)


_routers: weakref.WeakKeyDictionary[Client, _Router] = weakref.WeakKeyDictionary()


def _router(client: Client) -> _Router:
    router = _routers.get(client)
    if router is None:
        router = _routers[client] = _Router(client)
        setattr(client, "_process_msg", router.process)  # noqa: B010 (an instance's method)
    return router


def header_int(headers: bytes, name: bytes) -> int:
    """The integer value of header `name` (given as b"\\r\\nName: ") in a raw header block."""
    start = headers.find(name)
    if start < 0:
        raise HistoryBatchError("?", f"no {name.strip().decode()} header")
    start += len(name)
    return int(headers[start : headers.index(b"\r\n", start)])


class BatchReader:
    """The messages of `subject` with after_seq < seq <= last_seq, in order, by batches."""

    def __init__(self, client: Client, stream: str, subject: str, after_seq: int, last_seq: int):
        assert 0 <= after_seq < last_seq, (after_seq, last_seq)
        assert settings.read_batch_messages_max >= 1
        self.client = client
        self.api_subject = f"$JS.API.DIRECT.GET.{stream}"
        self.subject = subject
        self.last_seq = last_seq
        self.next_seq = after_seq + 1  # where the next request starts
        self.items: collections.deque[tuple[int, bytes]] = collections.deque()
        self.wanted = False  # a batch is due once the reader has room for it
        self.finished = False  # every message up to last_seq arrived (or the rest is gone)
        self.error: HistoryBatchError | None = None
        self._reply = b""  # the inbox of the request in flight (answers to others are stale)
        self._requests = 0
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._ready: asyncio.Future[bool] | None = None

    async def open(self) -> None:
        self._inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(f"{self._inbox}.*")
        _router(self.client).handlers[self._subscription._id] = self._on_message
        await self.request()

    async def close(self) -> None:
        subscription = self._subscription
        if subscription is None:
            return
        self._subscription = None
        _router(self.client).handlers.pop(subscription._id, None)
        if not self.client.is_closed:
            await subscription.unsubscribe()

    async def request(self) -> None:
        """Ask for the next batch (answers to an earlier request are dropped from now on)."""
        self.wanted = False
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        self._reply = reply.encode()
        body = {
            "seq": self.next_seq, "next_by_subj": self.subject, "up_to_seq": self.last_seq,
            "batch": settings.read_batch_messages_max, "max_bytes": settings.read_batch_bytes_max,
        }  # fmt: skip
        await self.client.publish(self.api_subject, json.dumps(body).encode(), reply=reply)

    async def _on_message(self, subject: bytes, data: bytes, headers: bytes) -> None:
        if subject != self._reply or self.finished:
            return  # an answer to a request given up on
        if headers[STATUS_AT - 1 : STATUS_AT] == b" ":  # `NATS/1.0 204 EOB`, not `NATS/1.0\r\n`
            await self._on_status(headers)
        else:
            seq = header_int(headers, SEQUENCE_HEADER)
            if seq < self.next_seq:
                return  # a duplicate of a re-asked batch
            self.items.append((seq, data))
            self.next_seq = seq + 1
            if seq >= self.last_seq:
                self.finished = True
        self._wake()

    async def _on_status(self, headers: bytes) -> None:
        status = headers[STATUS_AT : STATUS_AT + 3]
        if status == END_OF_BATCH:
            if header_int(headers, PENDING_HEADER) == 0:
                self.finished = True  # the rest up to last_seq was deleted meanwhile
            elif len(self.items) <= settings.read_batch_messages_max:
                await self.request()  # pipelined: the server reads while the caller folds
            else:
                self.wanted = True
        elif status == NOT_FOUND:
            self.finished = True  # nothing left from next_seq (deleted meanwhile)
        else:
            line = headers[STATUS_AT : headers.find(b"\r\n")].decode(errors="replace")
            self.error = HistoryBatchError(self.subject, line)

    def _wake(self) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(True)

    async def wait(self, timeout_s: float) -> bool:
        """Wait until an item is there (True) or the read is over (False). A batch lost on the
        way (no answer within timeout_s) is asked for once more before TimeoutError."""
        asked_again = False
        while True:
            if self.items:
                return True
            if self.error is not None:
                raise self.error
            if self.finished:
                return False
            if self.wanted:
                await self.request()
            if not await self._sleep(timeout_s):
                if asked_again:
                    raise TimeoutError()
                asked_again = True
                await self.request()

    async def _sleep(self, timeout_s: float) -> bool:
        """False when timeout_s passed with no message."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        self._ready = ready
        expiry = loop.call_later(timeout_s, _expire, ready)
        try:
            return await ready
        finally:
            expiry.cancel()
            self._ready = None


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
