"""The projections of one seed: fed from the in-memory history as it grows, checked at the end.

Two projections follow the simulated history stream, as `dagnats/projector.py` feeds them on
NATS: the SQLite query tables (`projections.sqlite.QueryTables`, or the projection a case names)
through `projections.base.SqliteRunner`, and the run snapshots through
`projections.snapshot.SnapshotFolder`, whose due snapshots are what the simulated engines load.
After some appends the projector takes a bounded batch of the messages it has not applied,
sometimes with some it has already applied in front (a redelivery: the runner must skip them);
sometimes it crashes after the projection wrote a batch and before the checkpoint committed (the
transaction must roll back; a new projector instance resumes from the stored checkpoint and
state, and the snapshot folder reloads each run from its snapshot and the history after it).

Checked (invariants `snapshots_equal_fold` and `projections_equal_rebuild`):
- every snapshot the folder writes holds the oracle's fold of the run at its `last_seq`;
- at the end of the seed, after catching up, every table of the SQLite projection (and its
  checkpoint: sequence and events applied) equals a rebuild from zero over the whole history;
  for the query tables, each `runs` and `steps` row also equals the row of the oracle's fold
  (`run_row`, `step_row`), so a projection that is wrong the same way twice is caught too; the
  projection reports no problems and raises nothing. The query tables' rebuild shares the
  oracle's folds: `rebuilt_rows` computes the rows a rebuild writes from the history's events
  (decoded from its bytes again) and the folds, so their runs and steps rows are the folds'
  own; where it cannot (agent loop events, approvals) and for any other projection class, the
  rebuild runs in a fresh database.

The two SQLite databases are in memory and reused across the seeds of one call (each seed
restores them as a first open left them: `ProjectionStores.fresh`): creating the schema costs
more than a seed's batches. The live projection takes the events of each message as the oracle
decoded them; the rebuild from zero decodes the bytes itself. This module may not read the wall
clock, draw randomness other than from the seed's `random.Random`, or do I/O.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Final

from sqlite_utils import Database

from dagnats.sim.faults import SeedFaults, SimulatedCrash
from dagnats.sim.memory import HistoryMessage, MemoryEventLog, MemorySnapshots
from dagnats.sim.stores import ProjectionStores
from dagnats.sim.trace import Trace
from kernel import codec
from kernel.admission import is_gate_id
from kernel.errors import DagnatsError
from kernel.events import AnyEvent, Decision
from kernel.state import INITIAL_STATE, RunState
from projections.base import (
    Checkpoint,
    Message,
    Position,
    SqliteProjection,
    SqliteRunner,
    batch_messages_max,
    positioned_events,
    read_checkpoint,
)
from projections.snapshot import (
    Decoded,
    Snapshot,
    SnapshotFolder,
    encode_snapshot,
    fold_messages,
    snapshot_every_events,
)
from projections.sqlite import (
    RUN_COLUMNS,
    QueryTables,
    Row,
    rebuilt_rows,
    run_row,
    step_row,
    stored_rows,
)

ProjectionFactory = Callable[[], SqliteProjection]
# Appends after which each projector applies a batch (a SQLite transaction costs ~0.1 ms).
SNAPSHOTS_FEED_FRACTION: Final = 0.3
TABLES_FEED_FRACTION: Final = 0.1
FEED_BATCH_MAX: Final = 8  # history messages one simulated batch takes, at most
CATCH_UP_BATCH_MAX: Final = 64  # ... in the catch-up at the end of a seed
REDELIVERED_MAX: Final = 3  # already-applied messages a redelivered batch carries in front
SNAPSHOT_EVERY_CHOICES: Final = (1, 3, snapshot_every_events)  # the folder's cadence, per seed
# The query tables are compared at a seed's end with the rows computed from the oracle's folds
# (no second database); one seed in this many (seed % it == 0) rebuilds them from zero in a
# database instead, in batches as large as a NATS projector's (`batch_messages_max`): the live
# feed's batches are small, and a bug that shows only in large batches would go unseen.
DATABASE_REBUILD_EVERY_SEEDS: Final = 8
CATCH_UP_BATCHES_MAX: Final = 10_000  # batches of the final catch-up (crashes included)
ROWS_SHOWN_MAX: Final = 2  # differing rows named in a violation

Violate = Callable[[str, str, str], None]
StatesAt = Callable[[str, int], RunState | None]  # the oracle's fold of a run at a sequence
DecisionAt = Callable[[int], Decision | None]  # the oracle's decoded message at a sequence


class _CrashAfterFlush:
    """A projection whose process dies after its batch's writes, before the commit."""

    def __init__(self, inner: SqliteProjection) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self.events = inner.events
        self.tables = inner.tables

    def create(self, db: Database) -> None:
        self.inner.create(db)

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        self.inner.apply(db, event, at)

    def flush(self, db: Database) -> None:
        self.inner.flush(db)
        raise SimulatedCrash("projector", "after_flush")

    def discard(self) -> None:
        self.inner.discard()


class SeedProjector:
    """The projector of one seed: the SQLite projection (optional) and the snapshot folder."""

    def __init__(
        self,
        *,
        log: MemoryEventLog,
        snapshots: MemorySnapshots,
        rng: random.Random,
        faults: SeedFaults,
        trace: Trace,
        factory: ProjectionFactory | None,
        stores: ProjectionStores | None,
        states_at: StatesAt,
        violate: Violate,
        decision_at: DecisionAt | None = None,
        rebuild_in_database: bool = False,
    ) -> None:
        """`rebuild_in_database`: compare the query tables with a rebuild from zero in a
        database too (always for other projections), not only with the folds' rows."""
        self.log = log
        self.rebuild_in_database = rebuild_in_database
        self.snapshots = snapshots
        self.rng = rng
        self.faults = faults
        self.trace = trace
        self.factory = factory
        self.states_at = states_at
        self.decision_at = decision_at
        self.violate = violate
        self.every_events = SNAPSHOT_EVERY_CHOICES[rng.randrange(len(SNAPSHOT_EVERY_CHOICES))]
        self.folder = SnapshotFolder(every_events=self.every_events)
        self.snapshots_position = 0  # the last history sequence each projection applied
        self.tables_position = 0
        self.broken = False  # a projection raised: feed it no more
        self.batches = 0
        self.stores = stores
        self.projection: SqliteProjection | None = None
        self.runner: SqliteRunner | None = None
        if factory is not None:
            self.stores = stores if stores is not None else ProjectionStores()
            self._open(empty=True)

    # -- feeding --------------------------------------------------------------------------

    def on_append(self, message: HistoryMessage) -> None:
        """After an append: sometimes apply a batch (the projectors lag behind the engines)."""
        if self.rng.random() < SNAPSHOTS_FEED_FRACTION:
            self.feed_snapshots(message.at_ms, self.rng.randint(1, FEED_BATCH_MAX))
        if self.runner is not None and self.rng.random() < TABLES_FEED_FRACTION:
            self.feed_tables(message.at_ms, self.rng.randint(1, FEED_BATCH_MAX))

    def _batch(self, position: int, batch_max: int, label: str) -> list[HistoryMessage]:
        """The next messages after `position`, perhaps with some before it (redelivered)."""
        first = position
        if first and self.faults.hit("duplicate_delivery", label):
            first = max(0, first - self.rng.randint(1, REDELIVERED_MAX))
        return self.log.messages[first : position + batch_max]

    def feed_snapshots(self, now_ms: int, batch_max: int) -> None:
        """Fold the next messages into the snapshot folder and write the snapshots due; a crash
        after the writes, before the checkpoint, restarts the folder from nothing."""
        if self.snapshots_position >= len(self.log.messages):
            return
        messages = self._batch(self.snapshots_position, batch_max, "snapshots_batch")
        self.batches += 1
        self._apply_snapshots(messages)
        if self.faults.hit("projector_crash", "snapshots"):
            self.trace.add(
                now_ms, "snapshots", f"FAULT crash before checkpoint #{messages[-1].seq}"
            )
            self.folder = SnapshotFolder(every_events=self.every_events)
            return
        self.snapshots_position = messages[-1].seq
        self.trace.add(now_ms, "snapshots", f"applies #{messages[0].seq}..#{messages[-1].seq}")

    def feed_tables(self, now_ms: int, batch_max: int) -> None:
        """Apply the next messages to the SQLite projection; a crash after its writes, before
        the commit, restarts it from the stored checkpoint."""
        if self.broken or self.tables_position >= len(self.log.messages):
            return
        messages = self._batch(self.tables_position, batch_max, "tables_batch")
        crash = self.faults.hit("projector_crash", "tables")
        self.batches += 1
        batch: list[Message] = [(m.seq, m.run_id, m.payload) for m in messages]
        if not self._apply_sqlite(batch, now_ms, crash):
            return
        if crash:
            self.trace.add(now_ms, "tables", f"FAULT crash before commit #{messages[-1].seq}")
            self._open(empty=False)
            return
        self.tables_position = messages[-1].seq
        self.trace.add(now_ms, "tables", f"applies #{messages[0].seq}..#{messages[-1].seq}")

    def _apply_sqlite(self, batch: list[Message], now_ms: int, crash: bool) -> bool:
        runner, projection = self.runner, self.projection
        assert runner is not None and projection is not None
        if crash:
            runner.projection = _CrashAfterFlush(projection)
        try:
            result = runner.apply_batch(
                batch, after_seq=self.tables_position, now_ms=now_ms, decoded=self._events_at
            )
        except SimulatedCrash:
            return True
        except Exception as error:  # a projection that raises is stuck: that is the finding
            self._broke(f"applying messages #{batch[0][0]}..#{batch[-1][0]} raised {error!r}")
            return False
        finally:
            runner.projection = projection
        assert not crash, "the crash was not raised"
        assert result.seq == batch[-1][0], (result.seq, batch[-1][0])
        problems = getattr(projection, "problems", None)
        if isinstance(problems, list) and problems:
            self._broke(f"the projection reports: {problems[0]}")
            return False
        return True

    def _events_at(self, seq: int) -> tuple[AnyEvent, ...] | None:
        """The events of the history message at `seq` as the oracle decoded them (the live
        projection takes them; the rebuild from zero decodes the bytes itself)."""
        decision = self.decision_at(seq) if self.decision_at is not None else None
        return decision.events if decision is not None else None

    def _apply_snapshots(self, messages: list[HistoryMessage]) -> None:
        decoded: list[Decoded] = []
        for message in messages:
            if is_gate_id(message.run_id):
                continue  # an admission gate's history, not a run's
            decision = self.decision_at(message.seq) if self.decision_at is not None else None
            # (the same bytes decode to an equal, immutable value; the command is not needed)
            events = codec.decode_events(message.payload) if decision is None else decision.events
            decoded.append((message.seq, message.run_id, events))
        for run_id in self.folder.to_load(decoded):
            self._load(run_id)
        due = self.folder.apply(decoded)
        for problem in self.folder.problems:
            self.violate("snapshots_equal_fold", f"the snapshot folder reports: {problem}", "")
        self.folder.problems.clear()
        for snapshot in due:
            self._check_snapshot(snapshot)
            self.snapshots.stored[snapshot.run_id] = encode_snapshot(snapshot)
        self.folder.written(due)

    def _check_snapshot(self, snapshot: Snapshot) -> None:
        expected = self.states_at(snapshot.run_id, snapshot.last_seq)
        if snapshot.state != expected:
            self.violate(
                "snapshots_equal_fold",
                f"the snapshot projection's state of the run at sequence {snapshot.last_seq} "
                "is not the fold of its history there",
                snapshot.run_id,
            )

    def _load(self, run_id: str) -> None:
        """Seed the folder with the run's stored snapshot plus the history after it."""
        stored = self.snapshots.decoded(run_id)
        state, last_seq = (stored.state, stored.last_seq) if stored else (INITIAL_STATE, 0)
        tail = [(m.seq, m.payload) for m in self.log.history(run_id)]
        try:
            state, last_seq = fold_messages(state, last_seq, tail)
        except (DagnatsError, AssertionError) as error:
            self.violate("snapshots_equal_fold", f"the run does not load: {error}", run_id)
            return
        self.folder.seed(run_id, state, last_seq, stored=stored)

    def _open(self, *, empty: bool) -> None:
        assert self.factory is not None and self.stores is not None
        projection = self.factory()
        self.projection = projection
        if empty:
            self.runner = self.stores.fresh(self.stores.live, projection)
            self.tables_position = 0
        else:
            self.runner = SqliteRunner(self.stores.live, projection)
            self.tables_position = self.runner.open()

    def _broke(self, text: str) -> None:
        self.broken = True
        self.violate("projections_equal_rebuild", text, "")

    # -- the end --------------------------------------------------------------------------

    def check_final(self, now_ms: int, final_states: dict[str, RunState]) -> None:
        """Catch up, then compare the tables with a rebuild from zero and with the folds."""
        end = len(self.log.messages)
        for _ in range(CATCH_UP_BATCHES_MAX):
            if self.snapshots_position >= end:
                break
            self.feed_snapshots(now_ms, FEED_BATCH_MAX)
        for _ in range(CATCH_UP_BATCHES_MAX):
            if self.broken or self.runner is None or self.tables_position >= end:
                break
            self.feed_tables(now_ms, CATCH_UP_BATCH_MAX)
        if self.broken or self.runner is None or self.projection is None:
            return
        assert self.stores is not None and self.factory is not None
        everything = [(m.seq, m.run_id, m.payload) for m in self.log.messages]
        if (
            not self.rebuild_in_database
            and type(self.projection) is QueryTables
            and self._compare_rebuilt_rows(everything, final_states)
        ):
            return
        rebuilt = self.factory()
        try:
            runner = self.stores.fresh(self.stores.rebuild, rebuilt, now_ms)
            seq = 0
            for first in range(0, len(everything), batch_messages_max):
                batch = everything[first : first + batch_messages_max]
                seq = runner.apply_batch(batch, after_seq=seq, now_ms=now_ms).seq
        except Exception as error:
            self._broke(f"the rebuild from zero raised {error!r}")
            return
        self._compare(self.stores.live, self.stores.rebuild, self.projection)
        if isinstance(self.projection, QueryTables):
            self._compare_folds(final_states)

    def _compare_rebuilt_rows(
        self, everything: list[Message], final_states: dict[str, RunState]
    ) -> bool:
        """The query tables against the rows a rebuild from zero writes, computed from the
        history's events (decoded from its bytes again) and the oracle's folds (`rebuilt_rows`:
        no second database, no second fold); their runs and steps rows are then the folds' own.

        Returns:
            False when those rows cannot be computed (the caller rebuilds in a database).
        """
        assert self.stores is not None and self.projection is not None
        problems: list[str] = []
        rebuilt = rebuilt_rows(positioned_events(everything, 0, None, problems), final_states)
        if rebuilt is None or problems:
            return False
        rows, events = rebuilt
        live = self.stores.live
        tables = self.projection.tables
        empty = self.stores.empty_tables(live, tables)
        for table in tables:
            want = rows[table]
            if not want and table in empty:
                continue
            found = _rows(live, table)
            # (equal lists are equal rows; unequal ones may hold them in another order)
            if found != want and self._differs(table, Counter(found), Counter(want)):
                self._compare_folds(final_states)  # (as after a rebuild in a database)
                return True
        seq = max([0, *(message[0] for message in everything)])
        self._checkpoints_differ(
            _position(read_checkpoint(live, self.projection.name)), (seq, events)
        )
        # The runs rows are the folds' at each run's last message with events; where that is
        # not the run's last message, the comparison with the folds says how they differ.
        last = RUN_COLUMNS.index("last_seq")
        if any(row[last] != self.log.last_seq_now(str(row[0])) for row in rows["runs"]):
            self._compare_folds(final_states)
        return True

    def _compare(self, live: Database, rebuilt: Database, projection: SqliteProjection) -> None:
        assert self.stores is not None
        tables = projection.tables
        empty = self.stores.empty_tables(live, tables) & self.stores.empty_tables(rebuilt, tables)
        for table in tables:
            if table in empty or self.stores.same_rows(live, rebuilt, table):
                continue
            found = Counter(tuple(row) for row in live.execute(f'SELECT * FROM "{table}"'))
            want = Counter(tuple(row) for row in rebuilt.execute(f'SELECT * FROM "{table}"'))
            if self._differs(table, found, want):
                return
        self._checkpoints_differ(
            _position(read_checkpoint(live, projection.name)),
            _position(read_checkpoint(rebuilt, projection.name)),
        )

    def _differs(self, table: str, found: Counter[Row], want: Counter[Row]) -> bool:
        """Whether the live table's rows differ from the rebuild's (a violation when they do)."""
        if found == want:
            return False
        extra = list((found - want).elements())[:ROWS_SHOWN_MAX]
        missing = list((want - found).elements())[:ROWS_SHOWN_MAX]
        self.violate(
            "projections_equal_rebuild",
            f"table {table!r} differs from its rebuild from zero: rows only in the "
            f"live one {_short(extra)}, only in the rebuild {_short(missing)}",
            "",
        )
        return True

    def _checkpoints_differ(
        self, mine: tuple[int, int] | None, theirs: tuple[int, int] | None
    ) -> None:
        if mine != theirs:
            self.violate(
                "projections_equal_rebuild",
                f"checkpoint (seq, events applied) {mine} differs from the rebuild's {theirs}",
                "",
            )

    def _compare_folds(self, final_states: dict[str, RunState]) -> None:
        assert self.stores is not None
        for run_id in self.log.run_ids():
            state = final_states.get(run_id)
            if state is None or state.workflow is None:
                continue
            last_seq = self.log.last_seq_now(run_id)
            run, steps = stored_rows(self.stores.live, run_id)
            if run != run_row(state, last_seq):
                self.violate(
                    "projections_equal_rebuild",
                    f"its runs row {_short(run)} is not the fold's "
                    f"{_short(run_row(state, last_seq))}",
                    run_id,
                )
                return
            want = [step_row(state, index) for index in range(len(state.steps))]
            if steps != want and sorted(steps, key=repr) != sorted(want, key=repr):
                self.violate(
                    "projections_equal_rebuild",
                    "its steps rows are not the fold's",
                    run_id,
                )
                return


def _rows(db: Database, table: str) -> list[Row]:
    """Every row of `table` as tuples (what the connection returns unless it has a factory)."""
    cursor = db.conn.execute(f'SELECT * FROM "{table}"')
    if db.conn.row_factory is None:
        rows: list[Row] = cursor.fetchall()
        return rows
    return [tuple(row) for row in cursor]


def _position(checkpoint: Checkpoint | None) -> tuple[int, int] | None:
    """(sequence, events applied) of a stored checkpoint."""
    return (checkpoint.seq, checkpoint.events) if checkpoint is not None else None


def _short(value: object, chars_max: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."
