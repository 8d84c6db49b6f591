"""The simulator's shortcuts keep what it checks: the sorted comparison of a projection's
tables, the emptied databases restored from their pages, the snapshot projector reusing the
oracle's decoded messages, and evolve's fast path for step events (it still refuses an event
after the run's end)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
from sqlite_utils import Database

from dagnats.sim import SimCase, run_seeds
from dagnats.sim import projector as sim_projector
from dagnats.sim.stores import ProjectionStores
from kernel import codec
from kernel.events import AnyEvent, Decision, RunStarted, StepStarted
from kernel.reducer import evolve
from kernel.state import is_terminal
from projections.base import Position, SqliteProjectionBase, read_checkpoint
from projections.sqlite import QueryTables
from tests.sim_mutants import chain_worker, chain_workflow, simulate_chain

Row = tuple[object, ...]
ROWS: list[Row] = [(1, "a", None), (2, "b", 2.5), (2, "b", 2.5), (3, None, b"\x00")]


def _table(stores: ProjectionStores, rows_live: Sequence[Row], rows_rebuilt: Sequence[Row]) -> None:
    for db, rows in ((stores.live, rows_live), (stores.rebuild, rows_rebuilt)):
        db.execute("CREATE TABLE t (a INTEGER, b TEXT, c)")
        for row in rows:
            db.execute("INSERT INTO t VALUES (?, ?, ?)", list(row))


def test_equal_tables_compare_equal_in_any_row_order() -> None:
    stores = ProjectionStores()
    _table(stores, ROWS, list(reversed(ROWS)))
    assert stores.same_rows(stores.live, stores.rebuild, "t")


@pytest.mark.parametrize(
    "rebuilt",
    [
        ROWS[:-1],
        [*ROWS, ROWS[0]],
        [(1, "a", None), (2, "b", 2.5), (3, None, b"\x00")],
        [(1, "a", 0), *ROWS[1:]],
    ],
    ids=["a row missing", "a row extra", "a duplicate missing", "a value differs"],
)
def test_different_tables_never_compare_equal(rebuilt: list[Row]) -> None:
    stores = ProjectionStores()
    _table(stores, ROWS, rebuilt)
    assert not stores.same_rows(stores.live, stores.rebuild, "t")


def test_tables_of_different_shapes_fall_back_to_the_slow_comparison() -> None:
    stores = ProjectionStores()
    stores.live.execute("CREATE TABLE t (a INTEGER, b TEXT, c)")
    stores.rebuild.execute("CREATE TABLE t (a INTEGER)")
    assert not stores.same_rows(stores.live, stores.rebuild, "t")


def test_the_snapshot_projector_folds_the_oracles_decoded_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[bytes] = []
    decode = codec.decode_decision

    def counting(data: bytes) -> Decision:
        if sys._getframe(1).f_globals["__name__"] == sim_projector.__name__:
            decoded.append(data)
        return decode(data)

    monkeypatch.setattr(codec, "decode_decision", counting)
    simulation = simulate_chain(seed=3)
    assert simulation.projector.batches > 0
    assert decoded == [], "the snapshot projector decoded messages the oracle had decoded"
    messages = simulation.log.messages
    assert sorted(simulation.oracle.decisions) == [m.seq for m in messages]
    for message in messages:
        assert simulation.oracle.decisions[message.seq] == codec.decode_decision(message.payload)


def test_evolve_still_refuses_a_step_event_after_the_runs_end() -> None:
    simulation = simulate_chain(seed=5)
    (state,) = [track.state for track in simulation.oracle.runs.values()]
    assert is_terminal(state)
    started = StepStarted(step_id=state.step_ids[0], attempt=9, worker_id="w", at_ms=1)
    with pytest.raises(AssertionError, match="is terminal"):
        evolve(state, started)


class _Counter(SqliteProjectionBase):
    """A projection with an AUTOINCREMENT key: what a seed leaves in its counter shows."""

    name = "counter"
    tables = ("counted",)

    def create(self, db: Database) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS counted (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT)"
        )


def _seed_writes(stores: ProjectionStores, db: Database, rows: int) -> list[int]:
    """What one seed does to a store: open the projection on emptied tables, write rows."""
    projection = _Counter()
    stores.fresh(db, projection)
    for index in range(rows):
        db.execute("INSERT INTO counted (tag) VALUES (?)", [f"row {index}"])
    return [row[0] for row in db.execute("SELECT id FROM counted ORDER BY id")]


def test_emptying_restores_the_first_emptied_database() -> None:
    """After the first seeds, `fresh` restores the database's emptied pages: no row, no
    checkpoint position and no counter of an earlier seed survives (a seed's result is its
    own); `empty` deletes the rows and the checkpoint."""
    stores = ProjectionStores()
    for db in (stores.live, stores.rebuild):
        assert _seed_writes(stores, db, 3) == [1, 2, 3]
        assert _seed_writes(stores, db, 5) == [1, 2, 3, 4, 5]  # (its pages are kept from here)
        for _ in range(3):
            assert _seed_writes(stores, db, 2) == [1, 2]
        stores.empty(db, _Counter())
        assert db.execute("SELECT count(*) FROM counted").fetchone() == (0,)
        assert read_checkpoint(db, _Counter.name) is None


class _LosesEventRowsOnRestart(QueryTables):
    """Writes no `events` row for a run it did not see start (after a restart): its runs and
    steps rows stay right, so only the comparison of the `events` table can catch it."""

    def __init__(self) -> None:
        super().__init__()
        self._started: set[str] = set()

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        if isinstance(event, RunStarted):
            self._started.add(at.run_id)
        before = len(self._events)
        super().apply(db, event, at)
        if at.run_id not in self._started:
            del self._events[before:]


def test_the_table_comparison_still_catches_rows_missing_from_one_table() -> None:
    stores = ProjectionStores()
    for db in (stores.live, stores.rebuild):
        db.execute("CREATE TABLE t (a INTEGER)")
        db.execute("CREATE TABLE u (a INTEGER)")
    stores.rebuild.execute("INSERT INTO t VALUES (1)")
    assert stores.empty_tables(stores.live, ("t", "u")) == {"t", "u"}
    assert stores.empty_tables(stores.rebuild, ("t", "u")) == {"u"}
    assert stores.empty_tables(stores.live, ("t", "missing")) == set()
    case = SimCase(
        workflow=chain_workflow(), worker=chain_worker(), projection=_LosesEventRowsOnRestart
    )
    report = run_seeds(case, range(200))
    assert report.failures, "a projection losing event rows survived 200 seeds"
    (violation,) = report.failures[0].violations
    assert violation.invariant == "projections_equal_rebuild"
    assert "table 'events'" in violation.message, violation.message
