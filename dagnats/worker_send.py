"""A worker's command for its task (a result, a lost attempt, `TaskStarted`), published until
the server acknowledges it (`send_until_acked`), or `ResultNotSentError` past its bound.

The first publish is made here, without the resend loop of runtime/resend.py: almost every
result is acknowledged at once, and that loop's set-up (its coroutine, its bounds, its
callbacks) was a good part of a no-op task's Python work in the worker. A publish that fails
is made again as `publish_until_acked` would have made it: the same pauses (doubling from
`delay_ms_min` to `delay_ms_max`), the same bound from the first publish (`send_ms_max`, or
the caller's `cut_off()` loop time when that comes first: a draining worker's results' bound,
dagnats/worker_drain.py), the same errors raised at once (`DagnatsError`: too large, no retry
helps).

This module publishes through the function it is given, and logs; nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dagnats.runtime.resend import NotAcknowledgedError, publish_until_acked
from kernel.errors import DagnatsError


class ResultNotSentError(DagnatsError):
    """A result the server did not acknowledge within its bound (the task comes back)."""

    def __init__(self, msg_id: str, tries: int, waited_ms: int, last_error: str) -> None:
        self.msg_id = msg_id
        self.tries = tries
        super().__init__(
            f"gave up sending {msg_id} after {tries} tries in {waited_ms} ms (last error: "
            f"{last_error}); the task will be delivered again and reported lost"
        )


async def send_until_acked(
    publish: Callable[[], Awaitable[object]],
    msg_id: str,
    *,
    send_ms_max: int,
    cut_off: Callable[[], float],
    delay_ms_min: int,
    delay_ms_max: int,
    log: logging.Logger,
) -> int:
    """Publish until acknowledged (see the module); the publishes made.

    Raises:
        ResultNotSentError: none acknowledged within `send_ms_max` of the first (or by
            `cut_off()`).
        DagnatsError: the command cannot be sent at all.
    """
    assert send_ms_max > 0 and 0 < delay_ms_min <= delay_ms_max, (send_ms_max, delay_ms_min)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await publish()
        return 1
    except DagnatsError:
        raise
    except Exception as error:
        first = error
    give_up_at = started + send_ms_max / 1000

    def deadline() -> float:
        return min(give_up_at, cut_off())

    left_s = deadline() - loop.time()
    if left_s <= 0:
        waited_ms = int((loop.time() - started) * 1000)
        raise ResultNotSentError(msg_id, 1, waited_ms, described(first))
    log.warning("%s not acknowledged (%s); sending it again until it is", msg_id, described(first))
    await asyncio.sleep(min(delay_ms_min / 1000, left_s))
    try:
        tries = await publish_until_acked(
            publish, send_ms_max=send_ms_max, retry_on=(Exception,), never=(DagnatsError,),
            cut_off=deadline, delay_ms_min=min(2 * delay_ms_min, delay_ms_max),
            delay_ms_max=delay_ms_max,
        )  # fmt: skip
    except NotAcknowledgedError as gave_up:
        waited_ms = int((loop.time() - started) * 1000)
        raise ResultNotSentError(
            msg_id, gave_up.tries + 1, waited_ms, described(gave_up.last)
        ) from None
    return tries + 1


def described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)
