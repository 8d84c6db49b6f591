"""The simulator does work once where it can and keeps what it checks: a seed's databases are
restored with the projection's schema made (no statement creates it again), the live SQLite
projection takes the oracle's decoded messages (the rebuild from zero still decodes the bytes,
so the decoder stays under test), and a runner given decoded events applies exactly those; the
worker's check of a handler's output skips the walk that names places for a plain value."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from dagnats.sim.stores import ProjectionStores
from dagnats.worker_safety import output_problem, walked_problem
from kernel import codec, limits
from kernel.admission import is_gate_id
from kernel.events import AnyEvent
from projections import base
from projections.base import SqliteRunner, positioned_events
from projections.sqlite import QueryTables
from tests.projection_support import completed_run
from tests.sim_mutants import simulate_chain


def test_only_the_rebuild_decodes_history_messages_in_the_projection_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[bytes] = []
    decode = codec.decode_events

    def counting(data: bytes) -> tuple[AnyEvent, ...]:
        if sys._getframe(1).f_globals["__name__"] == base.__name__:
            decoded.append(data)
        return decode(data)

    monkeypatch.setattr(codec, "decode_events", counting)
    simulation = simulate_chain(seed=7)
    assert simulation.projector.batches > 0
    messages = [m.payload for m in simulation.log.messages if not is_gate_id(m.run_id)]
    assert decoded == messages, "the live feed decoded messages the oracle had decoded"


def test_once_the_tables_exist_a_seed_creates_nothing() -> None:
    """Each seed restores its databases as a first open left them (schema stamp included), so
    its opens, the projector's restarts and the rebuild's run no schema statement."""
    stores = ProjectionStores()
    statements: list[str] = []
    for db in (stores.live, stores.rebuild):
        db.conn.set_trace_callback(statements.append)
    for seed in (1, 2):
        simulate_chain(seed, stores)
    statements.clear()
    for seed in (3, 4, 5):
        simulate_chain(seed, stores)
    assert statements, "the trace saw the seeds"
    creates = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER"))]
    assert creates == [], creates[:3]


def test_a_runner_applies_the_events_it_is_given_and_decodes_the_others() -> None:
    messages = [(i + 1, "run-1", data) for i, data in enumerate(completed_run("run-1"))]
    given = {1: codec.decode_events(messages[0][2])}
    garbled = [(messages[0][0], "run-1", b"not json"), *messages[1:]]
    problems: list[str] = []
    found = list(positioned_events(garbled, 0, None, problems, given.get))
    assert problems == [], "a message given decoded was decoded again"
    assert [event for _, event in found] == [
        event for _, _, data in messages for event in codec.decode_events(data)
    ]
    problems.clear()
    nothing: dict[int, tuple[AnyEvent, ...]] = {}
    rest = list(positioned_events(garbled, 0, None, problems, nothing.get))
    assert [at.seq for at, _ in rest] == [at.seq for at, _ in found if at.seq > 1]
    assert len(problems) == 1 and "history message 1" in problems[0], problems
    live, rebuilt = Database(memory=True), Database(memory=True)
    runner = SqliteRunner(live, QueryTables())
    seq = runner.open()
    runner.apply_batch(garbled, after_seq=seq, now_ms=0, decoded=given.get)
    SqliteRunner(rebuilt, QueryTables()).apply_all(messages)
    for table in QueryTables.tables:
        query = f'SELECT * FROM "{table}" ORDER BY 1, 2'
        assert live.execute(query).fetchall() == rebuilt.execute(query).fetchall(), table


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities among them
    st.text(max_size=4),
    st.binary(max_size=2),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_VALUES, st.integers(min_value=1, max_value=4))
def test_the_plain_output_check_agrees_with_the_walk(value: object, depth_max: int) -> None:
    """`output_problem` skips the walk for plain values: it says what the walk says."""
    assert output_problem(value, depth_max) == walked_problem(value, depth_max)


def test_the_plain_output_check_still_names_the_place() -> None:
    assert output_problem({"a": [1, float("nan")]}) == walked_problem(
        {"a": [1, float("nan")]}, limits.json_depth_max
    )
    assert output_problem({"a": [1, float("nan")]}) is not None
    assert output_problem([[[]]], 2) is not None and output_problem([[]], 2) is None
    assert output_problem({"b": b"x"}) is not None
