"""The workflow package has no import cycle: whichever module a process imports first loads.

`kernel.workflow` imports a few `kernel` formats (`kernel.conditions`, `kernel.registry`, ...),
and many `kernel` modules import `kernel.workflow` back. Each is imported first, in a fresh
interpreter, so a cycle that only shows in one import order fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
FIRST_IMPORTS: Final = (
    "kernel.workflow",
    "kernel.workflow.rules",
    "kernel.conditions",
    "kernel.payloads",
    "kernel.registry",
    "kernel.state",
    "kernel.cancel_on",
    "steps.planner_plan",
)
IMPORT_TIMEOUT_S: Final = 60


def imported_first(module: str, where: Path) -> subprocess.CompletedProcess[str]:
    """Import `module`, then the workflow package's entry points, in a fresh interpreter."""
    code = f"import {module}; from kernel.workflow import parse_workflow, validate_workflow"
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=where,
        env={**os.environ, "PYTHONPATH": f"{where}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("module", FIRST_IMPORTS)
def test_the_module_loads_when_imported_first(module: str) -> None:
    done = imported_first(module, ROOT)
    assert done.returncode == 0, done.stderr[-2_000:]


def test_a_cycle_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "left.py").write_text("from right import RIGHT\nLEFT = 1\n")
    (tmp_path / "right.py").write_text("from left import LEFT\nRIGHT = 2\n")
    done = imported_first("left", tmp_path)
    assert done.returncode != 0
    assert "partially initialized module" in done.stderr, done.stderr[-2_000:]
