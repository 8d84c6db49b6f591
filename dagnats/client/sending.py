"""A client's commands for the engine, published until a stream acknowledges one.

A command that no stream answered (`NoStreamResponseError`: in a cluster, the commands
stream electing its leader after a node left; `TimeoutError`: no acknowledgement in time, a
server restarting) is published again under the same Nats-Msg-Id, so the stream stores it
once however many copies arrive, until `settings.command_send_ms_max` has passed (within the
commands' duplicate window: settings asserts it); then the last error is raised (the loop is
dagnats/runtime/resend.py's, shared with the worker's results). A refusal (an `APIError`
such as a wrong expected stream) is raised at once: publishing it again would be refused.
"""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors

from dagnats.runtime import settings
from dagnats.runtime.protocols import CommandPublisher
from dagnats.runtime.resend import NotAcknowledgedError, publish_until_acked

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

    def said(error: BaseException) -> None:
        log.warning("command %s for run %s not acknowledged (%s); publishing it again for up "
                    "to %d ms", msg_id, run_id, type(error).__name__, send_ms_max)  # fmt: skip

    try:
        return await publish_until_acked(
            lambda: publisher.publish_command(run_id, payload, msg_id),
            send_ms_max=send_ms_max, retry_on=UNANSWERED, on_first_retry=said,
            delay_ms_min=settings.command_retry_delay_ms_min,
            delay_ms_max=settings.command_retry_delay_ms_max,
        )  # fmt: skip
    except NotAcknowledgedError as gave_up:
        raise gave_up.last from None
