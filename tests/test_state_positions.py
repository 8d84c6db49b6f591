"""`RunState.index_of` answers as `tuple.index` does, for short runs (a scan) and long ones (a
memoized map per `step_ids` tuple), also after the memo was cleared or another tuple with
equal contents took its place."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kernel import state as state_module
from kernel.state import RunState

step_ids = st.lists(st.sampled_from([f"s{n}" for n in range(40)]), max_size=60)


def expected(ids: tuple[str, ...], step_id: str) -> int:
    return ids.index(step_id) if step_id in ids else -1


@given(step_ids, st.sampled_from([f"s{n}" for n in range(45)]))
def test_index_of_is_tuple_index(ids_list: list[str], step_id: str) -> None:
    ids = tuple(ids_list)
    state = RunState(step_ids=ids)
    assert state.index_of(step_id) == expected(ids, step_id)
    state_module._positions_memo.clear()
    assert state.index_of(step_id) == expected(ids, step_id), "after the memo was cleared"
    other = RunState(step_ids=tuple(reversed(ids)))  # another tuple: its own positions
    assert other.index_of(step_id) == expected(other.step_ids, step_id)


def test_a_long_run_is_answered_from_its_memo() -> None:
    ids = tuple(f"s{n}" for n in range(100))
    state = RunState(step_ids=ids)
    assert state.index_of("s99") == 99
    assert state_module._positions_memo[id(ids)][0] is ids
    assert state.index_of("nope") == -1
