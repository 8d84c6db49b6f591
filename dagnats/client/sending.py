"""A client's commands for the engine, published until a stream acknowledges one.

A command that no stream answered (`NoStreamResponseError`: in a cluster, the commands
stream electing its leader after a node left; `TimeoutError`: no acknowledgement in time, a
server restarting) is published again under the same Nats-Msg-Id, so the stream stores it
once however many copies arrive, until `settings.command_send_ms_max` has passed; then the
last error is raised. A refusal (an `APIError` such as a wrong expected stream) is raised at
once: publishing it again would be refused again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
import nats.js.errors

from dagnats.runtime import settings
from dagnats.runtime.protocols import CommandPublisher

log = logging.getLogger("dagnats.client")

UNANSWERED = (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
              nats.errors.TimeoutError)  # fmt: skip


async def send_command(
    publisher: CommandPublisher,
    run_id: str,
    payload: bytes,
    msg_id: str,
    *,
    send_ms_max: int = settings.command_send_ms_max,
) -> int:
    """Publish until a stream acknowledges it (see the module); the publishes made."""
    assert send_ms_max > 0, send_ms_max
    deadline = time.monotonic() + send_ms_max / 1000
    delay_ms = settings.command_retry_delay_ms_min
    attempts_max = 1 + send_ms_max // settings.command_retry_delay_ms_min
    for attempt in range(1, attempts_max + 1):
        try:
            await publisher.publish_command(run_id, payload, msg_id)
            return attempt
        except UNANSWERED as error:
            if time.monotonic() + delay_ms / 1000 >= deadline:
                raise
            if attempt == 1:
                log.warning("command %s for run %s not acknowledged (%s); publishing it again "
                            "for up to %d ms", msg_id, run_id, type(error).__name__,
                            send_ms_max)  # fmt: skip
        await asyncio.sleep(delay_ms / 1000)
        delay_ms = min(delay_ms * 2, settings.command_retry_delay_ms_max)
    raise AssertionError(f"unreachable: {attempts_max} publishes within {send_ms_max} ms")
