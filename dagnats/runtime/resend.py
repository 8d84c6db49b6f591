"""Publish one message again until it is acknowledged: the client's commands
(dagnats/client/sending.py) and a worker's task results (`Worker._send`).

The caller's `publish` sends the same bytes under the same Nats-Msg-Id each time, so the
stream stores one copy however many arrive within its duplicate window. An error in
`retry_on` (and not in `never`) is followed by a pause, doubling from `delay_ms_min` up to
`delay_ms_max`, and another publish, until `send_ms_max` has passed since the first (or the
caller's `cut_off()`, a loop time, came first: a worker's drain); then `NotAcknowledgedError`
carries the last error, the publishes made and the time waited. Any other error is raised at
once: publishing it again would be refused again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class NotAcknowledgedError(Exception):
    """No publish was acknowledged within the bound; `last` is the last one's error."""

    def __init__(self, last: BaseException, tries: int, waited_ms: int) -> None:
        self.last = last
        self.tries = tries
        self.waited_ms = waited_ms
        super().__init__(f"not acknowledged after {tries} publishes in {waited_ms} ms: {last!r}")


def _no_cut_off() -> float:
    return float("inf")


async def publish_until_acked(
    publish: Callable[[], Awaitable[object]],
    *,
    send_ms_max: int,
    retry_on: tuple[type[BaseException], ...],
    delay_ms_min: int,
    delay_ms_max: int,
    never: tuple[type[BaseException], ...] = (),
    cut_off: Callable[[], float] = _no_cut_off,
    on_first_retry: Callable[[BaseException], None] | None = None,
) -> int:
    """Publish until acknowledged (see the module); the publishes made.

    Raises:
        NotAcknowledgedError: none acknowledged within `send_ms_max` (or by `cut_off()`).
    """
    assert send_ms_max > 0 and 0 < delay_ms_min <= delay_ms_max, (send_ms_max, delay_ms_min)
    loop = asyncio.get_running_loop()
    started = loop.time()
    give_up_at = started + send_ms_max / 1000
    delay_s = delay_ms_min / 1000
    # Each pause but the last is at least `delay_ms_min`; the last ends at the deadline.
    tries_max = 2 + send_ms_max // delay_ms_min
    for tries in range(1, tries_max + 1):
        try:
            await publish()
            return tries
        except never:
            raise
        except retry_on as error:
            left_s = min(give_up_at, cut_off()) - loop.time()
            if left_s <= 0:
                waited_ms = int((loop.time() - started) * 1000)
                raise NotAcknowledgedError(error, tries, waited_ms) from None
            if tries == 1 and on_first_retry is not None:
                on_first_retry(error)
            await asyncio.sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, delay_ms_max / 1000)
    raise AssertionError(f"unreachable: {tries_max} publishes within {send_ms_max} ms")
