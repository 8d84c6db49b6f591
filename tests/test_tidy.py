"""The pure core stays pure: an AST walk over `kernel/`, `steps/` and `projections/`.

`kernel/` and `steps/` import only an allow-list of the standard library (no clock, no
randomness, no I/O, no threads) and msgspec. The layers point inward: `kernel/` imports only
`kernel` (and reaches `steps` only through `kernel/registry.py`, by name with importlib),
`steps/` imports `kernel` and `steps`, `projections/` imports `kernel` and `projections`, and
none of them imports `dagnats`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
CHECKED_PACKAGES: Final = ("kernel", "steps", "projections")
PROJECT_PACKAGES: Final = frozenset({"kernel", "steps", "projections", "dagnats", "tests", "bench"})

FORBIDDEN: Final = frozenset(
    {
        "time",
        "random",
        "uuid",
        "os",
        "asyncio",
        "threading",
        "socket",
        "subprocess",
        "datetime",
        "sqlite3",
    }
)
# Pure, deterministic standard-library modules the core may use.
STDLIB_ALLOWED: Final = frozenset(
    {
        "__future__",
        "abc",
        "base64",
        "binascii",
        "bisect",
        "collections",
        "copy",
        "dataclasses",
        "enum",
        "functools",
        "hashlib",
        "heapq",
        "itertools",
        "keyword",
        "math",
        "numbers",
        "operator",
        "re",
        "reprlib",
        "string",
        "struct",
        "textwrap",
        "types",
        "typing",
        "unicodedata",
        "zlib",
    }
)
THIRD_PARTY_ALLOWED: Final = frozenset({"msgspec"})
# (module, package it may load by name with importlib)
DYNAMIC_IMPORTS_ALLOWED: Final = {"kernel.registry": "steps"}
# (module, standard-library modules only it may import): a deprecated alias warns on import
IMPORTS_ALLOWED_TO: Final = {"kernel.builder": frozenset({"warnings"})}
ALLOWED_LAYERS: Final = {
    "kernel": frozenset({"kernel"}),
    "steps": frozenset({"kernel", "steps"}),
    "projections": frozenset({"kernel", "projections"}),
}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level]
    return ".".join([*base, node.module] if node.module else base)


def _imported_names(module: str, tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _resolve(module, node)))
    return found


def _string_constants(tree: ast.Module) -> dict[str, str]:
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    constants[target.id] = node.value.value
    return constants


def _dynamic_imports(tree: ast.Module) -> list[tuple[int, str | None]]:
    """Calls of importlib.import_module / __import__, with the name when it is a constant."""
    constants = _string_constants(tree)
    found: list[tuple[int, str | None]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else None
        if isinstance(function, ast.Name):
            name = function.id
        if name not in ("import_module", "__import__"):
            continue
        target: str | None = None
        if node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                target = argument.value
            elif isinstance(argument, ast.Name):
                target = constants.get(argument.id)
        found.append((node.lineno, target))
    return found


def check_source(source: str, module: str) -> list[str]:
    """Every tidiness violation of one module's source.

    Args:
        source: the Python source text.
        module: its dotted name (`kernel.decide`); the first part is its layer.

    Returns:
        One message per violation, naming the place, the import and the rule; empty if none.
    """
    layer = module.split(".", maxsplit=1)[0]
    assert layer in ALLOWED_LAYERS, f"{module}: not a checked package"
    tree = ast.parse(source)
    where = module.replace(".", "/") + ".py"
    problems: list[str] = []
    pure = layer in ("kernel", "steps")
    for line, name in _imported_names(module, tree):
        top = name.split(".")[0]
        place = f"{where}:{line} imports {name!r}"
        if top in PROJECT_PACKAGES:
            if top not in ALLOWED_LAYERS[layer]:
                allowed = ", ".join(sorted(ALLOWED_LAYERS[layer]))
                problems.append(f"{place}: {layer}/ may import only {allowed} of the project")
        elif top == "importlib" and pure:
            if module not in DYNAMIC_IMPORTS_ALLOWED:
                problems.append(f"{place}: only kernel/registry.py may load modules by name")
        elif not pure:
            continue
        elif top in FORBIDDEN:
            problems.append(f"{place}: forbidden in {layer}/ (I/O or ambient state)")
        elif top in IMPORTS_ALLOWED_TO.get(module, frozenset()):
            continue
        elif top not in STDLIB_ALLOWED and top not in THIRD_PARTY_ALLOWED:
            problems.append(f"{place}: not in the allow-list of {layer}/ (stdlib subset, msgspec)")
    if pure:
        for line, target in _dynamic_imports(tree):
            place = f"{where}:{line} loads {target!r} by name"
            if DYNAMIC_IMPORTS_ALLOWED.get(module) != target:
                problems.append(f"{place}: only kernel/registry.py may, and only 'steps'")
    return problems


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in CHECKED_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join(parts), path))
    return found


MODULES: Final = _modules()


def test_the_walk_finds_the_kernel_and_the_step_modules() -> None:
    names = {name for name, _ in MODULES}
    assert {"kernel.decide", "kernel.registry", "steps.task", "kernel"} <= names
    assert not any(name.startswith("dagnats") or name.startswith("tests") for name in names)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_the_module_is_tidy(module: str, path: Path) -> None:
    problems = check_source(path.read_text(encoding="utf-8"), module)
    assert problems == [], "\n".join(problems)


# --- the checker can fail -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "module", "fragment"),
    [
        ("import time\n", "kernel.example", "imports 'time': forbidden in kernel/"),
        ("from os import path\n", "steps.example", "imports 'os': forbidden in steps/"),
        ("import datetime as dt\n", "kernel.example", "imports 'datetime': forbidden"),
        ("import random\n", "steps.example", "imports 'random'"),
        ("from uuid import uuid4\n", "kernel.x", "imports 'uuid'"),
        ("import asyncio.events\n", "kernel.x", "imports 'asyncio.events': forbidden"),
        ("import sqlite3\n", "kernel.x", "imports 'sqlite3'"),
        ("import json\n", "kernel.x", "not in the allow-list"),
        ("import nats\n", "steps.x", "not in the allow-list"),
        ("import warnings\n", "kernel.decide", "not in the allow-list"),
        ("import dagnats\n", "kernel.x", "kernel/ may import only kernel"),
        ("from dagnats.runtime import log\n", "steps.x", "steps/ may import only kernel, steps"),
        ("from dagnats import Worker\n", "projections.x", "projections/ may import only"),
        ("from steps import task\n", "kernel.decide", "kernel/ may import only kernel"),
        ("from ..steps import task\n", "kernel.decide", "imports 'steps': kernel/ may import only"),
        ("import steps.task\n", "projections.x", "projections/ may import only kernel"),
        ("import importlib\n", "kernel.decide", "only kernel/registry.py may load"),
        ("import importlib\nimportlib.import_module('os')\n", "kernel.registry", "loads 'os'"),
        ("__import__('steps')\n", "kernel.decide", "loads 'steps' by name"),
        ("if True:\n    import time\n", "kernel.x", "kernel/x.py:2 imports 'time'"),
    ],
)
def test_the_checker_reports_a_violation(source: str, module: str, fragment: str) -> None:
    problems = check_source(source, module)
    assert len(problems) >= 1 and any(fragment in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from __future__ import annotations\nimport msgspec\nimport re\n", "kernel.x"),
        ("from collections.abc import Iterable\nfrom typing import Final\n", "steps.x"),
        ("from kernel.events import StepScheduled\nfrom steps import task\n", "steps.x"),
        ("from . import limits\nfrom .events import Event\n", "kernel.x"),
        ("import warnings\n", "kernel.builder"),
        ("import sqlite3\nimport time\nfrom kernel.events import Event\n", "projections.x"),
        (
            'import importlib\nPACKAGE = "steps"\nimportlib.import_module(PACKAGE)\n',
            "kernel.registry",
        ),
    ],
)
def test_the_checker_accepts_tidy_sources(source: str, module: str) -> None:
    assert check_source(source, module) == []
