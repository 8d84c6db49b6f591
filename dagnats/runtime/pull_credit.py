"""The credit of a standing pull: what the pull requests still on the server may bring.

A pull request asks a durable consumer for up to `batch` messages and stays on the server
until it brought them all or expired. A request per message costs nats-server about as much
again as storing, delivering and acknowledging that message (measured on a bare server:
~280-340 us of its CPU per message with a request each, ~180-200 us with one request standing
for many); a standing pull asks for many at once and asks again only when what is left of its
credit runs low (`credit_max // 2`) or its newest request is about to expire.

nats-server answers the requests of one inbox oldest first and ends one that expired before it
brought everything with a 408 status; requests of one pull all expire after the same time, so
the oldest live request is the one a message or a 408 belongs to. `PullCredit` keeps the live
requests in that order (count still to come, expiry), so what is pending is known without
asking the server. A request whose expiry passed without its 408 (a status lost with the
connection, a restarted server) is dropped after `expiry_grace_ms`; a reconnect or an
unexpected status drops them all (`reset`): the next fetch asks again. Over-asking is bounded:
at most `requests_max` requests live here, each for at most `credit_max`, each gone from the
server by its expiry.

Pure bookkeeping: no I/O, no clock of its own (the caller passes loop time).
"""

from __future__ import annotations

from collections import deque
from typing import Final

requests_max: Final = 2  # live pull requests of one standing pull
expiry_grace_ms: Final = 1_000  # after a request's expiry, before it counts as gone unanswered


class PullCredit:
    """The live pull requests of one standing pull, oldest first: [still to come, expiry]."""

    __slots__ = ("_requests", "credit_max", "expires_ms")

    def __init__(self, credit_max: int, expires_ms: int) -> None:
        assert credit_max >= 1, credit_max
        assert expires_ms > 0, expires_ms
        self.credit_max = credit_max
        self.expires_ms = expires_ms
        self._requests: deque[list[float]] = deque()

    @property
    def pending(self) -> int:
        """Messages the live requests may still bring."""
        return int(sum(request[0] for request in self._requests))

    def wanted(self, now: float, cover_ms: int) -> int:
        """How many messages to ask for now (0: no request): the rest of `credit_max` when
        half of it or less stays pending through a wait of `cover_ms` (what requests that
        expire within it may bring does not count: a wait is never without a request)."""
        self._expire(now)
        if len(self._requests) >= requests_max:
            return 0
        covered_until = now + cover_ms / 1000
        lasting = int(sum(count for count, expiry in self._requests if expiry > covered_until))
        if lasting > self.credit_max // 2:
            return 0
        return self.credit_max - lasting

    def asked(self, count: int, now: float) -> None:
        """A request for `count` messages was sent at `now`."""
        assert 1 <= count <= self.credit_max, count
        assert len(self._requests) < requests_max
        self._requests.append([count, now + self.expires_ms / 1000])

    def delivered(self) -> None:
        """A message came: the oldest live request brought it."""
        if not self._requests:
            return  # (a request dropped here came through after all: nothing to count)
        oldest = self._requests[0]
        oldest[0] -= 1
        if oldest[0] <= 0:
            self._requests.popleft()

    def expired(self) -> None:
        """A 408 came: the oldest live request ended with what it brought."""
        if self._requests:
            self._requests.popleft()

    def reset(self) -> None:
        """Forget every request (a reconnect, an unexpected status): the next fetch asks."""
        self._requests.clear()

    def _expire(self, now: float) -> None:
        grace_s = expiry_grace_ms / 1000
        while self._requests and self._requests[0][1] + grace_s <= now:
            self._requests.popleft()


__all__ = ["PullCredit", "expiry_grace_ms", "requests_max"]
