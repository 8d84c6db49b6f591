"""A parked run: one whose history holds a message that does not decode or does not fold.

The engine leaves such a run alone (no append, no ack; the other runs go on) and every reader
of it (the client, so every CLI command on it) answers with the same readable line: which run,
at which stream sequence, and what is wrong. `decode_message` is the one door readers of a
run's history go through to get that line instead of a bare decode error.
"""

from __future__ import annotations

from typing import Final

from kernel import codec
from kernel.errors import DagnatsError, DecodeError
from kernel.events import Decision

PARKED_HINT: Final = (
    "the engine leaves this run alone; delete that message from DAGNATS_HISTORY "
    "(admin) to resume it, or start a new run; `dagnats run audit RUN_ID` shows it"
)


class RunParkedError(DagnatsError):
    """A run whose history cannot be folded, or whose decision broke an invariant."""

    hint = PARKED_HINT

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} is parked: {reason}")


def undecodable(seq: int, error: Exception) -> str:
    """The reason of a run parked on the history message at `seq`."""
    return f"history message at sequence {seq} does not decode ({error})"


def unfoldable(seq: int, error: Exception) -> str:
    return f"history message at sequence {seq} does not fold ({error})"


def decode_message(run_id: str, seq: int, data: bytes) -> Decision:
    """One history message of a run, decoded.

    Raises:
        RunParkedError: it does not decode (naming the run, the sequence and the problem).
    """
    try:
        return codec.decode_decision(data)
    except DecodeError as error:
        raise RunParkedError(run_id, undecodable(seq, error)) from None


__all__ = ["RunParkedError", "decode_message", "undecodable", "unfoldable"]
