"""The bookkeeping of a standing pull's credit (runtime/pull_credit)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dagnats.runtime.pull_credit import PullCredit, expiry_grace_ms, requests_max

CREDIT = 8
EXPIRES_MS = 2_000
COVER_MS = 500


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


def test_a_request_about_to_expire_is_renewed_so_a_wait_is_never_without_one() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    assert credit.wanted(1.0, COVER_MS) == 0  # lasts 1 s more: covers a 0.5 s wait
    assert credit.wanted(1.6, COVER_MS) == CREDIT  # ends within the wait: one beside it
    credit.asked(CREDIT, 1.6)
    assert credit.wanted(1.6, COVER_MS) == 0  # requests_max live
    credit.expired()  # the first one's 408
    assert credit.pending == CREDIT


def test_an_expiry_without_its_status_is_forgotten_after_the_grace() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    ends = EXPIRES_MS / 1000
    assert credit.wanted(ends - 0.1, 0) == 0
    assert credit.pending == CREDIT
    assert credit.wanted(ends + expiry_grace_ms / 2000, 0) == CREDIT  # expired: ask again
    assert credit.pending == CREDIT  # (its 408 may still come)
    assert credit.wanted(ends + expiry_grace_ms / 1000, 0) == CREDIT
    assert credit.pending == 0


def test_a_reset_forgets_every_request() -> None:
    credit = PullCredit(CREDIT, EXPIRES_MS)
    credit.asked(CREDIT, 0.0)
    credit.reset()
    assert credit.pending == 0
    assert credit.wanted(0.0, COVER_MS) == CREDIT


@given(
    st.lists(
        st.tuples(st.sampled_from(("ask", "deliver", "expire", "reset", "tick")),
                  st.integers(0, 3_000)),
        max_size=60,
    )
)
def test_what_is_pending_stays_within_what_was_asked(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever comes in whatever order, pending is never negative nor above what the live
    requests asked, and never more than requests_max requests live."""
    credit = PullCredit(CREDIT, EXPIRES_MS)
    now = 0.0
    for action, value in steps:
        if action == "ask":
            count = credit.wanted(now, COVER_MS)
            if count:
                credit.asked(count, now)
        elif action == "deliver":
            credit.delivered()
        elif action == "expire":
            credit.expired()
        elif action == "reset":
            credit.reset()
        else:
            now += value / 1000
        assert 0 <= credit.pending <= requests_max * CREDIT
        assert len(credit._requests) <= requests_max
