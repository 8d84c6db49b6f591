"""A standing pull of one durable consumer, read as nats-py messages (the engine's commands).

`fetch` asks for `credit_max` messages in one pull request that stays on the server
(`standing_pull_expiry_ms`) and asks again only when half of that credit is used or no request
would last the wait (runtime/pull_credit): a busy engine sends a pull request per ~128
commands, an idle one a request every few seconds, where a long poll per fetch cost a request
per command in a chain (and nats-server about as much CPU as storing the command). What the
requests bring waits in the subscription's inbox until a fetch takes it: after the first
message, a fetch takes what is there without waiting.

Statuses: a 408 ends the oldest request (its credit is gone); a 409 (a conflict: the consumer
was deleted or changed leader, the server shut down, too many waiting requests) forgets every
request, as a reconnect does (js_publish.listen), and is asked again once in a waiting fetch
(a second ends it with what came); what the inbox held at a reconnect came from before it, and
a status among it ends no request of now's. Any other status raises `APIError` when nothing
came before it (nats-py's fetch does the same).

This module publishes pull requests and naks what it gives back; it decodes no payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from dagnats.runtime import js_publish, settings
from dagnats.runtime.pull_credit import PullCredit
from dagnats.runtime.task_polls import reply_fields


class CommandPull:
    """Fetches of `subscription`'s consumer through standing pull requests of up to
    `credit_max` messages each."""

    def __init__(
        self,
        subscription: JetStreamContext.PullSubscription,
        *,
        credit_max: int,
        expires_ms: int = settings.standing_pull_expiry_ms,
    ) -> None:
        assert 1 <= credit_max <= settings.fetch_batch_max, credit_max
        self.subscription = subscription
        self.credit = PullCredit(credit_max, expires_ms)
        self.requests = 0  # pull requests sent, in all
        self._stale = 0  # messages in the inbox at the last reconnect, not yet taken
        js_publish.listen(subscription._nc, self)

    def connection_lost(self) -> None:
        pass  # (the requests may live on in the server: they are forgotten at the reconnect)

    def connection_back(self) -> None:
        """A restarted server has none of the requests: ask again. What the inbox holds came
        before (a status there, such as a 409 "Server Shutdown", ends no request of now's)."""
        self.credit.reset()
        self._stale = self.subscription._sub._pending_queue.qsize()

    async def fetch(self, batch: int, timeout_ms: int) -> list[Msg]:
        """Up to `batch` messages, waiting at most timeout_ms for the first; [] if none came.

        Raises:
            nats.js.errors.APIError: the server answered with an error status (not a 408,
                409 or heartbeat) before any message came.
            nats.errors.ConnectionClosedError: the connection is closed.
        """
        assert 1 <= batch <= settings.fetch_batch_max, batch
        assert 0 < timeout_ms <= settings.fetch_timeout_ms_max, timeout_ms
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        await self._ask(loop.time(), timeout_ms)
        inbox = self.subscription._sub
        messages: list[Msg] = []
        conflicts = 0
        while len(messages) < batch:
            message = await self._next(inbox, messages, deadline)
            if message is None:
                break  # (nothing more waiting, or the time is up)
            stale = self._stale > 0  # came before the last reconnect: no request of now's
            self._stale -= stale
            status = JetStreamContext.is_status_msg(message)
            if not status:
                if not stale:
                    self.credit.delivered()
                messages.append(message)
                continue
            if stale or status == api.StatusCode.CONTROL_MESSAGE:
                continue  # (an idle heartbeat, or an end of a request gone with a reconnect)
            if status == api.StatusCode.REQUEST_TIMEOUT:
                self.credit.expired()
            elif status == api.StatusCode.CONFLICT and not messages and conflicts == 0:
                conflicts += 1  # (asked again once: the wait goes on under a new request)
                self.credit.reset()
            else:
                self.credit.reset()
                if status == api.StatusCode.CONFLICT or messages:
                    break  # (what came is handled; the next fetch asks again)
                raise nats.js.errors.APIError.from_msg(message)
            if not messages:  # the wait goes on under a request
                await self._ask(loop.time(), max(int((deadline - loop.time()) * 1000), 1))
        return messages

    async def _next(self, inbox: Subscription, taken: list[Msg], deadline: float) -> Msg | None:
        """The first message within the deadline; after it, what is in the inbox, and what the
        last one taken says still waits (its pending count, while the credit covers it): on
        its way, it is waited for, at most standing_pull_more_wait_ms."""
        if not taken:
            return await next_message(inbox, deadline)
        message = _take(inbox)
        if message is not None or self.credit.pending <= 0:
            return message
        fields = reply_fields(taken[-1].reply)
        if fields is None or fields[2] <= 0:
            return None
        more_s = settings.standing_pull_more_wait_ms / 1000
        return await next_message(inbox, min(deadline, asyncio.get_running_loop().time() + more_s))

    async def _ask(self, now: float, cover_ms: int) -> None:
        # (a wait longer than half a request's life is covered by asking again at its 408)
        cover_ms = min(cover_ms, self.credit.expires_ms // 2)
        count = self.credit.wanted(now, cover_ms + settings.fetch_expiry_margin_ms_min)
        if count <= 0:
            return
        expires_ns = self.credit.expires_ms * 1_000_000
        request = json.dumps({"batch": count, "expires": expires_ns}).encode()
        subscription = self.subscription
        await subscription._nc.publish(subscription._nms, request, subscription._deliver)
        self.credit.asked(count, now)
        self.requests += 1

    async def give_back(self) -> int:
        """Nak what came and no fetch took (another engine takes it at once); how many."""
        given = 0
        inbox = self.subscription._sub
        while (message := _take(inbox)) is not None:
            if not JetStreamContext.is_status_msg(message):
                await message.nak()
                given += 1
        self.credit.reset()
        self._stale = 0
        return given


def _take(inbox: Subscription) -> Msg | None:
    """The inbox's next message if one is there, without waiting."""
    queue = inbox._pending_queue
    if queue.empty():
        return None
    message = queue.get_nowait()
    inbox._pending_size -= len(message.data)
    queue.task_done()
    return message


async def next_message(inbox: Subscription, deadline: float) -> Msg | None:
    """The inbox's next message by `deadline` (loop time; None: none came), as
    `Subscription.next_msg` without its per-call tasks. A closed connection raises within
    fetch_closed_check_ms (next_msg's wait was cancelled at the close).

    Raises:
        nats.errors.ConnectionClosedError: the connection is closed.
    """
    queue = inbox._pending_queue
    loop = asyncio.get_running_loop()
    message: Msg | None = None
    while message is None:
        if inbox._conn.is_closed:
            raise nats.errors.ConnectionClosedError
        if not queue.empty():
            message = queue.get_nowait()
            break
        left_s = deadline - loop.time()
        if left_s <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left_s, settings.fetch_closed_check_ms / 1000)):
                message = await queue.get()
    inbox._pending_size -= len(message.data)
    queue.task_done()
    return message


__all__ = ["CommandPull", "next_message"]
