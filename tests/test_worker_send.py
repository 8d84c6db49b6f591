"""A worker's command sent until acknowledged (dagnats/worker_send.py): the first publish made
outside the resend loop, and a failing one made again with the loop's pauses, bound and
errors (the bound counted from the first publish)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dagnats.worker_send import ResultNotSentError, send_until_acked
from kernel.errors import DagnatsError

log = logging.getLogger("test.worker_send")


class UnansweredError(Exception):
    pass


class Publisher:
    """Fails with `errors` in turn, then acknowledges; the loop time of each publish kept."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.at: list[float] = []

    async def __call__(self) -> None:
        self.at.append(asyncio.get_running_loop().time())
        if self.errors:
            raise self.errors.pop(0)


def never() -> float:
    return float("inf")


async def test_an_acknowledged_first_publish_is_one_try() -> None:
    publish = Publisher()
    tries = await send_until_acked(
        publish, "result:r:s:1", send_ms_max=1_000, cut_off=never, delay_ms_min=1,
        delay_ms_max=2, log=log,
    )  # fmt: skip
    assert tries == len(publish.at) == 1


async def test_failed_publishes_are_made_again_with_doubling_pauses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish = Publisher(UnansweredError(), UnansweredError(), UnansweredError())
    with caplog.at_level(logging.WARNING, logger=log.name):
        tries = await send_until_acked(
            publish, "result:r:s:1", send_ms_max=10_000, cut_off=never, delay_ms_min=20,
            delay_ms_max=1_000, log=log,
        )  # fmt: skip
    assert tries == len(publish.at) == 4
    pauses = [later - earlier for earlier, later in zip(publish.at, publish.at[1:], strict=False)]
    # as publish_until_acked pauses from the first failure on: 20 ms, 40 ms, 80 ms (at least;
    # a timer may fire within the clock's resolution of its time)
    bounds = (0.02, 0.04, 0.08)
    assert all(p >= b - 0.001 for p, b in zip(pauses, bounds, strict=True)), pauses
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "result:r:s:1 not acknowledged" in warnings[0], warnings


async def test_the_bound_counts_from_the_first_publish() -> None:
    publish = Publisher(*(UnansweredError(str(n)) for n in range(1_000)))
    with pytest.raises(ResultNotSentError) as gave_up:
        await send_until_acked(
            publish, "result:r:s:1", send_ms_max=60, cut_off=never, delay_ms_min=5,
            delay_ms_max=10, log=log,
        )  # fmt: skip
    assert gave_up.value.tries == len(publish.at) > 1
    assert len(publish.at) <= 2 + 60 // 5  # pauses of 5 ms at least, within 60 ms of the first
    assert f"last error: UnansweredError: {len(publish.at) - 1}" in str(gave_up.value)


async def test_a_cut_off_passed_gives_up_at_the_first_failure() -> None:
    publish = Publisher(UnansweredError(), UnansweredError())
    past = asyncio.get_running_loop().time() - 1
    with pytest.raises(ResultNotSentError) as gave_up:
        await send_until_acked(
            publish, "result:r:s:1", send_ms_max=60_000, cut_off=lambda: past,
            delay_ms_min=1, delay_ms_max=1, log=log,
        )  # fmt: skip
    assert gave_up.value.tries == len(publish.at) == 1


async def test_a_dagnats_error_is_raised_at_once() -> None:
    publish = Publisher(DagnatsError("too large"))
    with pytest.raises(DagnatsError, match="too large"):
        await send_until_acked(
            publish, "result:r:s:1", send_ms_max=60_000, cut_off=never, delay_ms_min=1,
            delay_ms_max=1, log=log,
        )  # fmt: skip
    assert len(publish.at) == 1
