"""The cyclic garbage collector of a long-running process (`dagnats serve`, `dagnats worker`).

What such a process holds lives long: run states, workflows, caches, connections, and the
modules it imported. What it makes per command (decoded commands, events, states, effects:
frozen msgspec Structs in tuples) is freed by reference counts as soon as it is dropped; the
collector is there only for garbage in reference cycles, which the hot path does not make.
At Python's defaults it passes over the young objects every 700 allocations net of frees
and over everything the process holds every 100 such passes or so: an engine holding 2,000
runs (`bench.throughput`) spent about a fifth of its CPU in those passes, the old
generation's most (each one walks every object held).

`settle` freezes what the process holds once it is up (imported modules, settings,
connections: moved to a generation no pass looks at again; nothing of it is freed) and
raises the thresholds to the named settings (runtime/settings.py `gc_*_threshold`): fewer,
larger passes, garbage in cycles still collected. It changes no behaviour, only when the
collector runs; serve calls it once its engine, projections and API are up, a worker once
connected.
"""

from __future__ import annotations

import gc

from dagnats.runtime import settings


def settle() -> None:
    """Freeze what the process holds now and raise the collector's thresholds."""
    gc.collect()  # (what start-up left in cycles goes now, not frozen forever)
    gc.freeze()
    gc.set_threshold(
        settings.gc_young_threshold, settings.gc_middle_threshold, settings.gc_old_threshold
    )
