"""Whether the history stream is there, and the one clear error when it is not.

The history stream is the only source of truth. If it is deleted (by hand, or by a process that
should not have been able to), nothing may quietly create an empty one in its place: serve
reports it once and stops its engine until the stream is back (restored), and every client
command answers with the same line. "Gone" means: the commands stream exists but the history
stream does not (resources are created history first, so a fresh server has neither).
"""

from __future__ import annotations

from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from dagnats.runtime.resources import COMMANDS_STREAM, HISTORY_STREAM
from kernel.errors import DagnatsError

HISTORY_GONE_MESSAGE: Final = "the history stream is gone: restore it or start a new data dir"
HISTORY_GONE_HINT: Final = (
    f"restore {HISTORY_STREAM} from a backup (`nats stream restore`) while serve runs, "
    "or pass another --data-dir"
)
history_check_interval_ms: Final = 1_000  # how often serve checks that the stream is there


class HistoryStreamGoneError(DagnatsError):
    """The history stream was deleted; nothing is decided or read until it is restored."""

    hint = HISTORY_GONE_HINT

    def __init__(self) -> None:
        super().__init__(HISTORY_GONE_MESSAGE)


async def _exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def history_gone(js: JetStreamContext) -> bool:
    """True when the commands stream exists and the history stream does not.

    Raises:
        nats.errors.Error: the server did not answer (not a verdict on the stream).
    """
    if await _exists(js, HISTORY_STREAM):
        return False
    return await _exists(js, COMMANDS_STREAM)


async def check_history(js: JetStreamContext) -> None:
    """Raise HistoryStreamGoneError when the history stream is gone (see `history_gone`)."""
    if await history_gone(js):
        raise HistoryStreamGoneError


__all__ = [
    "HISTORY_GONE_MESSAGE",
    "HistoryStreamGoneError",
    "check_history",
    "history_check_interval_ms",
    "history_gone",
]  # fmt: skip
