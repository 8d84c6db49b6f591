"""Walks over a workflow's dependency graph: cycles, a topological order, dependents.

A graph is a mapping from each node (a step id, in the order the user wrote the steps) to the
nodes it depends on. Edges to names that are not keys are ignored, so a caller may pass the
raw `depends_on` lists of a workflow that still has unknown names in it. Every walk is
iterative with an explicit stack and bounded by the number of nodes and edges; nothing here
recurses, reads a clock or does I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

Graph = Mapping[str, Sequence[str]]


def _edge_count(graph: Graph) -> int:
    return sum(len(targets) for targets in graph.values())


def find_cycle(graph: Graph) -> tuple[str, ...]:
    """One cycle of the graph, or `()` when it has none.

    Returns:
        The nodes on the cycle in edge order, starting at the earliest node (in the mapping's
        order) on it and not repeating it at the end: `("a", "b")` means a -> b -> a.
    """
    cycles = find_cycles(graph)
    return cycles[0] if cycles else ()


def find_cycles(graph: Graph) -> tuple[tuple[str, ...], ...]:
    """One cycle per strongly connected part of the graph that holds a cycle.

    Two cycles that share a node are one part and yield one cycle; disjoint cycles yield one
    each. A node depending on itself is a cycle of one.

    Returns:
        Cycles in the order of their earliest node, each as `find_cycle` returns it.
    """
    order = {node: index for index, node in enumerate(graph)}
    cycles = []
    for component in _strong_components(graph):
        members = set(component)
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in graph[start]:
            continue
        cycles.append(_cycle_within(graph, members, start))
    cycles.sort(key=lambda cycle: order[cycle[0]])
    return tuple(cycles)


def _strong_components(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (explicit stack, no recursion)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    steps_max = 2 * (len(graph) + _edge_count(graph)) + 1
    steps = 0
    known = {node: [t for t in targets if t in graph] for node, targets in graph.items()}
    for root in graph:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            steps += 1
            assert steps <= steps_max, "a graph walk exceeded its bound"
            node, position = work.pop()
            if position == 0:
                index_of[node] = low[node] = len(index_of)
                stack.append(node)
                on_stack.add(node)
            targets = known[node]
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index_of:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index_of[target])
                continue
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    assert not stack
    return components


def _cycle_within(graph: Graph, members: set[str], start: str) -> tuple[str, ...]:
    """A shortest cycle through `start` inside one strongly connected part (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    for _ in range(len(members)):
        following = []
        for node in frontier:
            for target in graph[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return tuple(reversed(path))
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start!r} in its strongly connected part")


def topological_order(graph: Graph) -> tuple[str, ...]:
    """Every node after the nodes it depends on (Kahn's algorithm).

    Among nodes ready at the same time, the one earliest in the mapping's order comes first,
    so a graph without edges keeps the order it was written in.

    Raises:
        ValueError: the graph has a cycle (the message names it).
    """
    order = {node: index for index, node in enumerate(graph)}
    waiting = {node: len({t for t in targets if t in graph}) for node, targets in graph.items()}
    users = dependents(graph)
    ready = [(order[node], node) for node in graph if waiting[node] == 0]
    heapq.heapify(ready)
    result: list[str] = []
    for _ in range(len(graph)):
        if not ready:
            break
        _, node = heapq.heappop(ready)
        result.append(node)
        for user in users[node]:
            if _release(waiting, user):
                heapq.heappush(ready, (order[user], user))
    if len(result) != len(graph):
        cycle = find_cycle(graph)
        text = " -> ".join((*cycle, cycle[0])) if cycle else "?"
        raise ValueError(f"the graph has a cycle: {text}")
    assert len(set(result)) == len(result)
    return tuple(result)


def _release(waiting: dict[str, int], node: str) -> bool:
    waiting[node] -= 1
    assert waiting[node] >= 0
    return waiting[node] == 0


def dependents(graph: Graph) -> dict[str, tuple[str, ...]]:
    """For each node, the nodes that depend on it directly, in the mapping's order.

    A node listing the same dependency twice appears once.
    """
    users: dict[str, list[str]] = {node: [] for node in graph}
    for node, targets in graph.items():
        for target in dict.fromkeys(targets):
            if target in users:
                users[target].append(node)
    return {node: tuple(found) for node, found in users.items()}
