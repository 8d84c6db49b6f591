"""The rules of the house that keep adding a step type a change of one module.

- No step-type name appears in the run's rules (`kernel/decide.py`, `kernel/lifecycle.py`,
  `kernel/reducer.py`, `kernel/react.py`) or anywhere in `dagnats/runtime/`: they reach step
  types through the registry alone.
- No module outside the tests is over 600 lines, and no function over 70 lines.

Import cycles and the layering are checked by tests/test_import_graph.py and tests/test_tidy.py.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Final

import pytest

from kernel import registry

ROOT: Final = Path(__file__).resolve().parent.parent
RUN_RULES: Final = tuple(
    ROOT / "kernel" / name for name in ("decide.py", "lifecycle.py", "reducer.py", "react.py")
)
RUNTIME: Final = tuple(sorted((ROOT / "dagnats" / "runtime").glob("*.py")))
# Step-type names that are also ordinary words of the engine ("a worker task", the builtin
# `map`, `asyncio.sleep`) are checked as string literals only; the others anywhere in code,
# docstrings and comments included.
GENERIC_WORDS: Final = frozenset({"task", "map", "sleep", "log"})
LIMIT_NAME: Final = re.compile(r"\blimits\.\w+")
SIZED_PACKAGES: Final = ("kernel", "steps", "projections", "dagnats", "bench", "examples")
MODULE_LINES_MAX: Final = 600
FUNCTION_LINES_MAX: Final = 70


def step_names_in(source: str, names: tuple[str, ...]) -> list[str]:
    """Where `source` names one of the step types `names` (line: name), per the rule above."""
    found: list[str] = []
    for name in names:
        if name in GENERIC_WORDS:
            continue
        for number, line in enumerate(source.splitlines(), start=1):
            if name in LIMIT_NAME.sub("", line):  # a bound's name (limits.*) is a format
                found.append(f"line {number}: {name}")
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for token in tokens:
        if token.type != tokenize.STRING:
            continue
        try:
            value = ast.literal_eval(token.string)
        except (ValueError, SyntaxError):
            continue  # an f-string part
        if isinstance(value, str) and value in names:
            found.append(f"line {token.start[0]}: {value!r}")
    return found


@pytest.mark.parametrize(
    "path", (*RUN_RULES, *RUNTIME), ids=lambda path: str(path.relative_to(ROOT))
)
def test_no_step_type_is_named_in_the_run_rules_or_the_runtime(path: Path) -> None:
    names = registry.names()
    assert {"task", "approval", "agent_loop", "planner"} <= set(names)
    found = step_names_in(path.read_text(encoding="utf-8"), names)
    assert found == [], f"{path.relative_to(ROOT)} names step types: {found}"


def test_the_name_check_can_fail() -> None:
    names = ("approval", "sleep", "agent_loop")
    assert step_names_in('kind = "sleep"\n', names) == ["line 1: 'sleep'"]
    assert step_names_in("from steps import approvals\n", names) == ["line 1: approval"]
    assert step_names_in("# an agent_loop turn\n", names) == ["line 1: agent_loop"]
    assert step_names_in("await asyncio.sleep(0.1)\n", names) == []
    assert step_names_in('subject = f"dagnats.{topic}"\n', names) == []
    assert step_names_in("assert depth <= limits.agent_loop_depth_max\n", names) == []


def _sources() -> list[Path]:
    return sorted(path for package in SIZED_PACKAGES for path in (ROOT / package).rglob("*.py"))


def oversized(path: Path) -> list[str]:
    """The size bounds `path` breaks: its line count, and each function too long."""
    source = path.read_text(encoding="utf-8")
    problems: list[str] = []
    lines = source.count("\n")
    if lines > MODULE_LINES_MAX:
        problems.append(f"{lines} lines (the bound is {MODULE_LINES_MAX})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES_MAX:
                problems.append(f"{node.name}() is {length} lines (the bound is 70)")
    return problems


def test_every_module_and_function_outside_the_tests_is_within_its_size() -> None:
    sources = _sources()
    assert len(sources) > 100, "the walk finds the project's modules"
    problems = {str(path.relative_to(ROOT)): oversized(path) for path in sources}
    assert {path: found for path, found in problems.items() if found} == {}


def test_the_size_check_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {index}" for index in range(FUNCTION_LINES_MAX))
    long_function = tmp_path / "long.py"
    long_function.write_text(f"def f() -> None:\n{body}\n", encoding="utf-8")
    assert oversized(long_function) == ["f() is 71 lines (the bound is 70)"]
    long_module = tmp_path / "big.py"
    long_module.write_text("x = 1\n" * (MODULE_LINES_MAX + 1), encoding="utf-8")
    assert oversized(long_module) == [f"{MODULE_LINES_MAX + 1} lines (the bound is 600)"]


RUN_RULE_MODULES: Final = (
    "decide", "lifecycle", "reducer", "react", "appended", "run_links", "timers", "queries"
)  # fmt: skip
ASSERTS_PER_FUNCTION_MIN: Final = 1.0  # over the run's rules together (STYLE asks about two)
ASSERTS_PER_FUNCTION_MODULE_MIN: Final = 0.6


def assertion_density(source: str) -> tuple[int, int]:
    """(functions, assert statements) of a module."""
    tree = ast.parse(source)
    functions = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree))
    asserts = sum(isinstance(n, ast.Assert) for n in ast.walk(tree))
    return functions, asserts


def test_the_run_rules_assert_their_invariants() -> None:
    counts = {
        name: assertion_density((ROOT / "kernel" / f"{name}.py").read_text(encoding="utf-8"))
        for name in RUN_RULE_MODULES
    }
    thin = {
        name: round(asserts / functions, 2)
        for name, (functions, asserts) in counts.items()
        if asserts < ASSERTS_PER_FUNCTION_MODULE_MIN * functions
    }
    assert thin == {}, f"modules below {ASSERTS_PER_FUNCTION_MODULE_MIN} asserts per function"
    functions = sum(f for f, _ in counts.values())
    asserts = sum(a for _, a in counts.values())
    assert asserts >= ASSERTS_PER_FUNCTION_MIN * functions, f"{asserts} asserts, {functions} fns"
    assert assertion_density("def f() -> None:\n    assert True\n") == (1, 1)
