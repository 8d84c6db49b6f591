"""No import cycles, and the arrows point inward: an AST walk over `kernel/`, `steps/`,
`projections/` and `dagnats/`.

Every import statement between project modules is an edge (module level and inside functions,
which is where cycles used to hide; not those under `if TYPE_CHECKING:`, which never run).
`from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`; a
package's `__init__` is the package. Importing `a.b.c` is an edge to `a.b.c` only: a module
that imports its package's `__init__` is what the cycle check catches.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("kernel", "steps", "projections", "dagnats")
INNER_PACKAGES: Final = ("kernel", "steps", "projections")
def _module_paths() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES: Final = _module_paths()


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py" if module in MODULES else False
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = parts[:keep]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(module: str, source: str, known: frozenset[str]) -> set[str]:
    """The project modules `module` imports (see the module docstring for the rules).

    Args:
        module: the dotted name of the importing module (`dagnats.cli.runs`).
        source: its source text.
        known: the dotted names of every project module.
    Returns:
        The imported project modules, without `module` itself.
    """
    return imported_modules_of_tree(module, ast.parse(source), known)


def imported_modules_of_tree(module: str, tree: ast.AST, known: frozenset[str]) -> set[str]:
    """`imported_modules` of a parsed module."""
    found: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
            continue
        base = _base(module, node)
        for alias in node.names:
            name = f"{base}.{alias.name}"
            if name in known:
                found.add(name)
            elif base in known:
                found.add(base)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = frozenset(MODULES)
    return {
        module: imported_modules(module, path.read_text(encoding="utf-8"), known)
        for module, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    edges = [
        f"{module} -> {target}"
        for module in sorted(component)
        for target in sorted(graph[module] & component)
    ]
    return f"cycle of {sorted(component)}: " + "; ".join(edges)


GRAPH: Final = import_graph()
CYCLES: Final = cycles(GRAPH)


def test_the_walk_finds_every_layer() -> None:
    assert {"kernel.decide", "steps.task", "projections.base", "dagnats.cli.common"} <= set(GRAPH)
    assert "dagnats.client" in GRAPH and "dagnats.client.core" in GRAPH["dagnats.client"]
    assert not any(module.startswith(("tests", "bench")) for module in GRAPH)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    """No cycle through any package, imports inside functions included (they are how cycles
    were once hidden)."""
    found = [c for c in CYCLES if any(m.split(".")[0] == package for m in c)]
    assert found == [], "\n".join(_describe(component, GRAPH) for component in found)


@pytest.mark.parametrize("package", INNER_PACKAGES)
def test_the_inner_layers_never_import_the_shell(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] == "dagnats"
    )
    assert wrong == [], "\n".join(wrong)


# --- the checker can fail -----------------------------------------------------------------

KNOWN: Final = frozenset({"a", "a.b", "a.c", "a.d", "kernel", "kernel.x"})


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("a.b", "import a.c\n", {"a.c"}),
        ("a.b", "from a import c, missing\n", {"a.c", "a"}),
        ("a.b", "from a.c import name\n", {"a.c"}),
        ("a.b", "from . import d\n", {"a.d"}),
        ("a.b", "from .c import name\n", {"a.c"}),
        ("a.b", "def f() -> None:\n    from a import c\n", {"a.c"}),
        ("a.b", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.c\n", set()),
        (
            "a.b",
            "import typing\nif typing.TYPE_CHECKING:\n    import a.c\nelse:\n    import a.d\n",
            {"a.d"},
        ),
        ("a.b", "import os\nimport msgspec\n", set()),
        ("a.b", "from a import b\n", set()),
    ],
)
def test_the_edges_are_resolved(module: str, source: str, expected: set[str]) -> None:
    assert imported_modules(module, source, KNOWN) == expected


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"a.b"}, "a.b": {"a.c"}, "a.c": {"a.b"}, "a.d": {"a"}}
    assert cycles(graph) == [frozenset({"a.b", "a.c"})]
    assert "a.b -> a.c" in _describe(frozenset({"a.b", "a.c"}), graph)
    assert cycles({"a": {"a.b"}, "a.b": set()}) == []
    assert cycles({"a": {"a.b"}, "a.b": {"a.c"}, "a.c": {"a"}}) == [frozenset({"a", "a.b", "a.c"})]
