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

Test seams, read by `dagnats serve` only (`serve_compaction`), for end-to-end tests against a
real serve process: `$DAGNATS_TEST_ADMISSION_COMPACT_AFTER` (an integer >= 2) replaces
`admission_compact_after`, so a test compacts after a few runs; with
`$DAGNATS_TEST_ADMISSION_HOLD_BEFORE_PURGE` naming a file, the first purge of the process
writes "<aggregate id> <seq>" there and waits (at most `purge_hold_max_s`) before purging, so a
test can SIGKILL serve between a snapshot and its purge. Nothing else reads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

from nats.js.client import JetStreamContext

from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from dagnats.runtime.settings import admission_compact_after, run_cache_max

log = logging.getLogger("dagnats.admission")

Purge = Callable[[str, int], Awaitable[None]]  # (aggregate id, first sequence to keep)

COMPACT_AFTER_ENV: Final = "DAGNATS_TEST_ADMISSION_COMPACT_AFTER"  # test seams (see above)
HOLD_BEFORE_PURGE_ENV: Final = "DAGNATS_TEST_ADMISSION_HOLD_BEFORE_PURGE"
purge_hold_max_s: Final = 120.0  # a held purge goes on after this (nobody killed serve)


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

    async def after_append(
        self,
        aggregate_id: str,
        snapshot: Callable[[], Awaitable[int | None]],
        count: Callable[[str], None],
    ) -> None:
        """One more message of the aggregate appended: when a snapshot is due, append it
        (`snapshot` gives its sequence, None when it appended nothing) and purge below it.
        Compaction is a saving, never a reason to fail the decision it follows."""
        if not self.appended(aggregate_id):
            return
        # Counted from now: an append racing this one (the gate's lock is not held here) is
        # not due too, so one snapshot is made, and a failed one is tried again `after`
        # messages on, not at every one.
        self.snapshotted(aggregate_id)
        try:
            seq = await snapshot()
        except AssertionError:
            raise  # a broken invariant is never a compaction detail
        except Exception as error:  # e.g. a snapshot over the server's max payload
            log.warning("admission %s: no snapshot: %s", aggregate_id, error)
            count("snapshot_failures")
            return
        if seq is None:
            return
        count("snapshots")
        await self.purge_below(aggregate_id, seq)

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


def compact_after_from_env(env: Mapping[str, str]) -> int | None:
    """`$DAGNATS_TEST_ADMISSION_COMPACT_AFTER` (None when unset).

    Raises:
        ValueError: it is set and not an integer >= 2.
    """
    text = env.get(COMPACT_AFTER_ENV, "").strip()
    if not text:
        return None
    after = int(text) if text.isdigit() else 0
    if after < 2:
        raise ValueError(
            f"${COMPACT_AFTER_ENV} {text!r} must be an integer >= 2 (a snapshot needs a "
            "message before it)"
        )
    return after


def serve_compaction(
    compactor: Compactor, admin: JetStreamContext | None, environ: Mapping[str, str] | None = None
) -> None:
    """Set up `dagnats serve`'s compaction: purges on its admin connection (none without
    one) and the test seams of the module's docstring.

    Raises:
        ValueError: `$DAGNATS_TEST_ADMISSION_COMPACT_AFTER` is set and not an integer >= 2.
    """
    env = os.environ if environ is None else environ
    after = compact_after_from_env(env)
    if after is not None:
        log.warning("admission: compaction after %d messages ($%s, a test seam)", after,
                    COMPACT_AFTER_ENV)  # fmt: skip
        compactor.after = after
    if admin is None:
        return
    purge = history_purger(admin)
    hold = env.get(HOLD_BEFORE_PURGE_ENV, "").strip()
    compactor.purge = purge if not hold else _held_once(purge, Path(hold))


def _held_once(purge: Purge, marker: Path) -> Purge:
    """`purge`, the first call of which writes `marker` and waits before purging."""
    held = False

    async def held_purge(aggregate_id: str, seq: int) -> None:
        nonlocal held
        if not held:
            held = True
            log.warning("admission %s: purge below %d held ($%s, a test seam)", aggregate_id,
                        seq, HOLD_BEFORE_PURGE_ENV)  # fmt: skip
            written = marker.with_name(marker.name + ".tmp")  # (renamed: never read half)
            written.write_text(f"{aggregate_id} {seq}\n")
            written.replace(marker)
            await asyncio.sleep(purge_hold_max_s)  # (the test kills serve meanwhile)
        await purge(aggregate_id, seq)

    return held_purge
