"""The query tables' rebuild from zero without a second database: `rebuilt_rows` computes the rows
a rebuild writes from the history's events and each run's fold (the simulator shares its
oracle's), and a seed compares its live tables with those.

- for generated histories, the rows are those a rebuild in a fresh database writes, table by
  table, with its count of events applied; where they cannot be computed (agent loop events,
  approvals) it says so and the simulator rebuilds in a database as before;
- a seed of the query tables writes nothing to the rebuild database, and a live table or
  checkpoint that differs from the rows is still a `projections_equal_rebuild` violation;
- a projection of another class (a subclass too) is still rebuilt in a database.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from sqlite_utils import Database

from dagnats.sim.projector import ProjectionStores
from dagnats.sim.scheduler import Simulation
from kernel.events import AgentToolCompleted, AgentToolScheduled, AgentTurnCompleted
from kernel.reducer import fold
from kernel.state import RunState
from projections.base import Message, SqliteRunner, positioned_events, read_checkpoint
from projections.sqlite import QueryTables, Row, rebuilt_rows
from tests.projection_support import History, completed_run, histories
from tests.sim_mutants import ProjectionForgetsRunsOnRestart, simulate_chain

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
    (found,) = _final_violations(simulation)
    assert "table 'steps' differs" in found, found


def test_a_projection_of_another_class_is_still_rebuilt_in_a_database() -> None:
    stores = ProjectionStores()
    simulation = simulate_chain(seed=11, stores=stores)
    simulation.projector.projection = ProjectionForgetsRunsOnRestart()  # (a QueryTables subclass)
    statements = _traced(stores)
    simulation.projector.factory = ProjectionForgetsRunsOnRestart
    assert _final_violations(simulation) == []
    assert [s for s in statements if "INSERT INTO events" in s], "the rebuild wrote no events"
