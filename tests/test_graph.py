"""Graph walks: cycles found and named in order, topological order, dependents.

Edges point from a node to the nodes it depends on (a workflow's `depends_on`).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.workflow.graph import dependents, find_cycle, find_cycles, topological_order

Graph = dict[str, list[str]]


def assert_is_cycle(graph: Graph, cycle: tuple[str, ...]) -> None:
    """Each node of `cycle` depends on the next, and the last on the first."""
    assert cycle, "expected a cycle"
    assert len(set(cycle)) == len(cycle), f"cycle {cycle} repeats a node"
    for index, node in enumerate(cycle):
        following = cycle[(index + 1) % len(cycle)]
        assert following in graph[node], f"{node} -> {following} is not an edge of {cycle}"


def test_acyclic_graph_has_no_cycle() -> None:
    graph = {"a": [], "b": ["a"], "c": ["a", "b"]}
    assert find_cycle(graph) == ()
    assert find_cycles(graph) == ()


def test_self_dependency_is_a_cycle_of_one() -> None:
    assert find_cycle({"a": [], "b": ["b"]}) == ("b",)


def test_cycles_start_at_the_earliest_node_and_follow_edges() -> None:
    graph = {"x": [], "a": ["c"], "b": ["a"], "c": ["b"]}
    assert find_cycle(graph) == ("a", "c", "b")
    assert find_cycle({"b": ["a"], "a": ["b"]}) == ("b", "a")


def test_one_cycle_per_strongly_connected_part() -> None:
    disjoint = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "e": ["a", "c"]}
    assert find_cycles(disjoint) == (("a", "b"), ("c", "d"))
    sharing = {"a": ["b", "c"], "b": ["a"], "c": ["a"]}
    assert find_cycles(sharing) == (("a", "b"),)


def test_the_shortest_cycle_through_the_earliest_node() -> None:
    graph = {"a": ["b"], "b": ["c", "a"], "c": ["a"]}
    assert find_cycle(graph) == ("a", "b")


def test_edges_to_unknown_nodes_are_ignored() -> None:
    graph = {"a": ["missing"], "b": ["a", "ghost"]}
    assert find_cycle(graph) == ()
    assert topological_order(graph) == ("a", "b")
    assert dependents(graph) == {"a": ("b",), "b": ()}


def test_topological_order_keeps_written_order_among_ready_nodes() -> None:
    assert topological_order({"c": [], "a": [], "b": []}) == ("c", "a", "b")
    graph = {"d": ["b"], "c": [], "b": [], "a": ["c", "d"]}
    assert topological_order(graph) == ("c", "b", "d", "a")


def test_topological_order_refuses_a_cycle_and_names_it() -> None:
    with pytest.raises(ValueError, match="the graph has a cycle: a -> b -> a"):
        topological_order({"a": ["b"], "b": ["a"], "c": []})


def test_dependents_are_in_written_order_without_repeats() -> None:
    graph = {"a": [], "b": ["a", "a"], "c": ["a"], "d": ["b"]}
    assert dependents(graph) == {"a": ("b", "c"), "b": ("d",), "c": (), "d": ()}


def test_long_chains_do_not_recurse() -> None:
    size = 20_000
    chain = {f"n{index}": [f"n{index - 1}"] if index else [] for index in range(size)}
    assert find_cycle(chain) == ()
    assert topological_order(chain)[-1] == f"n{size - 1}"
    chain["n0"] = [f"n{size - 1}"]
    assert len(find_cycle(chain)) == size


@st.composite
def dags(draw: st.DrawFn) -> Graph:
    """A random DAG: nodes in a shuffled order, each depending only on nodes before it."""
    count = draw(st.integers(min_value=0, max_value=30))
    names = draw(st.permutations([f"n{index}" for index in range(count)]))
    graph: Graph = {}
    for index, name in enumerate(names):
        graph[name] = draw(st.lists(st.sampled_from(names[:index]), max_size=4)) if index else []
    shuffled = draw(st.permutations(list(graph)))
    return {name: graph[name] for name in shuffled}


@given(dags())
def test_topological_order_respects_every_edge(graph: Graph) -> None:
    order = topological_order(graph)
    assert sorted(order) == sorted(graph)
    position = {node: index for index, node in enumerate(order)}
    for node, targets in graph.items():
        for target in targets:
            assert position[target] < position[node], f"{target} must come before {node}"
    assert find_cycle(graph) == ()


@given(dags(), st.data())
def test_a_planted_cycle_is_found(graph: Graph, data: st.DataObject) -> None:
    if len(graph) < 1:
        return
    order = topological_order(graph)
    low = data.draw(st.integers(min_value=0, max_value=len(order) - 1))
    high = data.draw(st.integers(min_value=low, max_value=len(order) - 1))
    # A chain high -> ... -> low, closed by low -> high: every cycle now uses that last edge.
    planted = {node: list(targets) for node, targets in graph.items()}
    for index in range(low, high):
        planted[order[index + 1]].append(order[index])  # later depends on earlier: still a DAG
    planted[order[low]].append(order[high])  # and the earliest on the latest: a cycle
    cycle = find_cycle(planted)
    assert_is_cycle(planted, cycle)
    assert order[low] in cycle and order[high] in cycle
    assert len(find_cycles(planted)) == 1
    with pytest.raises(ValueError, match="cycle"):
        topological_order(planted)


@given(dags())
def test_dependents_invert_the_edges(graph: Graph) -> None:
    users = dependents(graph)
    for node, targets in graph.items():
        for target in targets:
            assert node in users[target]
    for node, found in users.items():
        for user in found:
            assert node in graph[user]
