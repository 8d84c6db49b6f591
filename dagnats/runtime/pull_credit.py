"""The credit of a standing pull: what the pull requests still on the server may bring.

A pull request asks a durable consumer for up to `batch` messages and stays on the server
until it brought them all or expired. A request per message is one more message for
nats-server to read, parse and queue for every message delivered; a standing pull asks for
many at once and asks again only when what is left of its credit runs low (`credit_max // 2`)
or no request would last the caller's wait.

nats-server serves the live requests of one inbox round robin, so which request a message
used is unknown here; what is known exactly is the credit in aggregate: what was asked, less
what was delivered, less what each expired request still had (its 408 says,
`Nats-Pending-Messages`). `PullCredit` books that, and keeps each request's size and expiry
only to know when it ends: a request leaves at its 408 (the oldest whose expiry passed) or,
when that status never comes (lost with the connection, a restarted server), `expiry_grace_ms`
after its expiry; the credit never exceeds what the live requests asked, and is 0 when none
is live. A request that brought all it asked for ends on the server without a status: its
entry stays until its expiry, counted as ending, not as lasting. A reconnect or an
unexpected status forgets everything (`reset`): the next fetch asks again.

Over-asking is bounded: no request is asked while the credit is `credit_max * 2` or more, so
fewer than `credit_max * 3` messages are on their way or held by the server for one pull.

Pure bookkeeping: no I/O, no clock of its own (the caller passes loop time).
"""

from __future__ import annotations

from collections import deque
from typing import Final

expiry_grace_ms: Final = 1_000  # after a request's expiry, before it counts as gone unanswered
expiry_skew_ms: Final = 50  # a 408 this early (the server's clock runs from its own receipt)
credit_bound_share: Final = 2  # asking stops at credit_max * this
# Requests kept (most have ended silently, all they asked brought, and leave at their
# expiry): beyond it the oldest is forgotten (the credit then at most what the rest asked).
requests_kept_max: Final = 64


class PullCredit:
    """The aggregate credit of one standing pull, and its live requests ([asked, expiry],
    oldest first)."""

    __slots__ = ("_asked", "_credit", "_requests", "credit_max", "expires_ms")

    def __init__(self, credit_max: int, expires_ms: int) -> None:
        assert credit_max >= 1, credit_max
        assert expires_ms > expiry_skew_ms, expires_ms
        self.credit_max = credit_max
        self.expires_ms = expires_ms
        self._requests: deque[tuple[int, float]] = deque()
        self._asked = 0  # what the kept requests asked, in all
        self._credit = 0

    @property
    def pending(self) -> int:
        """Messages the live requests may still bring (at most what they asked)."""
        return self._credit

    @property
    def live(self) -> int:
        """Requests not known to have ended."""
        return len(self._requests)

    def wanted(self, now: float, cover_ms: int) -> int:
        """How many messages to ask for now (0: no request): the rest of `credit_max` when
        half of it or less lasts through a wait of `cover_ms` (what requests expiring within
        it may still hold does not count), unless the credit is at its bound."""
        self._expire(now)
        if self._credit >= self.credit_max * credit_bound_share:
            return 0
        covered_until = now + cover_ms / 1000
        ending = 0
        for asked, expiry in self._requests:  # (oldest first: in order of expiry)
            if expiry > covered_until:
                break
            ending += asked
        lasting = max(0, self._credit - ending)
        if lasting > self.credit_max // 2:
            return 0
        return self.credit_max - lasting

    def asked(self, count: int, now: float) -> None:
        """A request for `count` messages was sent at `now`."""
        assert 1 <= count <= self.credit_max, count
        self._requests.append((count, now + self.expires_ms / 1000))
        self._asked += count
        self._credit += count
        if len(self._requests) > requests_kept_max:
            self._forget_oldest()
            self._bound()
        assert self._credit <= self.credit_max * (credit_bound_share + 1), self._credit

    def delivered(self) -> None:
        """A message came (from whichever live request)."""
        self._credit = max(0, self._credit - 1)

    def expired(self, left: int | None, now: float) -> None:
        """A 408 came at `now`: the oldest request whose expiry passed ended with `left`
        unused (its `Nats-Pending-Messages`; None: not said, then nothing is known of it and
        the credit is forgotten). A 408 of a request already forgotten changes nothing."""
        if left is None:
            self.reset()
            return
        if self._requests and self._requests[0][1] <= now + expiry_skew_ms / 1000:
            self._forget_oldest()
            self._credit = max(0, self._credit - left)
        self._bound()

    def reset(self) -> None:
        """Forget every request (a reconnect, an unexpected status): the next fetch asks."""
        self._requests.clear()
        self._asked = 0
        self._credit = 0

    def _expire(self, now: float) -> None:
        grace_s = expiry_grace_ms / 1000
        while self._requests and self._requests[0][1] + grace_s <= now:
            self._forget_oldest()
        self._bound()

    def _forget_oldest(self) -> None:
        asked, _ = self._requests.popleft()
        self._asked -= asked

    def _bound(self) -> None:
        """The credit is at most what the live requests asked (0 when none is live)."""
        self._credit = min(self._credit, self._asked)


__all__ = [
    "PullCredit", "credit_bound_share", "expiry_grace_ms", "expiry_skew_ms", "requests_kept_max",
]  # fmt: skip
