"""The query tables' rebuild from zero without a second database: `rebuilt_rows` computes the rows
a rebuild writes from the history's events and each run's fold (the simulator shares its
oracle's), and a seed compares its live tables with those.

- for generated histories, the rows are those a rebuild in a fresh database writes, table by
  table, with its count of events applied; where they cannot be computed (agent loop events,
  approvals) it says so and the simulator rebuilds in a database as before;
- a seed of the query tables writes nothing to the rebuild database, and a live table or
  checkpoint that differs from the rows is still a `projections_equal_rebuild` violation, as
  are the planted projection bugs of tests/sim_mutants.py put in `QueryTables` itself; a run
  whose runs row is not at its last message is still compared with its fold there;
- a projection of another class (a subclass too) is still rebuilt in a database.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from sqlite_utils import Database

from dagnats.sim import SimCase, run_seeds
from dagnats.sim.projector import DATABASE_REBUILD_EVERY_SEEDS, SeedProjector
from dagnats.sim.scheduler import Simulation
from dagnats.sim.stores import ProjectionStores
from kernel import codec
from kernel.commands import CancelRun
from kernel.events import (
    AgentToolCompleted,
    AgentToolScheduled,
    AgentTurnCompleted,
    AnyEvent,
    Decision,
    RunStarted,
)
from kernel.reducer import fold
from kernel.state import RunState
from projections.base import (
    Message,
    Position,
    SqliteRunner,
    positioned_events,
    read_checkpoint,
)
from projections.sqlite import QueryTables, Row, rebuilt_rows
from tests.projection_support import History, completed_run, histories
from tests.sim_mutants import (
    PROJECTION_MUTANTS,
    ProjectionForgetsRunsOnRestart,
    chain_worker,
    chain_workflow,
    simulate_chain,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AGENT_EVENTS = (AgentTurnCompleted, AgentToolScheduled, AgentToolCompleted)


def _tables(db: Database) -> dict[str, Counter[Row]]:
    return {
        table: Counter(tuple(row) for row in db.execute(f'SELECT * FROM "{table}"'))
        for table in QueryTables.tables
    }


def _rebuilt_in_a_database(messages: list[Message]) -> tuple[dict[str, Counter[Row]], int]:
    db = Database(memory=True)
    SqliteRunner(db, QueryTables()).apply_all(messages)
    checkpoint = read_checkpoint(db, QueryTables.name)
    assert checkpoint is not None
    return _tables(db), checkpoint.events


def _folds(history: History) -> dict[str, RunState]:
    return {run_id: fold(history.events_of(run_id)) for run_id in history.runs}


@SETTINGS
@given(histories())
def test_the_rows_are_those_a_rebuild_in_a_database_writes(history: History) -> None:
    problems: list[str] = []
    rows = rebuilt_rows(positioned_events(history.messages, 0, None, problems), _folds(history))
    assert problems == []
    events = [event for run_id in history.runs for event in history.events_of(run_id)]
    states = _folds(history).values()
    if rows is None:  # (only where the rows are merged event by event)
        assert any(isinstance(e, AGENT_EVENTS) for e in events) or any(
            state.approvals for state in states
        )
        return
    tables, applied = rows
    assert ({table: Counter(found) for table, found in tables.items()}, applied) == (
        _rebuilt_in_a_database(history.messages)
    )


def test_a_completed_run_has_its_rows() -> None:
    messages = [(index + 1, "run-1", data) for index, data in enumerate(completed_run("run-1"))]
    problems: list[str] = []
    decoded = [event for _, event in positioned_events(messages, 0, None, problems)]
    rows = rebuilt_rows(positioned_events(messages, 0, None, problems), {"run-1": fold(decoded)})
    assert rows is not None and problems == []
    tables, applied = rows
    assert applied == len(decoded) and len(tables["events"]) == applied
    assert [row[3] for row in tables["runs"]] == ["completed"]
    assert {table: Counter(found) for table, found in tables.items()} == _rebuilt_in_a_database(
        messages
    )[0]
    assert rebuilt_rows(positioned_events(messages, 0, None, problems), {}) is None, "no fold"


def _traced(stores: ProjectionStores) -> list[str]:
    statements: list[str] = []
    stores.rebuild.conn.set_trace_callback(statements.append)
    return statements


def _final_violations(simulation: Simulation) -> list[str]:
    oracle = simulation.oracle
    states = {run_id: track.state for run_id, track in oracle.runs.items()}
    simulation.projector.check_final(simulation.time.now_ms, states)
    return [f"{v.invariant}: {v.message}" for v in oracle.violations]


def test_a_seed_of_the_query_tables_writes_no_rebuild_database() -> None:
    stores = ProjectionStores()
    statements = _traced(stores)
    simulation = simulate_chain(seed=11, stores=stores)
    assert simulation.projector.batches > 0
    assert statements == [], statements[:3]
    assert _final_violations(simulation) == [], "checked again, the tables still agree"


def test_a_live_table_that_differs_from_the_rows_is_a_violation() -> None:
    stores = ProjectionStores()
    simulation = simulate_chain(seed=12, stores=stores)
    stores.live.conn.execute("DELETE FROM events WHERE idx = 0 AND seq = 1")
    (found,) = _final_violations(simulation)
    assert found.startswith("projections_equal_rebuild: table 'events' differs from its rebuild")


def test_a_checkpoint_that_differs_from_the_rows_is_a_violation() -> None:
    stores = ProjectionStores()
    simulation = simulate_chain(seed=13, stores=stores)
    stores.live.conn.execute("UPDATE _dagnats_projections SET events = events + 1")
    (found,) = _final_violations(simulation)
    assert "checkpoint (seq, events applied)" in found, found


def test_a_steps_row_that_is_not_the_folds_is_a_violation() -> None:
    stores = ProjectionStores()
    simulation = simulate_chain(seed=14, stores=stores)
    stores.live.conn.execute("UPDATE steps SET attempt = attempt + 7 WHERE step_id = 's0'")
    table, folds = _final_violations(simulation)  # (as a rebuild in a database reports it)
    assert "table 'steps' differs" in table, table
    assert "its steps rows are not the fold's" in folds, folds


def test_a_run_whose_last_message_has_no_event_is_compared_with_its_fold_there() -> None:
    """Its runs row stays at its last message with events (the rebuild's too): the comparison
    with the fold at the log's last sequence names the difference, as before."""
    stores = ProjectionStores()
    simulation = simulate_chain(seed=15, stores=stores)
    (run_id,) = simulation.log.run_ids()
    cancel = CancelRun(run_id=run_id, at_ms=1, reason="late")
    empty = codec.encode(Decision(command=cancel, events=()))  # (no engine appends one)
    last = simulation.log.last_seq_now(run_id)
    simulation.log.append_now(run_id, empty, "empty-decision", last)
    found = [v for v in _final_violations(simulation) if "projections_equal_rebuild" in v]
    assert len(found) == 1 and "its runs row" in found[0], found


def test_a_projection_of_another_class_is_still_rebuilt_in_a_database() -> None:
    stores = ProjectionStores()
    simulation = simulate_chain(seed=11, stores=stores)
    simulation.projector.projection = ProjectionForgetsRunsOnRestart()  # (a QueryTables subclass)
    statements = _traced(stores)
    simulation.projector.factory = ProjectionForgetsRunsOnRestart
    assert _final_violations(simulation) == []
    assert [s for s in statements if "INSERT INTO events" in s], "the rebuild wrote no events"


def _planted(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The planted projection bugs of tests/sim_mutants.py, in `QueryTables` itself (its
    class unchanged, so a seed compares with the rows computed from the folds)."""
    flush, apply = QueryTables.flush, QueryTables.apply
    started: set[str] = set()

    def commits_in_flush(self: QueryTables, db: Database) -> None:
        flush(self, db)
        db.conn.commit()

    def forgets_runs_on_restart(
        self: QueryTables, db: Database, event: AnyEvent, at: Position
    ) -> None:
        if isinstance(event, RunStarted):
            started.add(at.run_id)
        elif at.run_id not in started:
            return
        apply(self, db, event, at)

    def restarted(self: QueryTables) -> None:  # (a new instance knows no run)
        started.clear()
        init(self)

    init = QueryTables.__init__
    if name == "projection_commits_in_flush":
        monkeypatch.setattr(QueryTables, "flush", commits_in_flush)
    else:
        monkeypatch.setattr(QueryTables, "apply", forgets_runs_on_restart)
        monkeypatch.setattr(QueryTables, "__init__", restarted)


@pytest.mark.parametrize("name", sorted(PROJECTION_MUTANTS))
def test_a_planted_projection_bug_is_caught_by_the_rows_of_the_folds(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _planted(monkeypatch, name)

    def no_database_rebuild(*args: object) -> None:
        raise AssertionError("the query tables were rebuilt in a database")

    monkeypatch.setattr(SeedProjector, "_compare", no_database_rebuild)
    case = SimCase(workflow=chain_workflow(), worker=chain_worker())
    # (every DATABASE_REBUILD_EVERY_SEEDS-th seed rebuilds in a database: left out here)
    seeds = [seed for seed in range(240) if seed % DATABASE_REBUILD_EVERY_SEEDS][:200]
    report = run_seeds(case, seeds)
    assert report.failures, f"{name} survived 200 seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    assert broken == {"projections_equal_rebuild"}, broken
