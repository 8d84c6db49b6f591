"""projections/: consumers of the history stream, rebuilt from it at any time.

What lives here: `base.py` (the projection protocol and checkpointed catch-up), `snapshot.py`
(KV run snapshots: state plus last sequence, which the engine and client load before the
tail), `sqlite.py` (query tables). Users write their own projections on `base.py`.

Imports: `kernel` only (its formats, codec and reducer); `dagnats` runs these projections
(`dagnats/runtime/projector.py`) and nothing here imports it.
"""
