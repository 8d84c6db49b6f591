"""Run snapshots: a run's state and the stream sequence of the last history message in it.

A snapshot is a cache. It is stored (in the `dagnats_runs` KV bucket, by `dagnats/projector.py`)
as `Snapshot` JSON carrying `schema`: a fingerprint of the `RunState` shape plus
`STATE_REVISION`, which is bumped by hand when the reducer changes meaning without changing
shape. Whoever loads a run takes the snapshot and folds only the history after `last_seq`
(`EventLog.read(run_id, after_seq=...)`); a snapshot that is missing, corrupt, of another
schema or of another run is ignored (`decode_snapshot` returns None) and the run is folded from
its whole history. Deleting the bucket loses nothing.

`SnapshotFolder` is the pure part of the snapshot projection: it folds batches of history
messages into the states of the runs they touch, never applying a message twice (a message at or
below a run's `last_seq` is a redelivery), and says which snapshots to write: a run's first
snapshot is written when it has `snapshot_every_events` new events, and every run is written
when it ends. This module may import only `kernel`, the standard library and msgspec.
"""

from __future__ import annotations

import hashlib
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from kernel import codec
from kernel.errors import DagnatsError
from kernel.events import AnyEvent, RunStarted
from kernel.state import INITIAL_STATE, RunState, is_terminal
from projections.lives import fold

SNAPSHOT_FORMAT: Final = 1
# Bump when evolve changes what a state means while RunState keeps its shape.
STATE_REVISION: Final = 1
snapshot_every_events: Final = 64  # a running run is snapshotted after this many new events
folder_runs_max: Final = 10_000  # runs whose state the snapshot projection keeps in memory

Message = tuple[int, str, bytes]
Decoded = tuple[int, str, tuple[AnyEvent, ...]]  # a history message's seq, run id and events


def _shape(kind: object, seen: set[object]) -> str:
    """A text naming every field and type reachable from `kind` (a type or annotation)."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        if kind in seen:
            return kind.__name__
        seen.add(kind)
        fields = ",".join(
            f"{field.name}:{_shape(field.type, seen)}" for field in msgspec.structs.fields(kind)
        )
        return f"{kind.__name__}{{{fields}}}"
    arguments = typing.get_args(kind)
    if arguments:
        origin = typing.get_origin(kind)
        return f"{origin}[{','.join(_shape(argument, seen) for argument in arguments)}]"
    return repr(kind)


def _schema() -> str:
    shape = _shape(RunState, set()).encode()
    digest = hashlib.blake2b(shape, digest_size=8).hexdigest()
    return f"{SNAPSHOT_FORMAT}.{STATE_REVISION}.{digest}"


SCHEMA: Final = _schema()


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A run's state after the history message at stream sequence `last_seq`."""

    schema: str
    run_id: str
    last_seq: int
    state: RunState


class _Envelope(msgspec.Struct, frozen=True, kw_only=True):
    schema: str
    run_id: str
    last_seq: int
    state: msgspec.Raw


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def make_snapshot(state: RunState, last_seq: int) -> Snapshot:
    assert last_seq > 0 and state.run_id, (state.run_id, last_seq)
    return Snapshot(schema=SCHEMA, run_id=state.run_id, last_seq=last_seq, state=state)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return codec.encode(snapshot)


def decode_snapshot(data: bytes | None, run_id: str) -> Snapshot | None:
    """The snapshot in `data` if it is usable for `run_id` under this code, else None."""
    if not data:
        return None
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    if envelope.schema != SCHEMA or envelope.run_id != run_id or envelope.last_seq <= 0:
        return None
    try:
        state = codec.decode_state(envelope.state)
    except DagnatsError:
        return None
    if state.run_id != run_id:
        return None
    return Snapshot(schema=SCHEMA, run_id=run_id, last_seq=envelope.last_seq, state=state)


class SnapshotReader(Protocol):
    """Where the engine and the client find snapshots."""

    async def get(self, run_id: str) -> Snapshot | None:
        """The run's usable snapshot, or None (missing, corrupt, old schema, unreachable)."""
        ...


@dataclass
class _Run:
    state: RunState
    last_seq: int
    written_events: int  # event_count of the last snapshot written (or loaded)


class SnapshotFolder:
    """The states of the runs a snapshot projection is folding (a bounded LRU)."""

    def __init__(
        self,
        runs_max: int = folder_runs_max,
        every_events: int = snapshot_every_events,
        folded: Callable[[int, str], RunState | None] | None = None,
    ):
        """`folded(seq, run_id)`: the run's state after the message at `seq` as its writer
        folded it (the engine of this process), taken instead of evolving its events; None
        where it is not known."""
        assert runs_max >= 1 and every_events >= 1
        self.folded = folded
        self.runs_max = runs_max
        self.every_events = every_events
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._seeded: set[str] = set()  # loaded for this batch: perhaps ahead of their snapshot
        self.problems: list[str] = []

    def clear(self) -> None:
        self._runs.clear()
        self._seeded.clear()

    def knows(self, run_id: str) -> bool:
        return run_id in self._runs

    def seed(self, run_id: str, state: RunState, last_seq: int, *, stored: Snapshot | None) -> None:
        """Start folding a run from `state` (after `last_seq`), loaded from the `stored`
        snapshot (None: there was none) plus the history after it."""
        written = stored.state.event_count if stored is not None else -1
        self._runs[run_id] = _Run(state, last_seq, written)
        self._runs.move_to_end(run_id)
        self._seeded.add(run_id)

    def to_load(self, decoded: Iterable[Decoded]) -> list[str]:
        """Runs of the batch that are not in memory and do not start in it: their state must be
        loaded (snapshot + tail) before `apply`. Runs that start in the batch are seeded."""
        needed: list[str] = []
        for _seq, run_id, events in decoded:
            if run_id in self._runs or run_id in needed:
                continue
            if events and isinstance(events[0], RunStarted):
                self.seed(run_id, INITIAL_STATE, 0, stored=None)
            else:
                needed.append(run_id)
        return needed

    def apply(self, decoded: Iterable[Decoded]) -> list[Snapshot]:
        """Fold the batch (skipping redeliveries) and return the snapshots now due."""
        touched = {run_id: self._runs[run_id] for run_id in self._seeded if run_id in self._runs}
        self._seeded.clear()
        for seq, run_id, events in decoded:
            run = self._runs.get(run_id)
            if run is None or seq <= run.last_seq:
                continue  # not loadable (named in problems), or a redelivery
            shared = self.folded(seq, run_id) if self.folded is not None else None
            if shared is not None and shared.event_count != run.state.event_count + len(events):
                shared = None  # (not the state after these events on this one: fold them)
            try:
                state = run.state if shared is None else shared
                for event in events if shared is None else ():
                    state = fold(state, event)  # (a run.started: a purged id's new life)
            except AssertionError as error:
                self.problems.append(f"run {run_id!r}: message {seq} does not fold: {error}")
                del self._runs[run_id]
                touched.pop(run_id, None)
                continue
            run.state = state
            run.last_seq = seq
            touched[run_id] = run
        due: list[Snapshot] = []
        for run in touched.values():
            pending = run.state.event_count - max(run.written_events, 0)
            wanted = is_terminal(run.state) or pending >= self.every_events
            if wanted and run.written_events != run.state.event_count and run.state.run_id:
                due.append(make_snapshot(run.state, run.last_seq))
        for run_id in list(touched):
            self._runs.move_to_end(run_id)
        return due

    def written(self, snapshots: Iterable[Snapshot]) -> None:
        """Note snapshots as stored; forget ended runs and the oldest beyond the bound."""
        for snapshot in snapshots:
            run = self._runs.get(snapshot.run_id)
            if run is not None and run.last_seq == snapshot.last_seq:
                run.written_events = snapshot.state.event_count
                if is_terminal(run.state):
                    del self._runs[snapshot.run_id]
        while len(self._runs) > self.runs_max:
            self._runs.popitem(last=False)


def fold_messages(
    state: RunState, last_seq: int, messages: Iterable[tuple[int, bytes]]
) -> tuple[RunState, int]:
    """Continue a fold from (state, last_seq) with a run's messages after it.

    Raises:
        DagnatsError: a message does not decode. AssertionError: it does not fold.
    """
    for seq, data in messages:
        if seq <= last_seq:
            continue
        for event in codec.decode_events(data):
            state = fold(state, event)  # (a stale snapshot of a purged id's old life)
        last_seq = seq
    return state, last_seq
