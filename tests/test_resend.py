"""The shared publish-again loop (dagnats/runtime/resend.py): the publishes made, its bound,
the caller's cut-off, and the errors it never retries."""

from __future__ import annotations

import asyncio

import pytest

from dagnats.runtime.resend import NotAcknowledgedError, publish_until_acked
from kernel.errors import DagnatsError


class UnansweredError(Exception):
    pass


class Publisher:
    """Fails with `errors` in turn, then acknowledges."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


async def test_a_publish_failing_twice_is_acknowledged_on_the_third() -> None:
    publish = Publisher(UnansweredError(), UnansweredError())
    first: list[BaseException] = []
    tries = await publish_until_acked(
        publish, send_ms_max=10_000, retry_on=(UnansweredError,), delay_ms_min=1, delay_ms_max=2,
        on_first_retry=first.append,
    )  # fmt: skip
    assert tries == publish.calls == 3 and len(first) == 1


async def test_the_bound_gives_up_with_the_last_error_and_the_tries() -> None:
    publish = Publisher(*(UnansweredError(str(n)) for n in range(1_000)))
    with pytest.raises(NotAcknowledgedError) as gave_up:
        await publish_until_acked(
            publish, send_ms_max=50, retry_on=(UnansweredError,), delay_ms_min=5, delay_ms_max=10
        )
    assert gave_up.value.tries == publish.calls > 1
    assert str(gave_up.value.last) == str(publish.calls - 1)  # the last publish's error
    assert publish.calls <= 2 + 50 // 5  # bounded


async def test_a_cut_off_passed_ends_it_at_the_next_failure() -> None:
    publish = Publisher(UnansweredError(), UnansweredError())
    past = asyncio.get_running_loop().time() - 1
    with pytest.raises(NotAcknowledgedError) as gave_up:
        await publish_until_acked(
            publish, send_ms_max=60_000, retry_on=(Exception,), delay_ms_min=1,
            delay_ms_max=1, cut_off=lambda: past,
        )  # fmt: skip
    assert gave_up.value.tries == publish.calls == 1


@pytest.mark.parametrize("error", [DagnatsError("too large"), ValueError("refused")])
async def test_an_error_not_retried_is_raised_at_once(error: Exception) -> None:
    publish = Publisher(error)
    with pytest.raises(type(error)):
        await publish_until_acked(
            publish, send_ms_max=60_000, retry_on=(UnansweredError, DagnatsError),
            never=(DagnatsError,), delay_ms_min=1, delay_ms_max=1,
        )  # fmt: skip
    assert publish.calls == 1
