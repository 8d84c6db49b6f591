"""The bookkeeping of a standing pull's credit (runtime/pull_credit), alone and against a model
of nats-server's wait queue: live requests served round robin (so which request a message used
is unknown), each ending at its expiry with a 408 that says what it had left, or silently once
it brought all it asked for. Under any traffic and any pauses of the fetcher, a fetcher that
asks as `CommandPull` does is never without a request while messages wait, and what the
server holds for it stays within the bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.runtime.pull_credit import (
    PullCredit,
    credit_bound_share,
    expiry_grace_ms,
    requests_kept_max,
)

CREDIT = 8
EXPIRES_MS = 2_000
COVER_MS = 500
TICK_S = 0.01


def test_a_fresh_pull_asks_for_its_whole_credit_then_not_again_until_half_is_used() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    assert credit.wanted(0.0, COVER_MS) == CREDIT
    credit.asked(CREDIT, 0.0)
    for used in range(CREDIT // 2 - 1):
        credit.delivered()
        assert credit.wanted(0.1, COVER_MS) == 0, used
    credit.delivered()  # half of it used: ask for what came
    assert credit.pending == CREDIT // 2
    assert credit.wanted(0.1, COVER_MS) == CREDIT // 2


def test_a_request_about_to_expire_is_renewed_beside_it_and_its_408_says_what_it_had() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    assert credit.wanted(1.0, COVER_MS) == 0  # lasts 1 s more: covers a 0.5 s wait
    assert credit.wanted(1.6, COVER_MS) == CREDIT  # ends within the wait: one beside it
    credit.asked(CREDIT, 1.6)
    credit.delivered()  # (from either: the server serves them round robin)
    credit.expired(CREDIT - 1, 2.0)  # the first one's 408: it had 7 left, so the one came
    assert credit.pending == CREDIT  # from it, and the second still has all it asked
    assert credit.live == 1


def test_deliveries_served_round_robin_are_booked_right_by_the_408() -> None:
    """Two requests live (a renewal): the server gives one message to each, round robin; the
    first one's 408 says it had 7 left, so 7 are still to come, all from the second."""
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    credit.asked(CREDIT, 1.6)
    credit.delivered()
    credit.delivered()
    credit.expired(CREDIT - 1, 2.0)
    assert credit.pending == CREDIT - 1
    for _ in range(CREDIT - 1):  # the second is used up (it ends without a status)
        credit.delivered()
    assert credit.pending == 0 and credit.wanted(2.1, COVER_MS) == CREDIT


def test_a_408_of_a_request_already_forgotten_changes_nothing() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    credit.reset()  # (a reconnect)
    credit.asked(CREDIT, 0.5)
    credit.expired(CREDIT, 2.0)  # the old request's end: the new one expires at 2.5
    assert (credit.pending, credit.live) == (CREDIT, 1)


def test_an_expiry_without_its_status_is_forgotten_after_the_grace() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    ends = EXPIRES_MS / 1000
    assert credit.wanted(ends - 0.1, 0) == 0
    assert credit.wanted(ends + expiry_grace_ms / 2000, 0) == CREDIT  # expired: ask again
    assert credit.pending == CREDIT  # (its 408 may still come)
    assert credit.wanted(ends + expiry_grace_ms / 1000, 0) == CREDIT
    assert (credit.pending, credit.live) == (0, 0)


def test_requests_kept_are_bounded() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    for n in range(requests_kept_max * 3):  # each used up at once (ends without a status)
        credit.asked(CREDIT, n * 0.001)
        for _ in range(CREDIT):
            credit.delivered()
    assert credit.live == requests_kept_max and credit.pending == 0


def test_a_408_that_does_not_say_what_was_left_forgets_everything() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    credit.expired(None, 2.0)
    assert (credit.pending, credit.live) == (0, 0)


@dataclass
class Server:
    """nats-server's wait queue for one inbox: [left, expiry] served round robin."""

    requests: list[list[float]] = field(default_factory=list)
    waiting: int = 0  # messages stored, not yet delivered
    inbox: list[int | None] = field(default_factory=list)  # None: a message; int: a 408

    def tick(self, now: float, lose_408: bool) -> None:
        for request in list(self.requests):
            if request[1] <= now:
                self.requests.remove(request)
                if not lose_408:
                    self.inbox.append(int(request[0]))
        while self.waiting and self.requests:
            request = self.requests.pop(0)
            request[0] -= 1
            self.waiting -= 1
            self.inbox.append(None)
            if request[0] > 0:  # (one that brought all it asked ends without a status)
                self.requests.append(request)

    def credit(self) -> int:
        return int(sum(request[0] for request in self.requests))


def ask(credit: PullCredit, server: Server, now: float, cover_ms: int) -> None:
    count = credit.wanted(now, min(cover_ms, EXPIRES_MS // 2))
    if count:
        credit.asked(count, now)
        server.requests.append([count, now + EXPIRES_MS / 1000 + 0.001])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.integers(1, 80), st.integers(1, 300), st.integers(0, 150)),
        min_size=1, max_size=12,
    ),
    st.sets(st.integers(0, 3_000), max_size=3),
)  # fmt: skip
def test_against_round_robin_a_fetcher_is_never_left_without_a_request(
    phases: list[tuple[int, int, int, int]], lost_408_ticks: set[int]
) -> None:
    """Phases of (messages, every so many ticks, ticks, ticks the fetcher then stays away)
    (sparse traffic lets requests reach their expiry two at a time); a few 408s
    lost. While the fetcher waits and messages wait on the server, a request of its is there
    (within a tick, or the grace after a lost 408); the server never holds more than the
    bound; the credit booked is never below what the server holds, unless a 408 was lost."""
    credit, server = PullCredit(CREDIT, EXPIRES_MS), Server()
    now, tick, starved = 0.0, 0, 0
    for rate, every, ticks, away in phases:
        for step in range(ticks + away):
            server.waiting += rate if step < ticks and step % every == 0 else 0
            server.tick(now, lose_408=tick in lost_408_ticks)
            fetching = step < ticks  # (away: busy, at its in-flight limit)
            if fetching:  # as CommandPull.fetch: what came first, then ask
                for item in server.inbox:
                    if item is None:
                        credit.delivered()
                    else:
                        credit.expired(item, now)
                server.inbox.clear()
                ask(credit, server, now, COVER_MS)
                starved = starved + 1 if server.waiting and not server.requests else 0
                assert starved * TICK_S <= (EXPIRES_MS + expiry_grace_ms) / 1000 + TICK_S
                if not lost_408_ticks:
                    assert starved == 0, (now, credit.pending, server.requests)
                    assert credit.pending <= server.credit(), (credit.pending, server.requests)
            assert server.credit() <= CREDIT * (credit_bound_share + 1), server.requests
            assert 0 <= credit.pending <= CREDIT * (credit_bound_share + 1)
            assert credit._asked == sum(asked for asked, _ in credit._requests)
            now += TICK_S
            tick += 1
