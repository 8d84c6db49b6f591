"""Compaction of the admission aggregates' histories: gates and task limiters.

Every gate (runtime/admission.py) and task limiter (runtime/admission_flow.py) is an
aggregate on its own history subject, and every request, release, take or slot appends to
it: left alone its history grows forever. When an aggregate has appended
`admission_compact_after` messages since its last snapshot, the engine decides a snapshot
command (`admission.snapshot`, `flow.snapshot`: the aggregate's state as the kernel folds it,
appended under the expected last sequence like any decision), then purges the subject's
messages below the snapshot (JetStream purge with a subject filter and `seq`), the way an
event-sourced store keeps an aggregate's replay short. Replay from the snapshot gives the same
state (`fold(all) == fold(snapshot + rest)`), so a crash between the snapshot and the purge is
harmless: the older messages stay until the next compaction purges below its own snapshot.

The engine's role may not purge the history stream (runtime/roles.py: only admin may, and a
NATS permission cannot tell one subject's purge from another's), so the purge is serve's, on
its admin connection (`purge`, set by serve); with none set (the simulator, an engine without
the admin credential) snapshots are still appended and loads still fold correctly, but nothing
is purged. A failed purge is logged and left to the next compaction.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from nats.js.client import JetStreamContext

from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from dagnats.runtime.settings import admission_compact_after, run_cache_max

log = logging.getLogger("dagnats.admission")

Purge = Callable[[str, int], Awaitable[None]]  # (aggregate id, first sequence to keep)


class Compactor:
    """Counts each aggregate's messages since its last snapshot; purges below a snapshot."""

    def __init__(self, after: int = admission_compact_after) -> None:
        assert after >= 2, f"admission_compact_after {after}: a snapshot needs a message before"
        self.after = after
        self.purge: Purge | None = None
        self._since: OrderedDict[str, int] = OrderedDict()
        self.counters: dict[str, int] = {}

    def loaded(self, aggregate_id: str, since: int) -> None:
        """An aggregate was read from history: `since` messages follow its last snapshot."""
        self._set(aggregate_id, since)

    def appended(self, aggregate_id: str) -> bool:
        """One more message appended; whether a snapshot is due now."""
        since = self._since.get(aggregate_id, 0) + 1
        self._set(aggregate_id, since)
        return since >= self.after

    def snapshotted(self, aggregate_id: str) -> None:
        self._set(aggregate_id, 0)

    async def purge_below(self, aggregate_id: str, seq: int) -> None:
        """Purge the aggregate's messages before `seq` (its snapshot's); a failure is left to
        the next compaction (the snapshot already makes replay short and right)."""
        assert seq >= 1, seq
        if self.purge is None:
            self._count("snapshots_unpurged")
            return
        try:
            await self.purge(aggregate_id, seq)
        except Exception as error:  # (harmless: the next compaction purges below its own)
            log.warning("admission %s: purge below %d failed: %s", aggregate_id, seq, error)
            self._count("purge_failures")
            return
        self._count("purged")

    def _set(self, aggregate_id: str, since: int) -> None:
        self._since[aggregate_id] = since
        self._since.move_to_end(aggregate_id)
        while len(self._since) > run_cache_max:
            self._since.popitem(last=False)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def history_purger(admin: JetStreamContext) -> Purge:
    """The purge of an aggregate's messages below a sequence, on an admin connection."""

    async def purge(aggregate_id: str, seq: int) -> None:
        await admin.purge_stream(HISTORY_STREAM, subject=history_subject(aggregate_id), seq=seq)

    return purge
