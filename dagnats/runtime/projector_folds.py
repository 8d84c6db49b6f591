"""The engine's folds, handed to the projections of the same process (serve's snapshots and
query tables), so that a history message this engine appended is neither decoded nor folded
again there.

After each successful append the engine notes `(stream sequence, run id, events, state after)`
(`SharedFolds.appended`); a projection reading the message at that sequence takes the events
and the state from here instead of decoding its bytes and evolving its own state. They are
equal by construction: the engine appended exactly those events, under the run's expected
last sequence, onto the state it had folded from the same history the projection folds. A
message not found here (another engine's, or one the bound let go) is decoded and folded as
before. The map is bounded (oldest first out) and written only by the event loop's thread;
a projection's worker thread only reads it (single dict operations).

This module reads and writes nothing outside memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from kernel.events import AnyEvent
from kernel.state import RunState

folds_shared_max: Final = 8_192  # appended messages whose events and state are kept

DecodedEvents = Callable[[int], tuple[AnyEvent, ...] | None]  # a message's events by seq


class SharedFolds:
    """Appended messages' events and states by stream sequence (bounded; see the module doc)."""

    def __init__(self, size_max: int = folds_shared_max) -> None:
        assert size_max >= 1, size_max
        self.size_max = size_max
        self._by_seq: dict[int, tuple[str, tuple[AnyEvent, ...], RunState]] = {}
        self._order: deque[int] = deque()

    def appended(
        self, seq: int, run_id: str, events: tuple[AnyEvent, ...], state: RunState
    ) -> None:
        """Note the message the engine appended at `seq` and the run's state after it."""
        assert seq > 0 and events and state.run_id == run_id, (seq, run_id, state.run_id)
        order = self._order
        self._by_seq[seq] = (run_id, events, state)
        order.append(seq)
        if len(order) > self.size_max:  # (one in, so at most one out)
            self._by_seq.pop(order.popleft(), None)
        assert len(order) <= self.size_max, "bounded"

    def state(self, seq: int, run_id: str) -> RunState | None:
        """The state of `run_id` after the message at `seq`, or None (not noted here)."""
        found = self._by_seq.get(seq)
        return found[2] if found is not None and found[0] == run_id else None

    def events_of(self, messages: Sequence[tuple[int, str, bytes]]) -> DecodedEvents:
        """The events of those `messages` noted here, by sequence (for `positioned_events`)."""
        found: dict[int, tuple[AnyEvent, ...]] = {}
        by_seq = self._by_seq
        for seq, run_id, _data in messages:
            entry = by_seq.get(seq)
            if entry is not None and entry[0] == run_id:
                found[seq] = entry[1]
        return found.get

    def __len__(self) -> int:
        return len(self._by_seq)


__all__ = ["DecodedEvents", "SharedFolds", "folds_shared_max"]
